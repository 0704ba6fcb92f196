"""When a run may be taken over: per-agent windows, heartbeats, the resume cool-down, clock skew, and what a
resume request carries — one rule for the worker and resume_pipeline (tdev_state.RecoveryPolicy)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tdev_recovery import RecoveryWorker, ResumeRequest, RetryPolicy, WorkerConfig, resume_pipeline
from tdev_recovery.exceptions import LiveRunError, NotRecoverableError
from tdev_recovery.testing import RecordingResumer
from tdev_state import AGENTS, LivenessObserver, RecoveryPolicy, SessionStatus, StateClient
from tdev_state.testing import FakeClock

#: The production rule (each run's own window), deciding in one sweep (confirm=0) unless a test watches.
PER_AGENT = WorkerConfig(
    worker_id="w1",
    poll_interval=0.05,
    retry_delay=timedelta(seconds=1),
    confirm=timedelta(0),
    lease=timedelta(seconds=30),
    retry=RetryPolicy(initial_interval=timedelta(milliseconds=1), maximum_attempts=3),
    grace_period=1.0,
)


class Monotonic:
    """The claimer's own monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value


def run_up_to(client: StateClient, agents: int, *, start_next: bool, next_input: object = None) -> str:
    sid = client.sessions.create(project_name="p").session_id
    for agent in AGENTS[:agents]:
        client.executions.start(sid, agent, input_data={"in": agent})
        client.executions.complete(sid, agent, output_data={"out": agent})
    if start_next:
        client.executions.start(sid, AGENTS[agents], input_data=next_input)
    return sid


async def sweep(worker: RecoveryWorker) -> int:
    started = await worker.sweep()
    await worker.wait_for_inflight()
    return started


async def test_resume_request_carries_the_request_and_the_next_input_as_stored(
    client: StateClient, clock: FakeClock
) -> None:
    """The resumed agent gets the live run's pipeline_data: the request's project_type, not an output's."""
    sid = client.sessions.create(project_name="shop").session_id
    request = {"user_input": "a shop", "project_type": "react", "features": ["cart"]}
    client.executions.start(sid, "nl_input", input_data=request)
    # nl_input's output says web_app; the live orchestrator did not promote it (its output was an object).
    client.executions.complete(sid, "nl_input", output_data={"project_type": "web_app"})
    pipeline_data = {**request, "nl_input_result": {"project_type": "web_app"}}
    client.executions.start(sid, "ui_selection", input_data=pipeline_data)
    clock.advance(minutes=5)
    resumer = RecordingResumer()
    assert await sweep(RecoveryWorker(client, resumer, PER_AGENT, clock=clock)) == 1
    (sent,) = resumer.requests
    assert sent.request == request
    assert sent.next_input == pipeline_data
    assert sent.next_input["project_type"] == "react"
    assert sent.worker_id == "w1"


async def test_next_input_is_none_when_the_next_agent_never_started(
    client: StateClient, clock: FakeClock
) -> None:
    """A run that stopped between agents has no stored input for the next one: None, never a guess."""
    run_up_to(client, 2, start_next=False)
    clock.advance(minutes=5)
    resumer = RecordingResumer()
    assert await sweep(RecoveryWorker(client, resumer, PER_AGENT, clock=clock)) == 1
    assert resumer.requests[0].next_agent == "parser"
    assert resumer.requests[0].next_input is None
    assert resumer.requests[0].request == {"in": "nl_input"}


async def test_worker_leaves_generation_alone_inside_its_legal_two_attempts(
    client: StateClient, clock: FakeClock
) -> None:
    """Generation may run 2 x 300 s (+ grace): silent 10.5 min it is live; past 11 min it is stalled."""
    run_up_to(client, 6, start_next=True)
    worker = RecoveryWorker(client, RecordingResumer(), PER_AGENT, clock=clock)
    clock.advance(minutes=10, seconds=30)
    assert await sweep(worker) == 0
    clock.advance(minutes=1)
    assert await sweep(worker) == 1


async def test_dead_pipeline_in_a_short_agent_is_found_after_its_own_deadline(
    client: StateClient, clock: FakeClock
) -> None:
    """A run dead in ui_selection (window 150 s) is found after 150 s, not after a global 10 min."""
    run_up_to(client, 1, start_next=True)
    worker = RecoveryWorker(client, RecordingResumer(), PER_AGENT, clock=clock)
    clock.advance(seconds=140)
    assert await sweep(worker) == 0
    clock.advance(seconds=20)
    assert await sweep(worker) == 1


