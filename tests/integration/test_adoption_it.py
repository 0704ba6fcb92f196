"""The miniature of T-Developer's orchestrator, adopted as docs/adoption.md shows, on a real endpoint
(LocalStack, or AWS with TDEV_TARGET=aws): the store's problems never change a run's verdict, and the
store holds each run as the orchestrator ran it (issue 22)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta

import pytest
from examples.orchestrator import after

from tdev_state import (
    AGENTS,
    AsyncStateClient,
    SessionStatus,
    StateClient,
    StateConfig,
    deferred_writes,
)
from tdev_state.adoption import resume_route as _resume_route
from tdev_state.resume import CompletedAgent, ResumeRequest

from ..adoption_flows import FixedNow, adopted, original, post, run, stored
from ..outage import StoreOutage

pytestmark = pytest.mark.integration


@pytest.fixture
async def aclient(client: StateClient, base_config: StateConfig) -> AsyncIterator[AsyncStateClient]:
    """A client of its own (outages hook its boto3 clients), on the run's tables."""
    async with AsyncStateClient(StateClient(base_config)) as a:
        yield a
        deferred_writes(a).close()


async def test_a_tolerated_failure_is_stored_as_the_orchestrator_ran_it(aclient: AsyncStateClient) -> None:
    """search fails in all three ways (return, raise, time out): tolerated, the run COMPLETED, its verdict."""
    steps = {"nl_input": ["return"], "search": ["return", "raise", "hang"]}
    expected = await run(original(steps))
    result = await run(adopted(aclient, steps))
    assert (result.success, result.errors) == (expected.success, expected.errors)
    session, agents = await stored(aclient, result.project_id)
    assert (session.status, session.failed_agents) == (SessionStatus.COMPLETED, ("search",))
    assert (agents["search"].status, agents["search"].retry_count) == ("FAILED", 2)
    assert (agents["nl_input"].status, agents["nl_input"].retry_count) == ("COMPLETED", 1)


async def test_outputs_with_uuids_and_int_keys_leave_no_agent_running(aclient: AsyncStateClient) -> None:
    """Outputs with a UUID, int keys, bytes and a timedelta: every agent COMPLETED, each output stored."""
    result = await run(adopted(aclient))
    session, agents = await stored(aclient, result.project_id)
    assert session.status is SessionStatus.COMPLETED
    assert {a.status for a in agents.values()} == {"COMPLETED"}
    assert all(a.output_data is not None for a in agents.values())


async def test_assembly_failing_after_seven_successes_is_completed(
    aclient: AsyncStateClient, client: StateClient
) -> None:
    """The orchestrator's verdict is stored: COMPLETED with assembly listed, never a recovery candidate."""
    result = await run(adopted(aclient, {"assembly": ["raise", "return"]}))
    session, _ = await stored(aclient, result.project_id)
    assert (result.success, session.status) == (True, SessionStatus.COMPLETED)
    assert "assembly" in session.failed_agents
    candidates = client.sessions.recovery_candidates(failed_idle=timedelta(0), stalled_idle=timedelta(0))
    assert result.project_id not in {c.session_id for c in candidates}


async def test_a_store_refusing_connections_for_a_whole_run_changes_nothing(base_config: StateConfig) -> None:
    """The store on a closed local port: the run returns what it returns without the store."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = replace(base_config, endpoint_url=f"http://127.0.0.1:{port}", payload_bucket=None, max_attempts=2)
    steps = {"search": ["return", "return", "return"]}
    expected = await run(original(steps))
    async with AsyncStateClient(StateClient(down)) as state:
        result = await run(adopted(state, steps))
        writes = deferred_writes(state)
        assert (result.success, result.errors) == (expected.success, expected.errors)
        assert writes.pending_writes > 0
        writes.close()


async def test_the_store_down_mid_run_and_back_loses_nothing(aclient: AsyncStateClient) -> None:
    """Down from parser until generation: the deferred writes land in order; the run is stored whole."""
    outage = StoreOutage(aclient.sync)
    pipeline = adopted(aclient, {"search": ["return"]})
    await pipeline.initialize()
    for agent, action in (("parser", outage.down), ("generation", outage.up)):
        inner = pipeline.agents[agent]

        async def wrapped(
            data: object, context: object, _inner: object = inner, _action: object = action
        ) -> object:
            _action()  # type: ignore[operator]
            return await _inner(data, context)  # type: ignore[operator]

        pipeline.agents[agent] = wrapped
    result = await run(pipeline)
    session, agents = await stored(aclient, result.project_id)
    assert (result.success, session.status, len(agents)) == (True, SessionStatus.COMPLETED, len(AGENTS))
    assert (agents["search"].retry_count, deferred_writes(aclient).lost) == (1, 0)


async def test_double_clicked_requests_are_two_runs(
    aclient: AsyncStateClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same request twice in one second (one prod_ id): two whole runs stored, neither failed."""
    monkeypatch.setattr(after, "datetime", FixedNow)
    pipeline = adopted(aclient)
    await pipeline.initialize()
    first, second = await asyncio.gather(run(pipeline), run(pipeline))
    assert (first.project_id == second.project_id, first.success, second.success) == (True, True, True)
    session, agents = await stored(aclient, first.project_id)
    assert (session.status, len(agents), {a.retry_count for a in agents.values()}) == (
        SessionStatus.COMPLETED, 9, {0},
    )  # fmt: skip


async def test_the_resume_route_runs_the_rest_of_a_stopped_run(
    aclient: AsyncStateClient, client: StateClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """generation failed for good; the worker claims the run and POSTs the resume: the rest runs, the
    completed agents are not rerun, the run ends COMPLETED."""
    pipeline = adopted(aclient, {"generation": ["return", "return"]})
    monkeypatch.setattr(after, "production_pipeline", pipeline)
    sid = (await run(pipeline)).project_id
    await stored(aclient, sid)
    claim = client.claims.claim(client.sessions.candidate(sid), worker_id="w-it", lease=timedelta(minutes=5))
    assert claim is not None
    agents = client.executions.list(sid)
    request = ResumeRequest(
        session_id=sid, next_agent="generation", fencing_token=claim.fencing_token, attempt=1,
        completed=[CompletedAgent(a.agent_name, a.output_data) for a in agents if a.status == "COMPLETED"],
        request=agents[0].input_data, next_input=agents[6].input_data, worker_id="w-it", reason="FAILED",
    )  # fmt: skip
    made = dict(pipeline.config["script"].made)
    status, _ = await post(after.resume_route, request.to_json())
    assert status == 202
    (resumed,) = await asyncio.wait_for(asyncio.gather(*_resume_route._tasks), 30)
    session, _ = await stored(aclient, sid)
    assert (resumed.success, session.status) == (True, SessionStatus.COMPLETED)
    rerun = {a for a, n in pipeline.config["script"].made.items() if n != made.get(a, 0)}
    assert rerun == {"generation", "assembly", "download"}
