"""Agent executions: transitions move the agent and its session together, in order, exactly once."""

from __future__ import annotations

import pytest

from tdev_state import (
    AGENTS,
    AgentStatus,
    ConflictError,
    ExecutionNotFoundError,
    InvalidTransitionError,
    SessionNotFoundError,
    SessionStatus,
    StateClient,
    ValidationError,
)


def _session(client: StateClient) -> str:
    return client.sessions.create(user_id="u", project_name="p").session_id


def test_full_run_completes_the_session(client: StateClient) -> None:
    """Nine start/complete pairs leave every agent COMPLETED, progress 9 and the session COMPLETED."""
    sid = _session(client)
    for i, agent in enumerate(AGENTS):
        client.executions.start(sid, agent, input_data={"step": i}, project_id="proj")
        done = client.executions.complete(sid, agent, output_data={"out": i})
        assert done.progress == i + 1
    session = client.sessions.get(sid)
    assert (session.status, session.progress, session.version) == (SessionStatus.COMPLETED, 9, 19)
    run = client.executions.list(sid)
    assert [e.agent_name for e in run] == list(AGENTS)
    assert all(e.status is AgentStatus.COMPLETED for e in run)
    assert run[3].input_data == {"step": 3}
    assert run[3].output_data == {"out": 3}


def test_completed_session_leaves_recovery_index(client: StateClient) -> None:
    """Once COMPLETED the session no longer carries the sparse index attribute."""
    from datetime import timedelta

    sid = _session(client)
    for agent in AGENTS:
        client.executions.start(sid, agent)
        client.executions.complete(sid, agent)
    found = client.sessions.recovery_candidates(failed_idle=timedelta(0), stalled_idle=timedelta(0))
    assert sid not in {c.session_id for c in found}


def test_agents_run_in_order(client: StateClient) -> None:
    """Starting an agent before its predecessor completed is an InvalidTransitionError naming the next."""
    sid = _session(client)
    with pytest.raises(InvalidTransitionError, match="next one is nl_input"):
        client.executions.start(sid, "parser")
    assert client.executions.list(sid) == []


def test_complete_needs_running(client: StateClient) -> None:
    """Completing an agent that never started is refused and writes nothing."""
    sid = _session(client)
    with pytest.raises(InvalidTransitionError, match="never started"):
        client.executions.complete(sid, "nl_input", output_data={})
    assert client.sessions.get(sid).version == 1


def test_repeated_complete_is_a_duplicate_not_a_second_transition(client: StateClient) -> None:
    """The same complete sent twice returns duplicate=True and advances the session once."""
    sid = _session(client)
    client.executions.start(sid, "nl_input", input_data="hi")
    first = client.executions.complete(sid, "nl_input", output_data={"a": 1})
    again = client.executions.complete(sid, "nl_input", output_data={"a": 1})
    assert not first.duplicate
    assert again.duplicate
    assert client.sessions.get(sid).version == 3  # create, start, complete


def test_a_different_second_complete_is_a_conflict(client: StateClient) -> None:
    """Another writer's complete of the same agent (other output) loses with ConflictError."""
    sid = _session(client)
    client.executions.start(sid, "nl_input")
    client.executions.complete(sid, "nl_input", output_data="mine")
    with pytest.raises(ConflictError, match="another writer"):
        client.executions.complete(sid, "nl_input", output_data="theirs")
    assert client.executions.get(sid, "nl_input").output_data == "mine"


def test_fail_then_retry_counts_attempts(client: StateClient) -> None:
    """fail marks agent and session FAILED; retry makes both run again with retry_count + 1."""
    sid = _session(client)
    client.executions.start(sid, "nl_input")
    failed = client.executions.fail(sid, "nl_input", error_message="model timeout")
    assert failed.session_status is SessionStatus.FAILED
    session = client.sessions.get(sid)
    assert session.status is SessionStatus.FAILED
    assert session.error_message == "nl_input: model timeout"
    with pytest.raises(InvalidTransitionError, match="retry_agent"):
        client.executions.start(sid, "ui_selection")
    for attempt in (1, 2):
        client.executions.retry(sid, "nl_input")
        assert client.executions.get(sid, "nl_input").retry_count == attempt
        if attempt == 1:
            client.executions.fail(sid, "nl_input", error_message="model timeout")
    assert client.sessions.get(sid).status is SessionStatus.ACTIVE
    client.executions.complete(sid, "nl_input", output_data=1)
    assert client.executions.get(sid, "nl_input").error_message is None


def test_transition_on_missing_session(client: StateClient) -> None:
    """Agents of a session that does not exist raise SessionNotFoundError explaining execution_id."""
    with pytest.raises(SessionNotFoundError, match="execution_id is the"):
        client.executions.start("proj-1-nl_input", "nl_input")


def test_bad_agent_and_missing_execution(client: StateClient) -> None:
    """An unknown agent is a ValidationError listing the agents; an unstarted one is not found."""
    sid = _session(client)
    with pytest.raises(ValidationError, match="nl_input, ui_selection"):
        client.executions.start(sid, "coder")
    with pytest.raises(ExecutionNotFoundError):
        client.executions.get(sid, "parser")


def test_long_error_messages_are_cut_with_a_marker(client: StateClient) -> None:
    """A traceback longer than 4000 characters is kept up to the limit and marked, never refused."""
    sid = _session(client)
    client.executions.start(sid, "nl_input")
    client.executions.fail(sid, "nl_input", error_message="x" * 10_000)
    stored = client.executions.get(sid, "nl_input").error_message or ""
    assert stored.startswith("x" * 4000)
    assert stored.endswith("[6000 more characters cut]")
