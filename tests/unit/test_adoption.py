"""The miniature of T-Developer's orchestrator, adopted as docs/adoption.md shows (examples/orchestrator),
on moto: with the state layer in, every run's verdict and the user's result are what they would have been
without it — whatever the store does — and the store holds the truth about the run (issue 22)."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from examples.orchestrator import after
from examples.orchestrator.agents import RecordingWebSocketManager

from tdev_state import (
    AGENTS,
    AsyncStateClient,
    SessionStatus,
    StateClient,
    deferred_writes,
)
from tdev_state.adoption import resume_route as _resume_route
from tdev_state.resume import CompletedAgent, ResumeRequest

from ..adoption_flows import HUNG_DEFER, FixedNow, adopted, original, post, run, stored
from ..outage import StoreOutage

pytestmark = pytest.mark.unit

THREE_WAYS = {"return": "could not do it", "raise": "crashed", "hang": "TimeoutError"}


async def test_a_run_is_stored_as_the_orchestrator_ran_it(
    aclient: AsyncStateClient, client: StateClient
) -> None:
    """Adopted, the orchestrator returns what it returned before, and the store holds every agent."""
    steps = {"nl_input": ["return"], "search": ["raise", "hang", "return"]}
    expected = await run(original(steps))
    result = await run(adopted(aclient, steps))
    assert (result.success, result.errors) == (expected.success, expected.errors)
    session, agents = await stored(aclient, result.project_id)
    assert (session.status, session.failed_agents) == (SessionStatus.COMPLETED, ("search",))
    assert (agents["nl_input"].status, agents["nl_input"].retry_count) == ("COMPLETED", 1)
    assert (agents["search"].status, agents["search"].retry_count) == ("FAILED", 2)


@pytest.mark.parametrize("way", sorted(THREE_WAYS))
async def test_each_way_of_failing_is_recorded_with_its_retries(
    way: str, aclient: AsyncStateClient, client: StateClient
) -> None:
    """Returned success=False, raised, timed out: FAILED with the error, retries counted alike."""
    result = await run(adopted(aclient, {"match_rate": [way, way, way]}))
    _, agents = await stored(aclient, result.project_id)
    match_rate = agents["match_rate"]
    assert (match_rate.status, match_rate.retry_count) == ("FAILED", 2)
    assert THREE_WAYS[way] in (match_rate.error_message or "")


async def test_assembly_failing_after_seven_successes_is_stored_completed(
    aclient: AsyncStateClient, client: StateClient
) -> None:
    """The orchestrator's verdict (>= 7 succeeded, < 3 errors) is stored: COMPLETED, assembly listed, and
    the recovery worker never sees it."""
    steps = {"assembly": ["return", "return"]}
    assert (await run(original(steps))).success
    result = await run(adopted(aclient, steps))
    session, agents = await stored(aclient, result.project_id)
    assert (result.success, session.status, agents["assembly"].status) == (
        True,
        SessionStatus.COMPLETED,
        "FAILED",
    )
    assert "assembly" in session.failed_agents
    candidates = client.sessions.recovery_candidates(failed_idle=timedelta(0), stalled_idle=timedelta(0))
    assert result.project_id not in {c.session_id for c in candidates}


async def test_a_failed_verdict_is_stored_failed(aclient: AsyncStateClient, client: StateClient) -> None:
    """generation failing for good: the orchestrator says failure, the run is FAILED (open for recovery)."""
    result = await run(adopted(aclient, {"generation": ["raise", "return"]}))
    session, _ = await stored(aclient, result.project_id)
    assert (result.success, session.status) == (False, SessionStatus.FAILED)


async def test_outputs_with_uuids_int_keys_bytes_and_timedeltas_never_wedge_a_run(
    aclient: AsyncStateClient, client: StateClient
) -> None:
    """The fake agents' outputs hold a UUID, int keys, bytes, a timedelta: every agent ends COMPLETED."""
    result = await run(adopted(aclient))
    session, agents = await stored(aclient, result.project_id)
    assert session.status is SessionStatus.COMPLETED
    assert {a.status for a in agents.values()} == {"COMPLETED"}
    assert all(agents[name].output_data is not None for name in ("nl_input", "match_rate", "assembly"))


