"""PipelineRun, the adoption helper (tdev_state.pipeline_run): an orchestrator's retry loop records
attempts, returned and raised failures, tolerated and critical failures, the orchestrator's verdict,
metrics and progress — and, in its default mode, no store problem ever reaches the orchestrator."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

import pytest

from tdev_state import (
    AGENTS,
    AsyncStateClient,
    DeferPolicy,
    InvalidTransitionError,
    PipelineRun,
    ProgressEvent,
    RunExistsError,
    SessionNotFoundError,
    SessionStatus,
    StateClient,
    StateError,
    ValidationError,
    deferred_writes,
)
from tdev_state.testing import FakeClock

from ..outage import StoreOutage

pytestmark = pytest.mark.unit

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
        deferred_writes(a, DeferPolicy(call_budget_seconds=5.0, first_backoff_seconds=0.01))
        yield a
        deferred_writes(a).close()


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
                if attempt == RETRIES.get(agent, 1) and run.policy.is_critical(agent):
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
    assert sum(1 for r in sink.records if r[2]) == 4  # 1 nl_input + 3 search attempts failed
    assert [(e.status, e.tolerated) for e in events if e.agent_name == "search"] == [
        ("processing", False),
        ("error", True),
    ]
    assert [e.status for e in events if e.agent_name == "nl_input"] == ["processing", "completed"]
    assert (events[-1].agent_id, events[-1].progress, events[-1].status) == (len(AGENTS), 100, "completed")


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


async def test_a_returned_failure_is_recorded_and_retried_like_a_raised_one(
    aclient: AsyncStateClient, client: StateClient
) -> None:
    """step.fail(error) on each attempt of nl_input, an exception on each of ui_selection: the same record."""
    run = await PipelineRun.open(aclient, "prod_20261127_031505_0005")
    for attempt in range(3):
        async with run.agent("nl_input", input_data={"attempt": attempt}) as step:
            step.complete(None, success=False, error="could not parse")
    for _ in range(3):
        with pytest.raises(RuntimeError):
            async with run.agent("ui_selection"):
                raise RuntimeError("could not parse")
    returned = client.executions.get(run.session_id, "nl_input")
    raised = client.executions.get(run.session_id, "ui_selection")
    assert (returned.status, returned.retry_count, returned.error_message) == ("FAILED", 2, "could not parse")
    assert (raised.status, raised.retry_count) == ("FAILED", 2)


async def test_a_long_agent_keeps_the_run_alive(aclient: AsyncStateClient) -> None:
    """While an agent works, heartbeats refresh last_updated, so recovery never takes a live run."""
    run = await PipelineRun.open(aclient, "prod_20261127_031502_0002", heartbeat_seconds=0.03)
    beats: list[float] = []

    async def counting(sid: str) -> Any:  # counts only: moto is not safe for concurrent updates
        beats.append(1.0)

    aclient.sessions.heartbeat = counting  # type: ignore[method-assign]
    assert await orchestrate(run, {}, slow="generation") == "done"
    assert len(beats) >= 3


async def test_finish_by_policy_tolerates_a_last_agent_that_failed_for_good(
    aclient: AsyncStateClient,
) -> None:
    """download failing on every attempt: finish() declares the run COMPLETED with download tolerated."""
    run = await PipelineRun.open(aclient, "prod_20261127_031504_0004")
    assert await orchestrate(run, {"download": 5}) == "done"
    assert (await run.session()).status is SessionStatus.ACTIVE
    finished = await run.finish()
    assert finished is not None
    assert (finished.status, finished.failed_agents) == (SessionStatus.COMPLETED, ("download",))


async def test_a_block_without_complete_is_recorded_as_a_failure(aclient: AsyncStateClient) -> None:
    """Forgetting step.complete() is an error that says so (and is recorded, not silently COMPLETED)."""
    run = await PipelineRun.open(aclient, "prod_20261127_031503_0003")
    with pytest.raises(StateError, match=r"without step\.complete"):
        async with run.agent("nl_input"):
            pass
    assert run.last is not None
    assert run.last.status == "FAILED"


async def test_opening_a_taken_id_is_refused_and_touches_nothing(
    aclient: AsyncStateClient, client: StateClient
) -> None:
    """open() is for new runs: an existing id is RunExistsError (raise mode), the other run unchanged."""
    first = await PipelineRun.open(aclient, "prod_20261127_031506_0006")
    async with first.agent("nl_input") as step:
        step.complete({"ok": True})
    before = client.sessions.get(first.session_id)
    with pytest.raises(RunExistsError, match=r"PipelineRun\.resume"):
        await PipelineRun.open(aclient, first.session_id, on_store_error="raise")
    assert client.sessions.get(first.session_id) == before


async def test_resume_opens_an_existing_run_only(aclient: AsyncStateClient, client: StateClient) -> None:
    """resume() continues a stored run (its next agent recorded there); an unknown id is refused."""
    first = await PipelineRun.open(aclient, "prod_20261127_031507_0007")
    async with first.agent("nl_input") as step:
        step.complete({"ok": True})
    again = await PipelineRun.resume(aclient, first.session_id, on_store_error="raise")
    async with again.agent("ui_selection") as step:
        step.complete({"ok": True})
    assert client.sessions.get(first.session_id).progress == 2
    with pytest.raises(SessionNotFoundError):
        await PipelineRun.resume(aclient, "prod_never_0000", on_store_error="raise")


async def test_in_raise_mode_a_store_error_is_a_state_error_never_the_agents_failure(
    aclient: AsyncStateClient, client: StateClient
) -> None:
    """The store down when the agent's success is recorded: StateError raised, the agent not FAILED."""
    outage = StoreOutage(client)
    run = await PipelineRun.open(aclient, "prod_20261127_031508_0008", on_store_error="raise")
    step = await run.agent("nl_input").__aenter__()
    outage.down()
    step.complete({"ok": True})
    with pytest.raises(StateError):
        await step.__aexit__(None, None, None)
    outage.up()
    assert client.executions.get(run.session_id, "nl_input").status == "RUNNING"


