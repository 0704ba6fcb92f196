"""Sessions: creation without overwrite, optimistic updates, legal transitions, heartbeats, recovery index."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from tdev_state import (
    AGENTS,
    ConflictError,
    InvalidTransitionError,
    SessionExistsError,
    SessionNotFoundError,
    SessionStatus,
    StateClient,
    ValidationError,
)
from tdev_state.models import epoch
from tdev_state.testing import FakeClock


def test_create_then_get_round_trips(client: StateClient) -> None:
    """A created session reads back ACTIVE at progress 0, version 1, with its metadata."""
    created = client.sessions.create(
        user_id="u1", project_name="todo", pipeline_type="PRODUCTION", metadata={"x": 1.5}
    )
    got = client.sessions.get(created.session_id)
    assert got == created
    assert (got.status, got.progress, got.version, got.current_agent) == ("ACTIVE", 0, 1, "nl_input")
    assert got.metadata == {"x": 1.5}


def test_create_never_overwrites(client: StateClient) -> None:
    """Creating an existing session_id raises SessionExistsError and leaves the first one intact."""
    client.sessions.create(session_id="s1", user_id="u1", project_name="a")
    with pytest.raises(SessionExistsError):
        client.sessions.create(session_id="s1", user_id="u2", project_name="b")
    assert client.sessions.get("s1").user_id == "u1"


def test_get_missing_raises_not_found(client: StateClient) -> None:
    """A missing session is SessionNotFoundError, not None."""
    with pytest.raises(SessionNotFoundError, match="nope"):
        client.sessions.get("nope")


def test_update_bumps_version_and_conditions_on_it(client: StateClient) -> None:
    """An update at the read version succeeds and bumps it; a stale version is a ConflictError."""
    s = client.sessions.create(user_id="u", project_name="p")
    updated = client.sessions.update(s.session_id, expected_version=1, metadata={"k": "v"})
    assert updated.version == 2
    assert updated.metadata == {"k": "v"}
    with pytest.raises(ConflictError, match="version 2"):
        client.sessions.update(s.session_id, expected_version=1, metadata={"k": "lost"})
    assert client.sessions.get(s.session_id).metadata == {"k": "v"}


def test_illegal_status_change_is_refused(client: StateClient) -> None:
    """COMPLETED and ABANDONED are final; COMPLETED needs every agent."""
    s = client.sessions.create(user_id="u", project_name="p")
    refusal = f"cannot be COMPLETED: 0 of {len(AGENTS)} agents finished"
    with pytest.raises(InvalidTransitionError, match=refusal):
        client.sessions.update(s.session_id, expected_version=1, status="COMPLETED")
    abandoned = client.sessions.update(s.session_id, expected_version=1, status="ABANDONED")
    assert abandoned.status is SessionStatus.ABANDONED
    with pytest.raises(InvalidTransitionError, match="ABANDONED to ACTIVE"):
        client.sessions.update(s.session_id, expected_version=2, status="ACTIVE")


def test_progress_follows_the_agents_only(client: StateClient) -> None:
    """Progress the pipeline sends must agree with the agents; a contradicting one is refused, unwritten."""
    s = client.sessions.create(user_id="u", project_name="p")
    client.executions.start(s.session_id, "nl_input")
    with pytest.raises(InvalidTransitionError, match="progress follows the agents"):
        client.sessions.update(s.session_id, progress=1)
    with pytest.raises(InvalidTransitionError, match="current_agent follows"):
        client.sessions.update(s.session_id, current_agent="parser")
    assert client.executions.complete(s.session_id, "nl_input").progress == 1
    assert client.sessions.update(s.session_id, progress=1, current_agent="ui_selection").progress == 1


def test_bad_input_writes_nothing(client: StateClient) -> None:
    """Unknown status, bad type or unknown agent raise ValidationError before any write."""
    s = client.sessions.create(user_id="u", project_name="p")
    past_the_end = {"progress": len(AGENTS) + 1}
    for kwargs in ({"status": "DONE"}, {"progress": "3"}, {"current_agent": "coder"}, past_the_end):
        with pytest.raises(ValidationError):
            client.sessions.update(s.session_id, expected_version=1, **kwargs)  # type: ignore[arg-type]
    assert client.sessions.get(s.session_id).version == 1
    with pytest.raises(ValidationError, match="pipeline_type"):
        client.sessions.create(user_id="u", project_name="p", pipeline_type="HUGE")
    with pytest.raises(ValidationError, match="NaN"):
        client.sessions.create(user_id="u", project_name="p", metadata={"score": float("nan")})


def test_list_for_user_is_newest_first_and_paged(client: StateClient, clock: FakeClock) -> None:
    """A user's sessions come newest first, a page at a time, and only that user's."""
    ids = []
    for i in range(5):
        clock.advance(seconds=1)
        ids.append(client.sessions.create(user_id="alice", project_name=f"p{i}").session_id)
    client.sessions.create(user_id="bob", project_name="other")
    first = client.sessions.list_for_user("alice", limit=3)
    assert [s.session_id for s in first.items] == ids[::-1][:3]
    assert first.next_cursor
    second = client.sessions.list_for_user("alice", limit=3, cursor=first.next_cursor)
    assert [s.session_id for s in second.items] == ids[::-1][3:]
    with pytest.raises(ValidationError, match="cursor"):
        client.sessions.list_for_user("alice", cursor="garbage!")


def test_heartbeat_refreshes_last_updated_without_version(client: StateClient, clock: FakeClock) -> None:
    """A heartbeat moves last_updated but not version, so the pipeline's next update does not conflict."""
    s = client.sessions.create(user_id="u", project_name="p")
    clock.advance(minutes=5)
    beat = client.sessions.heartbeat(s.session_id)
    after = client.sessions.get(s.session_id)
    assert after.last_updated == beat
    assert after.version == 1
    client.sessions.update(s.session_id, expected_version=1, metadata={"still": "mine"})


