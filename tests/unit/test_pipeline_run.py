"""PipelineRun: an orchestrator's retry loop records attempts, tolerated and critical failures, metrics and
progress, exactly as T-Developer's orchestrator runs (in-process retries, the run goes on past a
non-critical failure, generation/assembly stop it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

import pytest

from tdev_state import AGENTS, AsyncStateClient, PipelineRun, ProgressEvent, SessionStatus, StateClient

RETRIES = {"nl_input": 2, "search": 2, "generation": 1}


class Kind(Enum):
    WEB = "web"


class Sink:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, bool]] = []

    def record(self, metric_name: str, value: float, *, agent_name: str, error: bool = False) -> None:
        assert value >= 0
        self.records.append((metric_name, agent_name, error))


@pytest.fixture
async def aclient(client: StateClient) -> AsyncIterator[AsyncStateClient]:
    async with AsyncStateClient(client) as a:
        yield a


async def orchestrate(run: PipelineRun, failing: dict[str, int], *, slow: str | None = None) -> str:
    """The orchestrator's loop: each agent retried in process; a non-critical one that fails for good is
    recorded and the next runs; a critical one stops the run."""
    data: dict[str, Any] = {"request": "a todo app"}
    for agent in AGENTS:
        for attempt in range(RETRIES.get(agent, 1) + 1):
            try:
                async with run.agent(agent, input_data=data) as step:
                    if slow == agent:
                        await asyncio.sleep(0.2)
                    if failing.get(agent, 0) > attempt:
                        raise TimeoutError(f"{agent} timed out")  # noqa: TRY301 - the agent's own failure
                    step.complete({"agent": agent, "at": datetime(2026, 11, 27, tzinfo=UTC), "kind": Kind.WEB,
                                   "path": Path("src") / agent, "tags": {"b", "a"}})  # fmt: skip
                data[agent] = step.transition
                break
            except TimeoutError:
                assert run.last is not None
                if attempt == RETRIES.get(agent, 1) and run.last.session_status is SessionStatus.FAILED:
                    return "stopped"
    return "done"


async def test_retries_tolerated_and_critical_failures(
    aclient: AsyncStateClient, client: StateClient
) -> None:
    """nl_input fails once then succeeds; search fails for good (tolerated); the run completes with it."""
    events: list[ProgressEvent] = []
    sink = Sink()
    run = await PipelineRun.open(
        aclient, "prod_20261127_031500_0042", metrics=sink, on_progress=events.append
    )
    assert await orchestrate(run, {"nl_input": 1, "search": 3}) == "done"
    session = client.sessions.get(run.session_id)
    assert (session.status, session.failed_agents, session.user_id) == (
        SessionStatus.COMPLETED,
        ("search",),
        None,
    )
    nl_input = client.executions.get(run.session_id, "nl_input")
    assert (nl_input.retry_count, nl_input.last_error) == (1, "TimeoutError: nl_input timed out")
    assert nl_input.output_data["tags"] == ["a", "b"]
    search = client.executions.get(run.session_id, "search")
    assert (search.status, search.retry_count) == ("FAILED", 2)
    assert ("agent_execution_time", "search", True) in sink.records
    assert sum(1 for r in sink.records if r[2]) == 4  # 1 nl_input + 3 search attempts failed
    errors = [e for e in events if e.event == "error"]
    assert [e.tolerated for e in errors if e.agent_name == "search"] == [True, True, True]
    assert [e.attempt for e in events if e.agent_name == "search" and e.event == "started"] == [1, 2, 3]
    assert events[-1].event == "completed"
    assert events[-1].progress == 9


async def test_a_critical_failure_stops_the_run(aclient: AsyncStateClient, client: StateClient) -> None:
    """generation failing on both attempts stops the run: FAILED, open for recovery at generation."""
    run = await PipelineRun.open(aclient, "prod_20261127_031501_0001")
    assert await orchestrate(run, {"generation": 5}) == "stopped"
    session = client.sessions.get(run.session_id)
    assert (session.status, session.progress, session.current_agent) == (
        SessionStatus.FAILED,
        6,
        "generation",
    )
    assert client.executions.get(run.session_id, "generation").retry_count == 1


async def test_a_long_agent_keeps_the_run_alive(aclient: AsyncStateClient, client: StateClient) -> None:
    """While an agent works, heartbeats refresh last_updated, so recovery never takes a live run."""
    run = await PipelineRun.open(aclient, "prod_20261127_031502_0002", heartbeat_seconds=0.03)
    beats: list[float] = []
    original = aclient.sessions.heartbeat

    async def counting(sid: str) -> Any:
        beats.append(1.0)
        return await original(sid)

    aclient.sessions.heartbeat = counting  # type: ignore[method-assign]
    assert await orchestrate(run, {}, slow="generation") == "done"
    assert len(beats) >= 3


async def test_finish_tolerates_a_last_agent_that_failed_for_good(
    aclient: AsyncStateClient, client: StateClient
) -> None:
    """download failing on every attempt: finish() declares the run COMPLETED with download tolerated."""
    run = await PipelineRun.open(aclient, "prod_20261127_031504_0004")
    assert await orchestrate(run, {"download": 5}) == "done"
    assert (await run.session()).status is SessionStatus.ACTIVE
    finished = await run.finish()
    assert (finished.status, finished.failed_agents) == (SessionStatus.COMPLETED, ("download",))


async def test_a_block_without_complete_is_recorded_as_a_failure(aclient: AsyncStateClient) -> None:
    """Forgetting step.complete() is an error that says so (and is recorded, not silently COMPLETED)."""
    run = await PipelineRun.open(aclient, "prod_20261127_031503_0003")
    with pytest.raises(Exception, match=r"without step\.complete"):
        async with run.agent("nl_input"):
            pass
    assert run.last is not None
    assert run.last.status == "FAILED"