async def test_the_verdict_is_the_only_way_from_failed_to_completed(
    aclient: AsyncStateClient, client: StateClient
) -> None:
    """A stopped (FAILED) run: update(status=COMPLETED) is refused; the orchestrator's verdict stores it."""
    run = await PipelineRun.open(aclient, "prod_20261127_031509_0009")
    assert await orchestrate(run, {"generation": 5}) == "stopped"
    with pytest.raises(InvalidTransitionError):
        client.sessions.update(run.session_id, status="COMPLETED")
    finished = await run.finish(success=True, errors=["generation: timed out"])
    assert finished is not None
    assert (finished.status, finished.failed_agents) == (SessionStatus.COMPLETED, ("generation",))


async def test_a_failing_progress_callback_is_logged_and_the_agent_goes_on(
    aclient: AsyncStateClient, client: StateClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A callback that raises (the browser went away) is logged with the agent; the agent completes."""

    def broken(event: ProgressEvent) -> None:
        raise ConnectionError("socket closed")

    run = await PipelineRun.open(aclient, "prod_20261127_031510_0010", on_progress=broken)
    with caplog.at_level("WARNING", logger="tdev_state"):
        async with run.agent("nl_input") as step:
            step.complete({"ok": True})
    assert any(r.getMessage().startswith("run.progress_failed") for r in caplog.records)
    assert client.executions.get(run.session_id, "nl_input").status == "COMPLETED"


async def test_a_later_write_never_lands_before_an_earlier_pending_one(
    aclient: AsyncStateClient, client: StateClient
) -> None:
    """The start is deferred (store down), the store is back for the completion: the completion waits
    for the start, so the agent is COMPLETED with the input its start carried."""
    run = await PipelineRun.open(aclient, "prod_20261127_031511_0011")
    outage = StoreOutage(client)
    outage.down()
    step = run.agent("nl_input", input_data={"user_input": "a todo app"})
    await step.__aenter__()
    outage.up()
    step.complete({"ok": True})
    await step.__aexit__(None, None, None)
    assert await run.writes.flush(timeout=20)
    nl_input = client.executions.get(run.session_id, "nl_input")
    assert (nl_input.status, nl_input.input_data, run.writes_lost) == (
        "COMPLETED",
        {"user_input": "a todo app"},
        0,
    )


async def test_the_deferred_memory_is_bounded(client: StateClient) -> None:
    """Over max_pending_writes, a write is lost at once (counted), not held: memory stays bounded."""
    async with AsyncStateClient(client) as small:
        writes = deferred_writes(small, DeferPolicy(max_pending_writes=2, first_backoff_seconds=0.01))
        outage = StoreOutage(client)
        outage.down()
        run = await PipelineRun.open(small, "prod_20261127_031512_0012")
        async with run.agent("nl_input") as step:
            step.complete({"ok": True})
        assert (writes.pending_writes, run.writes_lost) == (2, 1)
        writes.close()


async def test_a_live_run_in_generations_retry_window_is_not_taken(
    aclient: AsyncStateClient, client: StateClient, clock: FakeClock
) -> None:
    """generation RUNNING on its second attempt, 400 s without a beat: inside 2 x 300 s, not a candidate."""
    run = await PipelineRun.open(aclient, "prod_20261127_031513_0013", heartbeat_seconds=45)
    await orchestrate(run, {}, slow=None)  # a whole run first, to have a clock baseline
    live = await PipelineRun.open(aclient, "prod_20261127_031513_0014", heartbeat_seconds=45)
    for agent in AGENTS[:6]:
        async with live.agent(agent) as step:
            step.complete({"ok": True})
    async with live.agent("generation") as step:
        step.fail("first attempt timed out")
    step = live.agent("generation")
    await step.__aenter__()  # the second attempt is running
    clock.advance(seconds=400)
    candidates = client.sessions.recovery_candidates(
        failed_idle=timedelta(minutes=5), stalled_idle=timedelta(minutes=5)
    )
    step.complete({"ok": True})
    await step.__aexit__(None, None, None)
    assert live.session_id not in {c.session_id for c in candidates}


async def test_a_refused_payload_never_leaves_the_agent_running(aws: None, clock: FakeClock) -> None:
    """No payload bucket and a 1.2 MB incompressible output: refused by the store, yet the agent is
    COMPLETED (its output replaced by a mark saying why)."""
    from tdev_state.pipeline_run import UNSTORED_MARK
    from tdev_state.testing import make_client

    bare = make_client(clock, payload_bucket=None)
    async with AsyncStateClient(bare) as small:
        run = await PipelineRun.open(small, "prod_20261127_031514_0015")
        async with run.agent("nl_input", input_data={"user_input": "x"}) as step:
            step.complete({"code": secrets.token_hex(600_000)})
        stored = bare.executions.get(run.session_id, "nl_input")
        assert stored.status == "COMPLETED"
        assert "PayloadTooLargeError" in stored.output_data[UNSTORED_MARK]
        deferred_writes(small).close()


async def test_a_wrong_pipeline_type_is_refused_in_every_mode(aclient: AsyncStateClient) -> None:
    """The orchestrator's constants are checked even in the defer mode: ValidationError, nothing written."""
    with pytest.raises(ValidationError, match="pipeline_type"):
        await PipelineRun.open(aclient, "prod_20261127_031515_0016", pipeline_type="PROD")
    with pytest.raises(SessionNotFoundError):
        await aclient.sessions.get("prod_20261127_031515_0016")


@pytest.mark.parametrize(
    "kwargs",
    [{"success": "yes"}, {"success": True, "failed_agents": ["deploy"]}, {"success": False, "reason": 7}],
    ids=["success-not-bool", "unknown-agent", "reason-not-text"],
)
def test_a_malformed_verdict_is_refused_and_writes_nothing(
    client: StateClient, kwargs: dict[str, Any]
) -> None:
    """record_verdict validates its input: ValidationError, the run unchanged."""
    session = client.sessions.create(session_id="prod_20261127_031516_0017")
    with pytest.raises(ValidationError):
        client.sessions.record_verdict(session.session_id, **kwargs)
    assert client.sessions.get(session.session_id) == session
