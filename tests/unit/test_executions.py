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
    """A start/complete pair per agent leaves every agent COMPLETED, progress N and the session COMPLETED."""
    sid = _session(client)
    for i, agent in enumerate(AGENTS):
        client.executions.start(sid, agent, input_data={"step": i}, project_id="proj")
        done = client.executions.complete(sid, agent, output_data={"out": i})
        assert done.progress == i + 1
    session = client.sessions.get(sid)
    expected = (SessionStatus.COMPLETED, len(AGENTS), 2 * len(AGENTS) + 1)
    assert (session.status, session.progress, session.version) == expected
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


def test_complete_without_running_is_a_first_record(client: StateClient) -> None:
    """The plan records an agent only when it finishes: COMPLETED first stores what is known."""
    sid = _session(client)
    done = client.executions.complete(sid, "nl_input", output_data={"intent": "shop"})
    assert done.progress == 1
    stored = client.executions.get(sid, "nl_input")
    assert (stored.status, stored.start_time, stored.output_data) == ("COMPLETED", None, {"intent": "shop"})
    assert stored.end_time is not None


def test_completing_out_of_order_is_refused_and_writes_nothing(client: StateClient) -> None:
    """A first record of an agent that is not next is refused; neither item changes."""
    sid = _session(client)
    with pytest.raises(InvalidTransitionError, match="next one is nl_input"):
        client.executions.complete(sid, "parser", output_data={})
    assert client.sessions.get(sid).version == 1
    assert client.executions.list(sid) == []


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


def _through(client: StateClient, sid: str, last: str) -> None:
    for agent in AGENTS[: AGENTS.index(last)]:
        client.executions.start(sid, agent)
        client.executions.complete(sid, agent, output_data={agent: 1})


def test_a_critical_failure_fails_the_run_and_a_retry_reactivates_it(client: StateClient) -> None:
    """generation failing marks the session FAILED; retry runs it again (retry_count + 1, last_error kept)."""
    sid = _session(client)
    _through(client, sid, "generation")
    client.executions.start(sid, "generation")
    failed = client.executions.fail(sid, "generation", error_message="model timeout")
    assert (failed.session_status, failed.tolerated) == (SessionStatus.FAILED, False)
    session = client.sessions.get(sid)
    assert (session.status, session.progress) == (SessionStatus.FAILED, 6)
    assert session.error_message == "generation: model timeout"
    with pytest.raises(InvalidTransitionError, match="is FAILED, not ACTIVE"):
        client.executions.start(sid, "assembly")
    for attempt in (1, 2):
        client.executions.retry(sid, "generation")
        assert client.executions.get(sid, "generation").retry_count == attempt
        if attempt == 1:
            client.executions.fail(sid, "generation", error_message="model timeout")
    assert client.sessions.get(sid).status is SessionStatus.ACTIVE
    client.executions.complete(sid, "generation", output_data=1)
    stored = client.executions.get(sid, "generation")
    assert (stored.error_message, stored.last_error) == (None, "model timeout")


def test_a_non_critical_failure_is_tolerated_and_the_run_goes_on(client: StateClient) -> None:
    """search failing: the session stays ACTIVE; when the pipeline starts generation, search is moved past
    (listed as a tolerated failure) and can no longer be retried."""
    sid = _session(client)
    _through(client, sid, "search")
    client.executions.start(sid, "search")
    failed = client.executions.fail(sid, "search", error_message="index down")
    assert (failed.session_status, failed.tolerated, failed.progress) == (SessionStatus.ACTIVE, True, 5)
    assert client.sessions.get(sid).failed_agents == ()  # an attempt failed; a retry may follow
    assert client.executions.start(sid, "generation").progress == 6
    assert client.sessions.get(sid).failed_agents == ("search",)
    with pytest.raises(InvalidTransitionError, match="moved on to generation"):
        client.executions.retry(sid, "search")
    for agent in AGENTS[6:]:
        if agent != "generation":
            client.executions.start(sid, agent)
        client.executions.complete(sid, agent, output_data=agent)
    session = client.sessions.get(sid)
    assert (session.status, session.failed_agents) == (SessionStatus.COMPLETED, ("search",))


def test_the_run_cannot_move_past_a_running_agent(client: StateClient) -> None:
    """Skipping an agent that is still RUNNING (or never failed) is refused: only failures are moved past."""
    sid = _session(client)
    client.executions.start(sid, "nl_input")
    with pytest.raises(InvalidTransitionError, match="the agent before it, nl_input, is RUNNING"):
        client.executions.start(sid, "ui_selection")
    client.executions.complete(sid, "nl_input")
    client.executions.start(sid, "ui_selection")
    with pytest.raises(InvalidTransitionError):
        client.executions.complete(sid, "parser")
    assert client.sessions.get(sid).progress == 1


def test_the_last_agent_failing_can_be_retried_then_the_pipeline_ends_the_run(client: StateClient) -> None:
    """download failing does not end the run (an in-process retry follows); when it fails for good, the
    pipeline declares the run COMPLETED and download becomes a tolerated failure."""
    sid = _session(client)
    _through(client, sid, "download")
    client.executions.start(sid, "download")
    client.executions.fail(sid, "download", error_message="zip failed")
    client.executions.retry(sid, "download")
    client.executions.fail(sid, "download", error_message="zip failed again")
    assert client.sessions.get(sid).status is SessionStatus.ACTIVE
    done = client.sessions.update(sid, status="COMPLETED")
    expected = (SessionStatus.COMPLETED, len(AGENTS), ("download",))
    assert (done.status, done.progress, done.failed_agents) == expected


def test_too_many_tolerated_failures_end_the_run_failed(client: StateClient) -> None:
    """Three non-critical agents failing for good: the last agent ends the run FAILED (policy: < 3)."""
    sid = _session(client)
    for agent in AGENTS:
        if agent in ("ui_selection", "match_rate", "search"):
            result = client.executions.fail(sid, agent, error_message="no")
        else:
            result = client.executions.complete(sid, agent, output_data=agent)
    assert result.session_status is SessionStatus.FAILED
    session = client.sessions.get(sid)
    assert session.failed_agents == ("ui_selection", "match_rate", "search")
    assert "allows 2 failed agent(s)" in (session.error_message or "")
    with pytest.raises(InvalidTransitionError, match="from FAILED to COMPLETED"):
        client.sessions.update(sid, status="COMPLETED")


def test_a_failed_non_critical_agent_retried_at_once_completes(client: StateClient) -> None:
    """The orchestrator's in-process retry: fail, retry, complete — nothing is listed as tolerated."""
    sid = _session(client)
    client.executions.start(sid, "nl_input")
    client.executions.fail(sid, "nl_input", error_message="flaky")
    client.executions.retry(sid, "nl_input")
    client.executions.complete(sid, "nl_input", output_data="ok")
    session = client.sessions.get(sid)
    assert (session.failed_agents, session.progress) == ((), 1)


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
