"""One retention rule per run, and runs whose record is incomplete are never resumed as if whole."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tdev_recovery import RecoveryWorker, RetryPolicy, WorkerConfig
from tdev_state import AGENTS, SessionStatus, StateClient
from tdev_state.models import epoch
from tdev_state.runs.rules import agent_sort_key
from tdev_state.testing import FakeClock, make_client

pytestmark = pytest.mark.unit

WORKER = WorkerConfig(
    worker_id="w1",
    confirm=timedelta(0),  # one sweep decides: these tests move a fake clock, not a monotonic one
    retry_delay=timedelta(hours=1),
    stall_threshold=timedelta(minutes=10),
    retry=RetryPolicy(initial_interval=timedelta(milliseconds=1), maximum_attempts=3),
    grace_period=1.0,
)


class Accepting:
    def __init__(self) -> None:
        self.sessions: list[str] = []

    async def __call__(self, request: object) -> None:
        self.sessions.append(getattr(request, "session_id", ""))


def items(client: StateClient, sid: str) -> tuple[dict[str, object], list[dict[str, object]]]:
    session = client.layer.get(client.layer.tables.sessions, {"session_id": sid}) or {}
    agents = list(
        client.layer.query_all(
            client.layer.tables.executions, key_condition="execution_id = :s", values={":s": sid}
        )
    )
    return session, agents


def test_an_open_run_expires_and_its_agents_never_before_it(aws: None, clock: FakeClock) -> None:
    """The session's expiry is fixed at creation (open runs expire too); every agent item, a first record
    that is already COMPLETED included, expires at or after it, and the run's end does not move it."""
    client = make_client(clock, retention_days=30)
    sid = client.sessions.create(user_id="u").session_id
    client.executions.complete(sid, AGENTS[0], output_data={"out": 1})  # recorded when it finished
    client.executions.start(sid, AGENTS[1])
    client.executions.fail(sid, AGENTS[1], error_message="x")
    client.sessions.update(sid, status="FAILED")
    session, agents = items(client, sid)
    expiry = int(session["expires_at"])  # type: ignore[call-overload]
    created = int(epoch(client.sessions.get(sid).created_at))
    assert expiry == created + 30 * 86_400
    assert len(agents) == 2
    assert all(int(a["expires_at"]) >= expiry for a in agents)  # type: ignore[call-overload]
    clock.advance(days=3)
    client.sessions.update(sid, status="ABANDONED")
    session, _ = items(client, sid)
    assert int(session["expires_at"]) == expiry  # type: ignore[call-overload]


async def test_a_run_with_a_missing_completed_agent_is_abandoned_not_resumed(
    client: StateClient, clock: FakeClock
) -> None:
    """An expired or deleted COMPLETED agent: the run is ABANDONED with "record incomplete", never resumed."""
    sid = client.sessions.create(user_id="u").session_id
    for agent in AGENTS[:3]:
        client.executions.complete(sid, agent, output_data={"out": agent})
    client.sessions.update(sid, status="FAILED")
    client.layer.delete(
        client.layer.tables.executions, {"execution_id": sid, "agent_name": agent_sort_key(AGENTS[1])}
    )
    clock.advance(hours=2)
    resumer = Accepting()
    worker = RecoveryWorker(client, resumer, WORKER, clock=clock)
    assert await worker.sweep() == 1
    await worker.wait_for_inflight()
    assert resumer.sessions == []
    session = client.sessions.get(sid)
    assert session.status is SessionStatus.ABANDONED
    assert "record incomplete" in (session.error_message or "")
    assert "ui_selection is missing" in (session.error_message or "")


async def test_a_whole_record_with_a_tolerated_failure_is_resumed(
    client: StateClient, clock: FakeClock
) -> None:
    """The completeness check accepts a tolerated (FAILED, moved past) agent before progress."""
    sid = client.sessions.create(user_id="u").session_id
    client.executions.complete(sid, AGENTS[0], output_data={"out": 0})
    client.executions.fail(sid, AGENTS[1], error_message="tolerated")
    client.executions.complete(sid, AGENTS[2], output_data={"out": 2})
    client.sessions.update(sid, status="FAILED")
    clock.advance(hours=2)
    resumer = Accepting()
    worker = RecoveryWorker(client, resumer, WORKER, clock=clock)
    await worker.sweep()
    await worker.wait_for_inflight()
    assert resumer.sessions == [sid]
