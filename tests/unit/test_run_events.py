"""A run's event log: derived from what the transitions store, one seq per versioned transition, never a gap
or a duplicate — across writers in several processes and a resume by the recovery worker."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tdev_recovery import RecoveryWorker, ResumeRequest, RetryPolicy, WorkerConfig
from tdev_state import AGENTS, ConflictError, SessionNotFoundError, StateClient, ValidationError
from tdev_state.models import RunEvent
from tdev_state.testing import FakeClock, make_client

from ..console_runs import finish_run, make_failed_run

pytestmark = pytest.mark.unit

FAST = WorkerConfig(
    worker_id="w1",
    poll_interval=0.05,
    retry_delay=timedelta(hours=1),
    stall_threshold=timedelta(minutes=10),
    confirm=timedelta(0),
    lease=timedelta(seconds=30),
    retry=RetryPolicy(initial_interval=timedelta(milliseconds=1), maximum_attempts=3),
    grace_period=1.0,
)


def kinds(events: tuple[RunEvent, ...] | list[RunEvent]) -> list[tuple[int, str, str | None]]:
    return [(e.seq, e.kind, e.agent) for e in events]


def test_a_run_s_transitions_are_numbered_one_by_one(client: StateClient) -> None:
    """Open, agents started/failed/retried/completed, a tolerated failure moved past, the verdict: one
    event per seq, 1..version, with attempts, errors, sizes and the run's end."""
    sid = client.sessions.create(refs=["project_e1"]).session_id
    client.executions.start(sid, "nl_input")
    client.executions.fail(sid, "nl_input", error_message="model busy")
    client.executions.retry(sid, "nl_input")
    client.executions.complete(sid, "nl_input", output_data={"ok": 1})
    client.executions.start(sid, "ui_selection")
    client.executions.fail(sid, "ui_selection", error_message="no template")
    client.executions.start(sid, "parser")  # moves past the tolerated ui_selection
    client.sessions.record_verdict(sid, success=False, reason="parser gave up")
    found = client.sessions.events("project_e1")
    assert kinds(found.events) == [
        (1, "run_opened", None),
        (2, "agent_started", "nl_input"),
        (3, "agent_failed", "nl_input"),
        (4, "agent_retried", "nl_input"),
        (5, "agent_completed", "nl_input"),
        (6, "agent_started", "ui_selection"),
        (7, "agent_failed", "ui_selection"),
        (8, "agent_started", "parser"),
        (9, "run_finished", None),
    ]
    assert found.seq == client.sessions.get(sid).version == 9
    by_seq = {e.seq: e for e in found.events}
    assert (by_seq[3].error, by_seq[3].attempt) == ("model busy", 1)
    assert (by_seq[5].attempt, by_seq[5].status, by_seq[5].output_bytes) == (2, "COMPLETED", 8)
    assert by_seq[7].tolerated == "ui_selection"
    assert by_seq[8].tolerated == "ui_selection"
    assert (by_seq[9].run_status, by_seq[9].error) == ("FAILED", "parser gave up")
    assert not found.ended  # FAILED is open: the worker may resume it


def test_reading_after_a_seq_returns_exactly_the_rest(client: StateClient) -> None:
    """events(after=n) holds every event after n and none before: a reconnect neither skips nor repeats."""
    sid = make_failed_run(client)
    everything = client.sessions.events(sid).events
    for n in range(len(everything) + 1):
        assert client.sessions.events(sid, after=n).events == everything[n:]


def test_a_second_writer_process_keeps_the_numbering_exact(client: StateClient, clock: FakeClock) -> None:
    """A process whose known version is stale (another process wrote in between) is refused once and
    writes again on the version the refusal shows: stamps stay unique and contiguous."""
    other = make_client(clock)
    sid = client.sessions.create().session_id
    client.executions.start(sid, "nl_input")  # `client` now knows version 2
    other.executions.complete(sid, "nl_input", output_data={})  # version 3, written by the other process
    client.executions.start(sid, "ui_selection")  # `client` still thinks 2: refused, then 4
    assert kinds(client.sessions.events(sid).events) == [
        (1, "run_opened", None),
        (2, "agent_started", "nl_input"),
        (3, "agent_completed", "nl_input"),
        (4, "agent_started", "ui_selection"),
    ]