async def test_heartbeating_run_is_stalled_once_its_last_beat_is_older_than_the_timeout(
    client: StateClient, clock: FakeClock
) -> None:
    """Heartbeats keep a long agent live; once they stop, the heartbeat timeout (90 s) decides."""
    sid = run_up_to(client, 6, start_next=True)
    worker = RecoveryWorker(client, RecordingResumer(), PER_AGENT, clock=clock)
    for _ in range(30):  # 15 min of generation, beating every 30 s
        clock.advance(seconds=30)
        client.sessions.heartbeat(sid)
        assert await sweep(worker) == 0
    clock.advance(seconds=85)
    assert await sweep(worker) == 0
    clock.advance(seconds=10)
    assert await sweep(worker) == 1


async def test_resume_pipeline_refuses_a_live_run_unless_forced(
    client: StateClient, clock: FakeClock
) -> None:
    """An ACTIVE run inside its agent's deadline is refused (nothing written); force=True takes it."""
    sid = run_up_to(client, 6, start_next=True)
    clock.advance(minutes=5)
    resumer = RecordingResumer()
    with pytest.raises(LiveRunError, match="live"):
        await resume_pipeline(sid, resumer=resumer, client=client)
    assert client.sessions.recovery_history(sid).fencing_token == 0
    assert resumer.requests == []
    result = await resume_pipeline(sid, resumer=resumer, client=client, force=True)
    assert result["outcome"] == "resumed"


async def test_failed_run_whose_pipeline_may_still_retry_is_live(
    client: StateClient, clock: FakeClock
) -> None:
    """A critical agent's failed attempt leaves the run FAILED, but its in-process retry is still legal."""
    sid = run_up_to(client, 6, start_next=True)
    client.executions.fail(sid, "generation", error_message="attempt 1 timed out")
    clock.advance(minutes=2)
    with pytest.raises(LiveRunError):
        await resume_pipeline(sid, resumer=RecordingResumer(), client=client)
    worker = RecoveryWorker(client, RecordingResumer(), PER_AGENT, clock=clock)
    assert await sweep(worker) == 0
    clock.advance(minutes=10)
    assert await sweep(worker) == 1


async def test_a_second_resume_within_the_cooldown_is_refused(client: StateClient, clock: FakeClock) -> None:
    """A double click resumes once: the hand-over leaves the run to its pipeline for the cool-down."""
    sid = run_up_to(client, 3, start_next=False)
    clock.advance(minutes=10)
    resumer = RecordingResumer()
    first = await resume_pipeline(sid, resumer=resumer, client=client)
    assert first["fencing_token"] == 1
    with pytest.raises(LiveRunError, match="cool-down"):
        await resume_pipeline(sid, resumer=resumer, client=client)
    worker = RecoveryWorker(client, resumer, PER_AGENT, clock=clock)
    assert await sweep(worker) == 0
    assert len(resumer.requests) == 1
    assert client.sessions.recovery_history(sid).fencing_token == 1
    clock.advance(seconds=RecoveryPolicy().cooldown.total_seconds() + 1)  # the pipeline never wrote
    again = await resume_pipeline(sid, resumer=resumer, client=client)
    assert again["fencing_token"] == 2


async def test_a_resumer_that_runs_the_run_to_its_end_is_recorded_as_a_resume(
    client: StateClient, clock: FakeClock
) -> None:
    """The run is COMPLETED (lease removed) when the resumer returns: a resume, counted, not a lost claim."""
    sid = run_up_to(client, 4, start_next=False)
    clock.advance(minutes=10)

    async def run_the_rest(request: ResumeRequest) -> None:
        for agent in AGENTS[AGENTS.index(request.next_agent) :]:
            client.executions.start(sid, agent)
            client.executions.complete(sid, agent, output_data={"out": agent})

    result = await resume_pipeline(sid, resumer=run_the_rest, client=client)
    assert result["outcome"] == "resumed"
    history = client.sessions.recovery_history(sid)
    assert history.status is SessionStatus.COMPLETED
    assert history.resume_count == 1
    assert [e.kind for e in history.events] == ["claimed", "resumed"]


