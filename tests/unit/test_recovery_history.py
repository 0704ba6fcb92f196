"""Each claim write records its step on the run (recovery_log), in the same conditional write; a claim
names the token it makes, so it must see the current one; payload locations are described unread."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tdev_recovery.exceptions import NotRecoverableError
from tdev_recovery.plan import abandon_pipeline
from tdev_state import AGENTS, SessionNotFoundError, SessionStatus, StateClient, ValidationError
from tdev_state.runs.claims import HISTORY_DETAIL_CHARS
from tdev_state.testing import FakeClock, generated_project

from ..console_runs import make_failed_run

pytestmark = pytest.mark.unit

LEASE = timedelta(seconds=30)


def test_each_claim_step_is_recorded_in_order(client: StateClient, clock: FakeClock) -> None:
    sid = make_failed_run(client)
    claims = client.claims
    first = claims.claim(client.sessions.candidate(sid), worker_id="w1", lease=LEASE)
    assert first is not None
    first = claims.next_attempt(first, error="E" * 1000)
    claims.release(first)
    second = claims.claim(client.sessions.candidate(sid), worker_id="w2", lease=LEASE)
    assert second is not None
    claims.handed_over(second)
    history = client.sessions.recovery_history(sid)
    steps = [(e.kind, e.fencing_token, e.worker_id, e.attempt) for e in history.events]
    assert steps == [
        ("claimed", 1, "w1", None),
        ("attempt_failed", 1, "w1", 1),
        ("released", 1, "w1", 2),
        ("claimed", 2, "w2", None),
        ("resumed", 2, "w2", 3),
    ]
    assert history.events[1].detail == "E" * HISTORY_DETAIL_CHARS
    assert history.fencing_token == 2
    assert history.resume_count == 1
    assert history.resume_attempts == 0
    assert history.lease_owner is None
    assert [e.at for e in history.events] == sorted(e.at for e in history.events)


def test_a_claim_from_a_stale_sweep_is_refused(client: StateClient, clock: FakeClock) -> None:
    """Someone claimed and released in between (the run's last_updated did not move): the old candidate
    names a token that is no longer current, so its claim fails instead of recording a wrong token."""
    sid = make_failed_run(client)
    stale = client.sessions.candidate(sid)
    taken = client.claims.claim(stale, worker_id="w1", lease=LEASE)
    assert taken is not None
    client.claims.release(taken)
    assert client.claims.claim(stale, worker_id="w2", lease=LEASE) is None
    fresh = client.claims.claim(client.sessions.candidate(sid), worker_id="w2", lease=LEASE)
    assert fresh is not None
    assert fresh.fencing_token == 2


async def test_abandon_pipeline_claims_then_abandons(client: StateClient, clock: FakeClock) -> None:
    sid = make_failed_run(client)
    clock.advance(minutes=12)  # past the failed agent's window: its pipeline is done with the run
    with pytest.raises(ValidationError):
        await abandon_pipeline(sid, reason="   ", client=client)
    assert client.sessions.recovery_history(sid).fencing_token == 0  # refused before any claim
    result = await abandon_pipeline(sid, reason="duplicate request", client=client)
    assert result == {"session_id": sid, "outcome": "abandoned", "fencing_token": 1}
    history = client.sessions.recovery_history(sid)
    assert history.status is SessionStatus.ABANDONED
    assert [(e.kind, e.detail) for e in history.events] == [
        ("claimed", None),
        ("abandoned", "duplicate request"),
    ]
    with pytest.raises(NotRecoverableError, match="ABANDONED"):
        await abandon_pipeline(sid, reason="again", client=client)


def test_missing_runs_have_no_candidate_or_history(client: StateClient) -> None:
    with pytest.raises(SessionNotFoundError):
        client.sessions.candidate("nope")
    with pytest.raises(SessionNotFoundError):
        client.sessions.recovery_history("nope")


def test_payload_locations_are_described_without_reading_them(client: StateClient) -> None:
    sid = client.sessions.create(project_name="p").session_id
    client.executions.complete(sid, AGENTS[0], output_data={"small": 1}, input_data={"tiny": True})
    client.executions.complete(sid, AGENTS[1], output_data={"text": "x" * 5000})
    client.executions.complete(sid, AGENTS[2], output_data=generated_project(200_000))
    run = {e.agent_name: e for e in client.executions.list(sid, load_payloads=False)}
    assert run[AGENTS[0]].input_location == "inline"
    assert run[AGENTS[0]].output_location == "inline"
    assert run[AGENTS[1]].output_location == "inline, compressed"
    assert run[AGENTS[2]].output_location.startswith("S3 chunks s3://tdev-unit-payloads/")
    assert run[AGENTS[1]].input_location == "none"