def test_heartbeat_of_a_finished_run_is_refused(client: StateClient) -> None:
    """Only ACTIVE sessions heartbeat."""
    s = client.sessions.create(user_id="u", project_name="p")
    client.sessions.update(s.session_id, expected_version=1, status="FAILED")
    with pytest.raises(InvalidTransitionError, match="only ACTIVE"):
        client.sessions.heartbeat(s.session_id)


def test_recovery_candidates_by_age_and_kind(client: StateClient, clock: FakeClock) -> None:
    """Old FAILED and stalled ACTIVE runs are candidates; young ones and finished ones are not."""
    old_failed = client.sessions.create(user_id="u", project_name="a")
    client.sessions.update(old_failed.session_id, expected_version=1, status="FAILED")
    stalled = client.sessions.create(user_id="u", project_name="b")
    done = client.sessions.create(user_id="u", project_name="c")
    client.sessions.update(done.session_id, expected_version=1, status="ABANDONED")
    clock.advance(hours=2)
    young_failed = client.sessions.create(user_id="u", project_name="d")
    client.sessions.update(young_failed.session_id, expected_version=1, status="FAILED")
    live = client.sessions.create(user_id="u", project_name="e")
    client.sessions.heartbeat(live.session_id)

    found = client.sessions.recovery_candidates(
        failed_idle=timedelta(hours=1), stalled_idle=timedelta(minutes=10)
    )
    assert {c.session_id: c.status for c in found} == {
        old_failed.session_id: SessionStatus.FAILED,
        stalled.session_id: SessionStatus.ACTIVE,
    }
    failed = client.sessions.failed_sessions(older_than=timedelta(hours=1))
    assert [s.session_id for s in failed] == [old_failed.session_id]


def _stalled_at(client: StateClient, sid: str) -> Decimal:
    item = client.layer.get(client.config.tables.sessions, {"session_id": sid})
    assert item is not None
    return item["stalled_at"]  # type: ignore[no-any-return]


def test_liveness_stamp_is_refreshed_once_per_interval(client: StateClient, clock: FakeClock) -> None:
    """Transitions within the liveness interval leave stalled_at (and the index) alone; later ones do not."""
    sid = client.sessions.create(user_id="u", project_name="p").session_id
    stamp = _stalled_at(client, sid)
    client.executions.start(sid, "nl_input")
    client.executions.complete(sid, "nl_input")
    assert _stalled_at(client, sid) == stamp
    clock.advance(seconds=61)
    client.executions.start(sid, "ui_selection")
    assert _stalled_at(client, sid) > stamp
    session = client.sessions.get(sid)
    window = client.config.run_policy.silence_seconds("ui_selection")
    assert _stalled_at(client, sid) == epoch(session.last_updated + timedelta(seconds=window))


def test_a_progressing_run_is_never_reported_stalled(client: StateClient, clock: FakeClock) -> None:
    """A run that keeps completing agents (no heartbeats) stays out of the stalled candidates."""
    sid = client.sessions.create(user_id="u", project_name="p").session_id
    for agent in ("nl_input", "ui_selection", "parser"):
        clock.advance(minutes=4)
        client.executions.start(sid, agent)
        clock.advance(minutes=4)
        client.executions.complete(sid, agent)
    found = client.sessions.recovery_candidates(failed_idle=None, stalled_idle=timedelta(minutes=5))
    assert sid not in {c.session_id for c in found}
    clock.advance(minutes=6)
    found = client.sessions.recovery_candidates(failed_idle=None, stalled_idle=timedelta(minutes=5))
    assert [c.session_id for c in found] == [sid]
    assert (found[0].progress, found[0].current_agent) == (3, "component_decision")


def test_listings_can_skip_offloaded_metadata(client: StateClient) -> None:
    """A listing that does not show metadata reads no S3 object for it; get() still reads it."""
    from tdev_state.testing import generated_project

    big = generated_project(60_000)
    sid = client.sessions.create(user_id="lister", metadata=big).session_id
    reader = StateClient(client.config)
    (listed,) = reader.sessions.list_for_user("lister", load_metadata=False).items
    assert listed.metadata is None
    assert listed.metadata_error is not None
    assert "not loaded" in listed.metadata_error
    assert reader.layer.meter.snapshot()["s3_gets"] == 0
    assert reader.sessions.get(sid).metadata == big
    (loaded,) = reader.sessions.list_for_user("lister").items
    assert loaded.metadata == big
