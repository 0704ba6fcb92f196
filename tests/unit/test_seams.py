"""Seams between the branches merged for issues 22 and 23: the adoption helper against the liveness rule,
the codec's lossy mode, the worker's resume request, retention and the identifier rule (on moto)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from examples.orchestrator import after

from tdev_recovery.worker import RecoveryWorker
from tdev_state import (
    AsyncStateClient,
    PipelineRun,
    SessionStatus,
    StateClient,
    ValidationError,
    deferred_writes,
)
from tdev_state.adoption import resume_route as _resume_route
from tdev_state.resume import ResumeRequest
from tdev_state.testing import FakeClock

from ..adoption_flows import TEST_DEFER, adopted, post, run, stored
from ..outage import StoreOutage
from .test_liveness import PER_AGENT

pytestmark = pytest.mark.unit


async def test_a_heartbeat_too_slow_for_the_policys_timeout_is_refused(aclient: AsyncStateClient) -> None:
    """Beats further apart than half the policy's heartbeat timeout would let recovery take a live run."""
    timeout = aclient.sync.config.run_policy.heartbeat_timeout_seconds / 2 + 1
    with pytest.raises(ValidationError, match="heartbeat_timeout_seconds"):
        await PipelineRun.open(aclient, "prod_slow_beat", heartbeat_seconds=timeout, on_store_error="raise")


async def test_a_duplicate_of_a_longest_multibyte_id_is_stored_under_a_valid_id(
    aclient: AsyncStateClient,
) -> None:
    """A taken 256-byte id: the derived `-dup-` id stays within the identifier rule (counted in bytes)."""
    deferred_writes(aclient, TEST_DEFER)
    sid = "é" * 128  # 256 UTF-8 bytes: the longest id the rule allows
    first = await PipelineRun.open(aclient, sid)
    second = await PipelineRun.open(aclient, sid)
    assert await deferred_writes(aclient).flush(timeout=10)
    assert (first.writes_lost, second.writes_lost) == (0, 0)
    assert second.session_id != sid
    assert aclient.sync.sessions.get(second.session_id).status is SessionStatus.ACTIVE


async def test_a_lossy_write_that_lands_late_still_logs_its_warnings(
    aclient: AsyncStateClient, client: StateClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A deferred write stored in marked lossy form logs run.lossy_write when it lands, like a direct one."""
    deferred_writes(aclient, TEST_DEFER)
    outage = StoreOutage(client)
    run_ = await PipelineRun.open(aclient, "prod_lossy_late")
    outage.down()
    with caplog.at_level("WARNING", logger="tdev_state"):
        async with run_.agent("nl_input", input_data={"q": 1}) as step:
            step.complete({"score": float("nan")})
        outage.up()
        assert await deferred_writes(aclient).flush(timeout=10)
    assert client.executions.get(run_.session_id, "nl_input").status == "COMPLETED"
    assert "run.lossy_write" in [r.getMessage().split()[0] for r in caplog.records]


async def test_a_worker_resume_sent_as_json_gives_the_resumed_agent_its_stored_input(
    aclient: AsyncStateClient, client: StateClient, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker -> JSON wire (as HttpResumer sends it) -> the mounted route: generation's resumed input is the
    one it was given live (project_type the request's `react`), and the run ends COMPLETED."""
    pipeline = adopted(aclient, {"generation": ["return", "return"]})
    monkeypatch.setattr(after, "production_pipeline", pipeline)
    stopped = await run(pipeline)
    sid = stopped.project_id
    live_input = client.executions.get(sid, "generation").input_data
    answers: list[int] = []

    async def http_like(request: ResumeRequest) -> None:
        body = json.loads(json.dumps(request.to_json()))  # exactly HttpResumer's body, parsed by the route
        status, _ = await post(after.resume_route, body)
        answers.append(status)

    clock.advance(minutes=12)  # past generation's window (2 x 300 s + grace)
    worker = RecoveryWorker(client, http_like, PER_AGENT, clock=clock)
    assert await worker.sweep() == 1
    await worker.wait_for_inflight()
    (resumed,) = await asyncio.wait_for(asyncio.gather(*_resume_route._tasks), 10)
    assert (answers, resumed.success) == ([202], True)
    session, agents = await stored(aclient, sid)
    assert session.status is SessionStatus.COMPLETED
    assert agents["generation"].input_data == live_input
    assert agents["generation"].input_data["project_type"] == live_input["project_type"]


async def test_a_lossy_write_that_lands_at_once_logs_its_warnings(
    aclient: AsyncStateClient, caplog: pytest.LogCaptureFixture
) -> None:
    """An output stored in marked lossy form (NaN) is logged as run.lossy_write with the agent's name."""
    deferred_writes(aclient, TEST_DEFER)
    run_ = await PipelineRun.open(aclient, "prod_lossy_now")
    with caplog.at_level("WARNING", logger="tdev_state"):
        async with run_.agent("nl_input", input_data={"q": 1}) as step:
            step.complete({"score": float("nan")})
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("run.lossy_write")]
    assert "nl_input" in line