async def test_no_gap_and_no_duplicate_across_a_resume_by_the_worker(
    client: StateClient, clock: FakeClock
) -> None:
    """A FAILED run claimed by the worker (its own process) and finished by a resumed pipeline (a third):
    a watcher that read up to n before the resume reads the rest after n, ending at the run's end."""
    sid = make_failed_run(client)
    first = client.sessions.events(sid)
    pipeline = make_client(clock)

    async def resume(request: ResumeRequest) -> None:
        finish_run(pipeline, request)

    clock.advance(hours=2)  # past FAST.retry_delay: the FAILED run is due
    worker = RecoveryWorker(make_client(clock), resume, FAST, clock=clock)
    assert await worker.sweep() == 1
    await worker.wait_for_inflight()
    rest = client.sessions.events(sid, after=first.seq)
    seqs = [e.seq for e in first.events + rest.events]
    assert seqs == list(range(1, rest.seq + 1))
    assert first.events + rest.events == client.sessions.events(sid).events
    names = [e.kind for e in rest.events]
    assert names[0] == "claimed"
    assert "agent_retried" in names
    assert rest.ended
    assert rest.events[-1].run_status == "COMPLETED"
    assert rest.events[-1].agent == AGENTS[-1]


def test_events_of_an_unknown_run_and_a_bad_position_are_refused(client: StateClient) -> None:
    """An unknown id or ref is SessionNotFoundError; a negative or non-integer position a ValidationError."""
    with pytest.raises(SessionNotFoundError):
        client.sessions.events("project_missing")
    sid = client.sessions.create().session_id
    with pytest.raises(ValidationError, match="after"):
        client.sessions.events(sid, after=-1)


def test_a_run_stored_before_the_event_log_labels_its_new_transitions_right(client: StateClient) -> None:
    """A run in flight at the upgrade (history without log entries): its later transitions keep their own
    kinds at their own seqs, and only the older seqs are bare `transition`s."""
    sid = client.sessions.create().session_id
    client.executions.start(sid, "nl_input")
    client.executions.complete(sid, "nl_input", output_data={})
    tables = client.layer.tables
    dynamo = client.layer.dynamodb  # the history as the code before the event log stored it
    dynamo.update_item(
        TableName=tables.sessions, Key={"session_id": {"S": sid}}, UpdateExpression="REMOVE run_log"
    )
    for item in dynamo.query(
        TableName=tables.executions,
        KeyConditionExpression="execution_id = :id",
        ExpressionAttributeValues={":id": {"S": sid}},
    )["Items"]:
        key = {"execution_id": item["execution_id"], "agent_name": item["agent_name"]}
        dynamo.update_item(TableName=tables.executions, Key=key, UpdateExpression="REMOVE ev")
    client.sessions.record_verdict(sid, success=False, reason="gave up after the upgrade")
    assert kinds(client.sessions.events(sid).events) == [
        (1, "run_opened", None),
        (2, "transition", None),
        (3, "transition", None),
        (4, "run_finished", None),
    ]


def test_an_agent_step_that_another_writer_always_overtakes_gives_up_with_a_conflict(
    client: StateClient, clock: FakeClock
) -> None:
    """Written again on each moved version, but not for ever: a run another process moves before every
    attempt ends the step with ConflictError (a recorded outcome), not an endless loop of transactions."""
    other = make_client(clock)
    sid = client.sessions.create().session_id
    attempts = 0

    def overtake(**_: Any) -> None:  # the other process writes the run just before each attempt lands
        nonlocal attempts
        attempts += 1
        if attempts <= 200:  # a bound for the test only: without the writer's, the step lands after it
            other.sessions.update(sid, metadata={"n": attempts})

    events = client.layer.dynamodb.meta.events
    events.register("before-call.dynamodb.TransactWriteItems", overtake)
    try:
        with pytest.raises(ConflictError):
            client.executions.start(sid, "nl_input")
    finally:
        events.unregister("before-call.dynamodb.TransactWriteItems", overtake)
    assert attempts < 200
    assert "agent_started" not in [e.kind for e in client.sessions.events(sid).events]  # nothing written