async def test_the_store_down_for_a_whole_run_changes_nothing_for_the_user(
    aclient: AsyncStateClient, client: StateClient
) -> None:
    """Every call refused: the run's result is the one it has without the store; its writes wait."""
    steps = {"search": ["return", "return", "return"]}
    expected = await run(original(steps))
    outage = StoreOutage(client)
    outage.down()
    result = await run(adopted(aclient, steps))
    assert (result.success, result.errors) == (expected.success, expected.errors)
    assert outage.refused > 0
    assert deferred_writes(aclient).pending_writes > 0  # kept for later, within the budget


async def test_writes_given_up_are_counted_logged_once_and_measured(
    aclient: AsyncStateClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A run whose writes are all lost: writes_lost and DeferredWrites.lost count them, one log line."""
    from tdev_state import DeferPolicy, PipelineRun

    sink = _Sink()
    outage = StoreOutage(aclient.sync)
    outage.down()
    policy = DeferPolicy(call_budget_seconds=0.2, give_up_after_seconds=0.01, first_backoff_seconds=0.02)
    with caplog.at_level("WARNING", logger="tdev_state"):
        run_ = await PipelineRun.open(aclient, "prod_lost_0001", metrics=sink, defer_policy=policy)
        async with run_.agent("nl_input") as step:
            step.complete({"ok": True})
        await run_.finish(success=True)
        await asyncio.wait_for(run_.writes.flush(), 10)
    assert run_.writes_lost == 4  # create, start, complete, verdict
    assert run_.writes.lost >= 4
    assert [r.getMessage().split()[0] for r in caplog.records].count("run.state_writes_lost") == 1
    assert sink.records.count(("state_writes_lost", "nl_input", True)) == 4


async def test_the_store_down_mid_run_and_back_loses_nothing(
    aclient: AsyncStateClient, client: StateClient
) -> None:
    """Down from parser to generation: the deferred writes land later, in order; the run is stored whole."""
    outage = StoreOutage(client)
    pipeline = adopted(aclient, {"search": ["return"]})
    await pipeline.initialize()
    _around(pipeline, "parser", before=outage.down)
    _around(pipeline, "generation", before=outage.up)
    writes = deferred_writes(aclient)
    result = await run(pipeline)
    assert await asyncio.wait_for(writes.flush(), 10)
    session, agents = await stored(aclient, result.project_id)
    assert (result.success, session.status, len(agents)) == (True, SessionStatus.COMPLETED, len(AGENTS))
    assert (agents["search"].retry_count, writes.lost) == (1, 0)
    assert writes.landed_late > 0


async def test_a_hung_store_does_not_hold_the_run(aclient: AsyncStateClient, client: StateClient) -> None:
    """Every call hangs: the run ends while the store still hangs (each call waits its budget at most);
    released, the deferred writes land."""
    outage = StoreOutage(client)
    outage.hang()
    result = await run(adopted(aclient, defer=HUNG_DEFER))
    assert result.success
    assert outage.hung > 0
    outage.up()
    assert await asyncio.wait_for(deferred_writes(aclient).flush(), 10)
    session, _ = await stored(aclient, result.project_id)
    assert session.status is SessionStatus.COMPLETED


async def test_double_clicked_requests_never_merge(
    aclient: AsyncStateClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Two identical requests in one second (one prod_ id): two stored runs, both whole, both succeed."""
    monkeypatch.setattr(after, "datetime", FixedNow)
    pipeline = adopted(aclient)
    await pipeline.initialize()
    with caplog.at_level("WARNING", logger="tdev_state"):
        first, second = await asyncio.gather(run(pipeline), run(pipeline))
    assert first.project_id == second.project_id
    assert (first.success, second.success) == (True, True)
    logged = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("run.duplicate_id"))
    duplicate = logged.split("stored_as=")[1].split()[0]
    assert duplicate.startswith(f"{first.project_id}-dup-")
    for sid in (first.project_id, duplicate):
        session, agents = await stored(aclient, sid)
        assert (session.status, len(agents)) == (SessionStatus.COMPLETED, len(AGENTS))
        assert {a.retry_count for a in agents.values()} == {0}


