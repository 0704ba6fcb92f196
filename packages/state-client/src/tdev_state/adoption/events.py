"""What the adoption helper hands the orchestrator: progress events, the metrics sink it records into, and
the mark stored in place of a payload the store refused."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

#: What is stored in place of a payload the store refused even in its lossy form.
UNSTORED_MARK = "tdev_unstored"


class MetricsSink(Protocol):
    """What `PipelineRun` records into: `tdev_metrics.MetricsCollector` satisfies it."""

    def record(self, metric_name: str, value: float, *, agent_name: str, error: bool = False) -> None: ...


@dataclass(frozen=True)
class ProgressEvent:
    """One progress message, once per agent, in T-Developer's `ws_manager.send_progress` terms.

    `status` "processing" (progress 0) when the agent's first attempt starts; then "completed" (100) when
    an attempt succeeds, or "error" (0) after its last attempt failed (`RunPolicy.attempts`, or when the
    run moves past it or finishes). `agent_id` is the agent's place, 1..len(AGENTS)
    (tdev_state.agents.PIPELINE).
    """

    session_id: str
    agent_name: str
    agent_id: int
    status: str  # "processing" | "completed" | "error"
    progress: int  # 0 | 100
    attempt: int
    seconds: float | None = None
    error: str | None = None
    #: For "error": the run policy lets the run go on past this agent (it is not critical).
    tolerated: bool = False


ProgressCallback = Callable[[ProgressEvent], Awaitable[None] | None]
