"""Property: no sequence of agent calls reaches an illegal state (hypothesis state machine on moto)."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tdev_state import (
    AGENTS,
    AgentStatus,
    SessionStatus,
    StateClient,
    StateConfig,
    StateError,
)

from .conftest import moto_aws

agents = st.sampled_from(AGENTS)


class AgentRun(RuleBasedStateMachine):
    """Random start/complete/fail/retry calls against one session, compared with a model after each."""

    def __init__(self) -> None:
        super().__init__()
        self.client = _CLIENT
        self.sid = self.client.sessions.create(user_id="u", project_name="p").session_id
        self.progress = 0
        self.agent_status: dict[str, AgentStatus] = {}
        self.session_status = SessionStatus.ACTIVE
        self.versions = [1]
        self.last_call: dict[str, str] = {}

    def _apply(self, call: str, agent: str, ok: bool, after: AgentStatus) -> bool:
        """Make the call; return True if it changed state. A repeat of the call that put the agent in
        its current state (same payload) is the designed duplicate: success, nothing changes."""
        method = getattr(self.client.executions, call)
        kwargs = {"error_message": "x"} if call == "fail" else {}
        repeat = (
            call != "retry" and self.last_call.get(agent) == call and self.agent_status.get(agent) is after
        )
        if repeat:
            assert method(self.sid, agent, **kwargs).duplicate
            return False
        if ok:
            assert not method(self.sid, agent, **kwargs).duplicate
            self.agent_status[agent] = after
            self.last_call[agent] = call
            return True
        with pytest.raises(StateError):
            method(self.sid, agent, **kwargs)
        return False

    @rule(agent=agents)
    def start(self, agent: str) -> None:
        legal = (
            self.session_status is SessionStatus.ACTIVE and agent == AGENTS[self.progress]
            if self.progress < 9
            else False
        ) and agent not in self.agent_status
        self._apply("start", agent, bool(legal), AgentStatus.RUNNING)

    @rule(agent=agents)
    def complete(self, agent: str) -> None:
        legal = (
            self.agent_status.get(agent) is AgentStatus.RUNNING
            and self.session_status is SessionStatus.ACTIVE
        )
        if self._apply("complete", agent, legal, AgentStatus.COMPLETED):
            self.progress += 1
            if self.progress == len(AGENTS):
                self.session_status = SessionStatus.COMPLETED

    @rule(agent=agents)
    def fail(self, agent: str) -> None:
        legal = (
            self.agent_status.get(agent) is AgentStatus.RUNNING
            and self.session_status is SessionStatus.ACTIVE
        )
        if self._apply("fail", agent, legal, AgentStatus.FAILED):
            self.session_status = SessionStatus.FAILED

    @rule(agent=agents)
    def retry(self, agent: str) -> None:
        legal = self.agent_status.get(agent) is AgentStatus.FAILED and self.session_status in (
            SessionStatus.ACTIVE,
            SessionStatus.FAILED,
        )
        if self._apply("retry", agent, legal, AgentStatus.RUNNING):
            self.session_status = SessionStatus.ACTIVE

    @invariant()
    def stored_state_matches_model(self) -> None:
        session = self.client.sessions.get(self.sid)
        assert session.progress == self.progress
        assert session.status is self.session_status
        assert session.version >= self.versions[-1]
        self.versions.append(session.version)
        stored = {e.agent_name: e.status for e in self.client.executions.list(self.sid, load_payloads=False)}
        assert stored == self.agent_status
        completed = [a for a, s in stored.items() if s is AgentStatus.COMPLETED]
        assert completed == list(AGENTS[: len(completed)])  # completed agents are a prefix, in order


_CLIENT: StateClient


@pytest.fixture(scope="module", autouse=True)
def _moto_client() -> object:
    global _CLIENT  # noqa: PLW0603 - hypothesis instantiates the machine itself; it reads this
    with moto_aws():
        _CLIENT = StateClient(StateConfig(env=f"sm{uuid.uuid4().hex[:6]}", region="us-east-1"))
        _CLIENT.create_tables()
        yield


AgentRun.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_agent_run_state_machine = AgentRun.TestCase
