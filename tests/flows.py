"""Each component's job, end to end, as one flow: what IAM must allow (and what is recorded to prove it).

Used by tests/unit/test_access.py (every AWS call recorded and checked against the component's declared
grants) and by the IAM-enforcement tests (the same flows under the policy infra synthesizes). A flow is
split in `setup` (done by other components, not recorded and not under the policy) and `act`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import tdev_state
from tdev_metrics import CollectorConfig, MetricsCollector, MetricsReader
from tdev_metrics.usage_tables import SETTLE_DAYS, UsageFolder
from tdev_recovery import RecoveryWorker, ResumeRejected, ResumeRequest, RetryPolicy, WorkerConfig
from tdev_recovery.ops import OpsServer
from tdev_state import AGENTS, InvalidTransitionError, SessionStatus, StateClient
from tdev_state.testing import generated_project


@dataclass
class Flow:
    """A component's flow: `setup` prepares state with full rights; `act` is the component's own work."""

    component: str
    setup: Callable[[StateClient, Any], Awaitable[None]]
    act: Callable[[StateClient, Any], Awaitable[None]]


async def _nothing(client: StateClient, clock: Any) -> None:
    return None


async def pipeline_act(client: StateClient, clock: Any) -> None:
    """A whole run with a large payload, a failure and a retry; listings; projects; the plan's dict calls."""
    sid = client.sessions.create(user_id="u-flow", project_name="shop", metadata={"req": "x"}).session_id
    for i, agent in enumerate(AGENTS):
        client.executions.start(sid, agent, input_data={"step": i})
        if agent == "parser":
            client.executions.fail(sid, agent, error_message="llm 500")
            client.executions.retry(sid, agent)
        output = generated_project(200_000) if agent == "generation" else {"ok": agent}
        client.executions.complete(sid, agent, output_data=output)
        if i == 3:
            client.sessions.heartbeat(sid)
    assert len(client.executions.list(sid)) == len(AGENTS)
    # Another process (empty data-key cache) reads the run: sealed fields cost it one KMS Decrypt.
    reader = StateClient(client.config, clock=clock, session=client.layer.session)
    assert reader.executions.get(sid, "generation").output_data == generated_project(200_000)
    assert reader.sessions.get(sid).metadata == {"req": "x"}
    # A fork of the run (#27): the child's items are Put in one transaction with the parent's update, and
    # its sealed copies open under the run that sealed them.
    child = client.sessions.fork(sid, from_agent="generation", overrides={"framework": "vue"}).session_id
    assert reader.executions.get(child, "parser").output_data == {"ok": "parser"}
    # A refused call (an agent three steps ahead) takes back the large payload it had stored.
    other = client.sessions.create(user_id="u-flow", project_name="refused").session_id
    try:
        client.executions.complete(other, "parser", output_data=generated_project(100_000))
    except InvalidTransitionError:
        pass
    else:  # pragma: no cover
        raise AssertionError("completing parser of a fresh run must be refused")
    assert client.layer.payloads.discarded_objects == 1
    _every_transition_kind(client)
    client.sessions.list_for_user("u-flow")
    client.sessions.failed_sessions()
    client.projects.save(user_id="u-flow", project_id="p1", project_name="shop", size_mb=1.5)
    client.projects.get("u-flow", "p1")
    client.projects.list_for_user("u-flow")
    client.projects.record_download("u-flow", "p1")
    client.projects.delete("u-flow", "p1")
    tdev_state.configure(client)
    try:
        await tdev_state.save_pipeline_session(
            {"session_id": "s-plan", "user_id": "u-flow", "project_name": "p", "status": "ACTIVE"}
        )
        await tdev_state.update_agent_execution(
            {"execution_id": "s-plan", "agent_name": "nl_input", "status": "RUNNING", "input_data": {"a": 1}}
        )
        await tdev_state.get_failed_sessions()
        await tdev_state.save_user_project({"user_id": "u-flow", "project_id": "p2", "project_name": "n"})
    finally:
        tdev_state.configure(None)


