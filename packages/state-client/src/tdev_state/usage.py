"""Usage events: what the platform did, emitted at the transitions it already performs.

Why here: the stores know, at the moment a write is applied (and only then — a repeated call recognised as
a duplicate emits nothing), that a run started, an agent completed, a run was abandoned. Counting there
needs no Scan later and no second write now: the events go to a *sink* in memory — the metrics collector
(`tdev_metrics`), which aggregates them and writes a few compact items per day — and a report reads those.

Without a sink (no collector configured) emitting is a no-op: the pipeline works the same and pays nothing.
A sink never makes a committed transition fail: an exception from it is counted and logged, and the call
returns normally.

The sink protocol is one method, `usage(event)`; tdev_state never imports the package that implements it
(packages depend downwards only). The plan's calls use a process-wide client: a package that provides a
process-wide sink registers a factory with `register_plan_sink`, and the plan's client attaches it when
it is built.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from tdev_state.log import get_logger

log = get_logger(__name__)

UsageKind = Literal[
    "run_started",
    "run_completed",
    "run_failed",
    "run_abandoned",
    "run_resumed",
    "agent_started",
    "agent_completed",
    "agent_failed",
    "agent_retried",
    "agent_tolerated",
    "project_saved",
    "project_downloaded",
    "user_active",
]


@dataclass(frozen=True)
class UsageEvent:
    """One thing the platform did. Which fields are set depends on `kind`."""

    kind: UsageKind
    at: datetime
    session_id: str | None = None
    agent: str | None = None
    #: SIMPLE or PRODUCTION, for run events.
    pipeline_type: str | None = None
    #: An agent attempt's seconds (agent_completed, when this process saw it begin), or a run's
    #: (run_completed).
    seconds: float | None = None
    #: run_completed: the run had been resumed by the recovery worker at least once.
    recovered: bool = False
    user_id: str | None = None
    #: project_saved: the new project's tech stack.
    tech_stack: tuple[str, ...] = ()


class UsageSink(Protocol):
    """Receives usage events; must return quickly and never block on I/O (it runs on the caller's thread)."""

    def usage(self, event: UsageEvent) -> None: ...


#: Agent attempt start times remembered per process (for durations), at most this many.
_MAX_REMEMBERED = 100_000

_plan_sink_factory: Callable[[], UsageSink] | None = None


def register_plan_sink(factory: Callable[[], UsageSink] | None) -> None:
    """Give the plan's process-wide client a sink (called by the package providing it, at import)."""
    global _plan_sink_factory  # noqa: PLW0603 - one process-wide registration
    _plan_sink_factory = factory


def plan_sink() -> UsageSink | None:
    """The registered process-wide sink, created now, or None."""
    return _plan_sink_factory() if _plan_sink_factory is not None else None


class UsageEmitter:
    """One per client (on its DynamoLayer): forwards events to the attached sink, if any."""

    def __init__(self) -> None:
        self.sink: UsageSink | None = None
        #: Events a sink raised on (each logged); the transitions themselves were applied.
        self.sink_errors = 0
        self._starts: OrderedDict[tuple[str, str], datetime] = OrderedDict()
        self._lock = threading.Lock()

    def attach(self, sink: UsageSink | None) -> None:
        """Send this client's usage events to `sink` (None: stop counting)."""
        self.sink = sink

    @property
    def on(self) -> bool:
        return self.sink is not None

    def emit(self, event: UsageEvent) -> None:
        sink = self.sink
        if sink is None:
            return
        try:
            sink.usage(event)
        except Exception as exc:  # a usage sink never fails a committed transition
            self.sink_errors += 1
            log.warning("usage.sink_failed", kind=event.kind, error=f"{type(exc).__name__}: {exc}")

    # --- agent attempt timing (this process only) -----------------------------------------------------

    def attempt_began(self, session_id: str, agent: str, at: datetime) -> None:
        if self.sink is None:
            return
        with self._lock:
            self._starts[(session_id, agent)] = at
            self._starts.move_to_end((session_id, agent))
            while len(self._starts) > _MAX_REMEMBERED:
                self._starts.popitem(last=False)

    def attempt_seconds(self, session_id: str, agent: str, at: datetime) -> float | None:
        """Seconds since this process saw the attempt begin, or None (it began in another process)."""
        with self._lock:
            began = self._starts.pop((session_id, agent), None)
        return max(0.0, (at - began).total_seconds()) if began is not None else None