async def test_progress_events_are_the_orchestrators_websocket_calls(
    aclient: AsyncStateClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through docs/adoption.md's adapter, the helper sends exactly the ws_manager progress calls the
    orchestrator sends itself (and one log line with each)."""
    steps = {"nl_input": ["return"], "search": ["raise", "hang", "return"], "assembly": ["return", "return"]}
    ws = RecordingWebSocketManager()
    await run(original(steps), ws)
    helper_ws = RecordingWebSocketManager()
    pipeline = adopted(aclient, steps)
    await pipeline.initialize()
    original_open = after.PipelineRun.open
    ws_progress = documented_adapter()

    async def open_with_progress(*args: Any, **kwargs: Any) -> Any:
        return await original_open(*args, on_progress=ws_progress(helper_ws, "project_1a2b3c4d"), **kwargs)

    monkeypatch.setattr(after.PipelineRun, "open", open_with_progress)
    await run(pipeline)
    assert [p[1:] for p in helper_ws.progress] == [p[1:] for p in ws.progress]
    assert {p[0] for p in helper_ws.progress} == {"project_1a2b3c4d"}
    assert [level for _, _, level in helper_ws.logs] == [level for _, _, level in ws.logs]


def documented_adapter() -> Any:
    """The `ws_progress` adapter exactly as docs/adoption.md shows it."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "adoption.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "def ws_progress" in b)
    namespace: dict[str, Any] = {}
    exec(block.split("\nrun = ")[0], namespace)
    return namespace["ws_progress"]


async def test_the_resume_route_goes_on_from_the_next_agent(
    aclient: AsyncStateClient, client: StateClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run stopped at generation, claimed by the worker: the mounted route checks the token and runs the
    rest; the completed agents are not run again, and the run ends COMPLETED."""
    pipeline = adopted(aclient, {"generation": ["return", "return"]})
    monkeypatch.setattr(after, "production_pipeline", pipeline)
    stopped = await run(pipeline)
    sid = stopped.project_id
    claim = client.claims.claim(
        client.sessions.candidate(sid), worker_id="worker-1", lease=timedelta(minutes=5)
    )
    assert claim is not None
    agents = client.executions.list(sid)
    request = ResumeRequest(
        session_id=sid, next_agent="generation", fencing_token=claim.fencing_token, attempt=1,
        completed=[CompletedAgent(a.agent_name, a.output_data) for a in agents if a.status == "COMPLETED"],
        request=agents[0].input_data, next_input=agents[6].input_data, worker_id="w-1", reason="FAILED",
    )  # fmt: skip
    made_before = dict(pipeline.config["script"].made)
    status, _ = await post(after.resume_route, request.to_json())
    assert status == 202
    (resumed,) = await asyncio.wait_for(asyncio.gather(*_resume_route._tasks), 10)
    assert resumed.success
    session, agents_now = await stored(aclient, sid)
    assert session.status is SessionStatus.COMPLETED
    assert agents_now["generation"].retry_count == 2
    made = pipeline.config["script"].made
    rerun = {a: made[a] - made_before.get(a, 0) for a in made if made[a] != made_before.get(a, 0)}
    assert rerun == dict.fromkeys(AGENTS[AGENTS.index("generation") :], 1)  # generation and every later agent


async def test_a_stale_fencing_token_is_refused_with_409(
    aclient: AsyncStateClient, client: StateClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume with a token lower than the run's is refused (409) and starts nothing; so is a repeat."""
    pipeline = adopted(aclient, {"generation": ["return", "return"]})
    monkeypatch.setattr(after, "production_pipeline", pipeline)
    sid = (await run(pipeline)).project_id
    claim = client.claims.claim(
        client.sessions.candidate(sid), worker_id="worker-1", lease=timedelta(minutes=5)
    )
    assert claim is not None
    body = {"session_id": sid, "next_agent": "generation", "fencing_token": claim.fencing_token - 1}
    made = dict(pipeline.config["script"].made)
    status, answer = await post(after.resume_route, body)
    assert (status, answer["kind"], pipeline.config["script"].made) == (409, "StaleResumeError", made)


def _around(pipeline: Any, agent: str, *, before: Any) -> None:
    """Call `before()` when `agent` is first called (an outage starting or ending mid-run)."""
    inner = pipeline.agents[agent]

    async def wrapped(data: Any, context: Any) -> Any:
        before()
        return await inner(data, context)

    pipeline.agents[agent] = wrapped


class _Sink:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, bool]] = []

    def record(self, metric_name: str, value: float, *, agent_name: str, error: bool = False) -> None:
        self.records.append((metric_name, agent_name, error))
