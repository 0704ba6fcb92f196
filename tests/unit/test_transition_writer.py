"""One writer of the run lifecycle: every session and agent write goes through `TransitionWriter.apply`,
and one RecoveryPolicy decides "stalled" for every caller."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from tdev_state import AGENTS, RecoveryCandidate, RecoveryPolicy, SessionStatus, StateClient
from tdev_state.runs.writer import TransitionWriter

from .conftest import FakeClock

pytestmark = pytest.mark.unit


@pytest.fixture
def writes(client: StateClient, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Each DynamoDB write the client makes, and whether the one writer was applying a transition then."""
    seen: list[tuple[str, bool]] = []
    depth = [0]
    apply = TransitionWriter.apply

    def applying(self: TransitionWriter, transition: Any) -> Any:
        depth[0] += 1
        try:
            return apply(self, transition)
        finally:
            depth[0] -= 1

    def recorded(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def record(*args: Any, **kwargs: Any) -> Any:
            seen.append((name, depth[0] > 0))
            return call(*args, **kwargs)

        return record

    monkeypatch.setattr(TransitionWriter, "apply", applying)
    layer = client.layer
    for name in ("put", "update", "transact_write"):
        monkeypatch.setattr(layer, name, recorded(name, getattr(layer, name)))
    return seen


def test_every_session_and_agent_write_goes_through_the_one_writer(
    client: StateClient, writes: list[tuple[str, bool]]
) -> None:
    """create, agent transitions, heartbeat, update, verdict and the claims' writes are all applied by it."""
    sid = client.sessions.create(project_name="one-writer").session_id
    client.executions.start(sid, AGENTS[0], input_data={"q": 1})
    client.sessions.heartbeat(sid)
    client.executions.fail(sid, AGENTS[0], error_message="boom")
    client.executions.retry(sid, AGENTS[0])
    client.executions.complete(sid, AGENTS[0], output_data={"a": 1})
    client.sessions.update(sid, metadata={"note": "x"})
    candidate = client.sessions.candidate(sid)
    claim = client.claims.claim(candidate, worker_id="w1", lease=timedelta(seconds=30))
    assert claim is not None
    claim = client.claims.extend(claim, lease=timedelta(seconds=30))
    client.claims.next_attempt(claim, error="pipeline down")
    client.claims.release(claim)
    client.sessions.record_verdict(sid, success=False, reason="the orchestrator gave up")
    assert len(writes) >= 11
    outside = [name for name, inside in writes if not inside]
    assert outside == [], f"written around the writer: {outside}"


def _candidate(status: SessionStatus, clock: FakeClock, *, live_for: float) -> RecoveryCandidate:
    return RecoveryCandidate(
        session_id="s1",
        status=status,
        last_updated=clock(),
        progress=1,
        current_agent=AGENTS[1],
        version=3,
        live_for=live_for,
    )


@pytest.mark.parametrize("seconds", [0, 59, 60, 61, 600])
def test_stalled_is_the_policys_claimable_for_an_active_run(clock: FakeClock, seconds: int) -> None:
    """An ACTIVE run is stalled exactly when the policy would let a non-watching claimer take it."""
    policy = RecoveryPolicy()
    run = _candidate(SessionStatus.ACTIVE, clock, live_for=60)
    now = clock() + timedelta(seconds=seconds)
    assert policy.stalled(run, now=now) is policy.judge(run, now=now).claimable
    assert policy.due_at(run) == run.last_updated + timedelta(seconds=60)


def test_a_failed_run_is_never_stalled_but_may_be_eligible(clock: FakeClock) -> None:
    """FAILED is failed, not stalled (the console's badge); eligibility is judge's, after its window."""
    policy = RecoveryPolicy()
    run = _candidate(SessionStatus.FAILED, clock, live_for=60)
    later = clock() + timedelta(seconds=61)
    assert not policy.stalled(run, now=later)
    assert policy.judge(run, now=later).claimable


def test_the_index_cutoff_finds_every_run_the_policy_lists(clock: FakeClock) -> None:
    """A run listed at `now` has its stored index key before the cutoff the sweep queries with."""
    policy = RecoveryPolicy(stall_threshold=timedelta(minutes=5))
    run = _candidate(SessionStatus.ACTIVE, clock, live_for=600)  # within the longest declared window
    now = clock() + timedelta(minutes=6)
    assert policy.listed(run, now=now, idle=timedelta(0), live=False)
    stored_key = run.last_updated + timedelta(seconds=run.live_for or 0)  # what its writer declared
    assert stored_key < policy.index_cutoff(now, timedelta(0))