def test_extending_the_lease_of_a_run_that_ended_under_the_claim_is_not_a_loss(
    client: StateClient, clock: FakeClock
) -> None:
    """The lease heartbeat finds the run COMPLETED under its own token: the claim ended, nothing lost."""
    sid = run_up_to(client, 8, start_next=False)
    clock.advance(minutes=10)
    claim = client.claims.claim(client.sessions.candidate(sid), worker_id="w1", lease=timedelta(seconds=30))
    assert claim is not None
    client.executions.complete(sid, "download")
    extended = client.claims.extend(claim, lease=timedelta(seconds=30))
    assert extended.ended


async def test_a_pipeline_host_with_a_clock_an_hour_behind_keeps_its_heartbeating_run(
    client: StateClient, clock: FakeClock
) -> None:
    """Its stamps look an hour old, but the worker sees the run change on its own clock: never taken;
    once the beats stop, it is taken after the confirmation window."""
    behind = FakeClock()
    behind.now = clock.now - timedelta(hours=1)
    pipeline = StateClient(client.config, clock=behind, session=client.layer.session)
    sid = run_up_to(pipeline, 6, start_next=True)
    own = Monotonic()
    config = WorkerConfig(**{**PER_AGENT.__dict__, "confirm": timedelta(seconds=45)})
    worker = RecoveryWorker(client, RecordingResumer(), config, clock=clock, observer=LivenessObserver(own))
    for _ in range(40):  # 20 minutes of beats every 30 s, the worker sweeping between them
        for moving in (clock, behind):
            moving.advance(seconds=30)
        own.value += 30
        pipeline.sessions.heartbeat(sid)
        assert await sweep(worker) == 0
    assert client.sessions.recovery_history(sid).fencing_token == 0
    for _ in range(3):  # the pipeline dies: 30 s, 60 s, 90 s of unchanged signature on the worker's clock
        clock.advance(seconds=30)
        own.value += 30
        await sweep(worker)
    assert client.sessions.recovery_history(sid).fencing_token == 1
    assert client.sessions.get(sid).resume_count == 1


async def test_resume_pipeline_with_an_observer_confirms_on_its_own_clock(
    client: StateClient, clock: FakeClock
) -> None:
    """Given a long-lived observer, a one-shot resume waits for the confirmation window like the worker."""
    sid = run_up_to(client, 3, start_next=False)
    clock.advance(minutes=10)
    own = Monotonic()
    observer = LivenessObserver(own)
    config = WorkerConfig(worker_id="console-1", confirm=timedelta(seconds=45))
    with pytest.raises(LiveRunError, match="45 s more"):
        await resume_pipeline(
            sid, resumer=RecordingResumer(), client=client, config=config, observer=observer
        )
    assert client.sessions.recovery_history(sid).fencing_token == 0
    own.value += 46
    result = await resume_pipeline(
        sid, resumer=RecordingResumer(), client=client, config=config, observer=observer
    )
    assert result["outcome"] == "resumed"


async def test_force_never_overrides_a_live_workers_lease(client: StateClient, clock: FakeClock) -> None:
    """force=True takes a run live by its window, never one a worker holds: fencing stays one owner."""
    sid = run_up_to(client, 3, start_next=False)
    clock.advance(minutes=10)
    held = client.claims.claim(client.sessions.candidate(sid), worker_id="w9", lease=timedelta(seconds=30))
    assert held is not None
    with pytest.raises(LiveRunError, match="w9 holds it"):
        await resume_pipeline(sid, resumer=RecordingResumer(), client=client)
    with pytest.raises(NotRecoverableError, match="held by another worker"):
        await resume_pipeline(sid, resumer=RecordingResumer(), client=client, force=True)
    assert client.sessions.recovery_history(sid).fencing_token == 1


def test_a_lease_heartbeat_racing_the_hand_over_is_not_a_lost_claim(
    client: StateClient, clock: FakeClock
) -> None:
    """The worker's lease heartbeat lands just after its own hand-over: the claim ended, nothing lost."""
    sid = run_up_to(client, 3, start_next=False)
    clock.advance(minutes=10)
    claim = client.claims.claim(client.sessions.candidate(sid), worker_id="w1", lease=timedelta(seconds=30))
    assert claim is not None
    client.claims.handed_over(claim)
    assert client.claims.extend(claim, lease=timedelta(seconds=30)).ended
    client.claims.handed_over(claim)  # a retried hand-over counts once
    assert client.sessions.get(sid).resume_count == 1