async def test_a_failed_verdict_on_a_run_its_critical_agent_failed_ends_the_agents_window(
    aclient: AsyncStateClient, client: StateClient
) -> None:
    """generation failed for good, then finish(success=False): the window is the grace, not 2 x 300 s,
    the orchestrator's errors are the reason, and the verdict counts no further failure."""
    result = await run(adopted(aclient, {"generation": ["return", "return"]}))
    session, _ = await stored(aclient, result.project_id)
    (candidate,) = client.sessions.recovery_candidates(
        failed_idle=timedelta(0), stalled_idle=timedelta(0), live=True
    )
    assert candidate.live_for == client.config.run_policy.deadline_grace_seconds
    assert session.error_message == "; ".join(result.errors)
    raw = client.layer.get(client.layer.tables.sessions, {"session_id": result.project_id})
    assert raw is not None
    assert int(raw["fail_count"]) == 2  # each failed attempt entered FAILED once; the verdict adds none


async def test_a_run_stopped_by_its_critical_agent_is_resumed_through_that_agent(
    aclient: AsyncStateClient, client: StateClient
) -> None:
    """finish(success=False) never lists the critical agent as a tolerated failure: a resume retries it."""
    result = await run(adopted(aclient, {"generation": ["return", "return"]}))
    session, _ = await stored(aclient, result.project_id)
    assert (session.status, session.failed_agents) == (SessionStatus.FAILED, ())


@dataclass
class _Understood:
    """nl_input's output as an object (not a dict): the live loop does not promote its fields."""

    project_type: str


async def test_a_resumed_agent_gets_the_live_runs_project_type_when_an_output_was_an_object(
    aclient: AsyncStateClient, client: StateClient, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replaying finished agents on a resume must not promote stored outputs over the next agent's input:
    generation gets the request's `react`, as live, not nl_input's `web_app` (issue 22, 5)."""
    pipeline = adopted(aclient, {"generation": ["return", "return"]})
    await pipeline.initialize()
    inner = pipeline.agents["nl_input"]

    async def as_object(data: Any, context: Any) -> Any:
        result = await inner(data, context)
        result.output_data = _Understood("web_app")
        return result

    pipeline.agents["nl_input"] = as_object
    monkeypatch.setattr(after, "production_pipeline", pipeline)
    sid = (await run(pipeline)).project_id
    assert client.executions.get(sid, "generation").input_data["project_type"] == "react"
    clock.advance(minutes=12)

    async def http_like(request: ResumeRequest) -> None:
        await post(after.resume_route, json.loads(json.dumps(request.to_json())))

    worker = RecoveryWorker(client, http_like, PER_AGENT, clock=clock)
    assert await worker.sweep() == 1
    await worker.wait_for_inflight()
    await asyncio.wait_for(asyncio.gather(*_resume_route._tasks), 10)
    _, agents = await stored(aclient, sid)
    assert agents["generation"].input_data["project_type"] == "react"


async def test_a_next_input_the_store_refused_leaves_the_loops_data_as_it_is(
    aclient: AsyncStateClient,
) -> None:
    """A next_input that is only the unstored mark (the store refused it) never replaces pipeline_data."""
    from tdev_state.pipeline_run import UNSTORED_MARK

    sid = (await PipelineRun.open(aclient, "prod_refused_input")).session_id
    request = ResumeRequest(
        session_id=sid, next_agent="nl_input", fencing_token=1, attempt=1, reason="FAILED",
        next_input={UNSTORED_MARK: "PayloadTooLargeError: too big"},
    )  # fmt: skip
    resumed = await PipelineRun.resume(aclient, sid, request=request)
    data = {"user_input": "a shop", "project_type": "react"}
    async with resumed.agent("nl_input", input_data=data) as step:
        step.complete({"ok": True})
    assert data == {"user_input": "a shop", "project_type": "react"}


async def test_metadata_the_store_refuses_never_loses_the_whole_run(aclient: AsyncStateClient) -> None:
    """Defer mode: run metadata the codec refuses (NaN) is stored as the unstored mark; the run is kept."""
    from tdev_state.pipeline_run import UNSTORED_MARK

    deferred_writes(aclient, TEST_DEFER)
    run_ = await PipelineRun.open(aclient, "prod_bad_metadata", metadata={"ratio": float("nan")})
    async with run_.agent("nl_input", input_data={"q": 1}) as step:
        step.complete({"ok": True})
    assert await deferred_writes(aclient).flush(timeout=10)
    session = aclient.sync.sessions.get(run_.session_id)
    assert run_.writes_lost == 0
    assert UNSTORED_MARK in session.metadata


async def test_a_user_id_the_rule_refuses_never_loses_the_whole_run(aclient: AsyncStateClient) -> None:
    """Defer mode: a user id with a space (from the API's request) is left out; the run is stored."""
    deferred_writes(aclient, TEST_DEFER)
    run_ = await PipelineRun.open(aclient, "prod_bad_user", user_id="user 1", metadata=7)
    assert await deferred_writes(aclient).flush(timeout=10)
    session = aclient.sync.sessions.get(run_.session_id)
    assert (run_.writes_lost, session.user_id, session.status) == (0, None, SessionStatus.ACTIVE)