def _every_transition_kind(client: StateClient) -> None:
    """The transitions whose writes differ from the plain path: a tolerated failure moved past (a
    ConditionCheck on the failed agent), a critical failure and its resume by the pipeline (FAILED back to
    ACTIVE), and the end of a run whose last agent failed (another ConditionCheck)."""
    sid = client.sessions.create(user_id="u-flow", project_name="kinds").session_id
    client.executions.complete(sid, "nl_input", output_data={"ok": 1})
    client.executions.fail(sid, "ui_selection", error_message="tolerated")
    assert client.executions.start(sid, "parser").progress == 2  # moved past ui_selection
    for agent in AGENTS[2:6]:
        client.executions.complete(sid, agent, output_data={"ok": agent})
    assert client.executions.fail(sid, "generation", error_message="critical").session_status == "FAILED"
    client.executions.retry(sid, "generation")  # the pipeline resumes its FAILED run
    for agent in AGENTS[6:8]:
        client.executions.complete(sid, agent, output_data={"ok": agent})
    client.executions.fail(sid, "download", error_message="last one")
    assert client.sessions.update(sid, status="COMPLETED").failed_agents == ("ui_selection", "download")


async def worker_setup(client: StateClient, clock: Any) -> None:
    """Two crashed runs (one with an agent left RUNNING after an offloaded generation output) and one
    failed run (its critical agent failed), all old enough to resume."""
    for completed, running in ((7, True), (2, False)):
        sid = client.sessions.create(user_id="u-w", project_name="p").session_id
        for agent in AGENTS[:completed]:
            client.executions.start(sid, agent)
            output = generated_project(200_000) if agent == "generation" else {"out": agent}
            client.executions.complete(sid, agent, output_data=output)
        if running:
            client.executions.start(sid, AGENTS[completed])
    for _ in range(2):  # the second one the pipeline refuses for good: the worker abandons it
        sid = client.sessions.create(user_id="u-w", project_name="p").session_id
        for agent in AGENTS[:6]:
            client.executions.complete(sid, agent, output_data={"out": agent})
        client.executions.fail(sid, "generation", error_message="boom")
    clock.advance(hours=2)


async def worker_act(client: StateClient, clock: Any) -> None:
    """Sweep, claim, close interrupted attempts, hand runs to a resumer, abandon the one it refuses; the
    ops endpoints answer."""
    resumed: list[ResumeRequest] = []
    refused: list[str] = []

    async def resumer(request: ResumeRequest) -> None:
        if request.reason == "FAILED" and not refused:
            refused.append(request.session_id)
            raise ResumeRejected("the pipeline refuses this run", retryable=False)
        resumed.append(request)

    config = WorkerConfig(
        worker_id="flow",
        poll_interval=0.05,
        retry_delay=timedelta(minutes=1),
        stall_threshold=timedelta(minutes=10),
        confirm=timedelta(0),  # one sweep decides: these tests move a fake clock, not a monotonic one
        lease=timedelta(seconds=30),
        retry=RetryPolicy(initial_interval=timedelta(milliseconds=1), maximum_attempts=3),
        grace_period=1.0,
    )
    worker = RecoveryWorker(client, resumer, config, clock=clock)
    usage = MetricsCollector(client, start=False)  # as the worker's CLI runs it: resumes are counted
    await worker.sweep()
    await worker.wait_for_inflight()
    assert len(resumed) == 3, resumed
    assert client.sessions.get(refused[0]).status is SessionStatus.ABANDONED
    assert usage.close()
    # The usage fold of past days (the worker's CLI runs it after its sweeps).
    assert (
        UsageFolder(client, days_per_call=SETTLE_DAYS).fold(clock().date() + timedelta(days=1)) == SETTLE_DAYS
    )
    ops = OpsServer(worker, host="127.0.0.1", port=0)
    assert ops.ready()[0]


async def metrics_act(client: StateClient, clock: Any) -> None:
    """Record, flush (sequence-guarded updates), read back as a report does."""
    noon = datetime(2026, 11, 26, 12, tzinfo=UTC)
    with MetricsCollector(client, CollectorConfig(), start=False) as metrics:
        for i in range(20):
            metrics.record("agent_execution_time", 1.0 + i, agent_name="parser", timestamp=noon)
        assert metrics.flush()
    assert MetricsReader(client).hourly("agent_execution_time", start=date(2026, 11, 26))[0].count == 20


FLOWS = (
    Flow("pipeline-client", _nothing, pipeline_act),
    Flow("recovery-worker", worker_setup, worker_act),
    Flow("metrics-collector", _nothing, metrics_act),
)
