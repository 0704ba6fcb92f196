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
    RunPolicy,
    SessionStatus,
    StateClient,
    StateConfig,
    StateError,
)
from tdev_state.testing import moto_aws

agents = st.sampled_from(AGENTS)


class AgentRun(RuleBasedStateMachine):
    """Random start/complete/fail/retry calls against one session, compared with a model of the run policy
    (tolerated and critical failures, first records that are already COMPLETED/FAILED) after each."""

    def __init__(self) -> None:
        super().__init__()
        self.client = _CLIENT
        self.sid = self.client.sessions.create(user_id="u", project_name="p").session_id
        self.progress = 0
        self.agent_status: dict[str, AgentStatus] = {}
        self.session_status = SessionStatus.ACTIVE
        self.versions = [1]
        self.last_call: dict[str, str] = {}
        self.failed: set[str] = set()
        self.current = AGENTS[0]

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

    def _order(self, agent: str) -> str | None:
        """ "next" if `agent` is next, "move-on" if the agent before it failed (non-critical) and is still the
        current one, else None."""
        step = AGENTS.index(agent) + 1
        if self.progress == step - 1:
            return "next"
        previous = AGENTS[step - 2] if step >= 2 else None
        if (
            previous is not None
            and self.progress == step - 2
            and self.current == previous
            and self.agent_status.get(previous) is AgentStatus.FAILED
            and not POLICY.is_critical(previous)
        ):
            return "move-on"
        return None

    def _move(self, agent: str, order: str | None) -> None:
        if order == "move-on":
            self.failed.add(AGENTS[AGENTS.index(agent) - 1])
            self.progress += 1
        self.current = agent

    @rule(agent=agents)
    def start(self, agent: str) -> None:
        order = self._order(agent) if self.session_status is SessionStatus.ACTIVE else None
        legal = order is not None and agent not in self.agent_status
        if self._apply("start", agent, legal, AgentStatus.RUNNING):
            self._move(agent, order)

    @rule(agent=agents)
    def complete(self, agent: str) -> None:
        order = self._order(agent) if self.session_status is SessionStatus.ACTIVE else None
        legal = order is not None and self.agent_status.get(agent, AgentStatus.PENDING) in (
            AgentStatus.PENDING,
            AgentStatus.RUNNING,
        )
        if self._apply("complete", agent, legal, AgentStatus.COMPLETED):
            self._move(agent, order)
            self.progress += 1
            if self.progress == len(AGENTS):
                within = len(self.failed) <= POLICY.tolerated_failures
                self.session_status = SessionStatus.COMPLETED if within else SessionStatus.FAILED

    @rule(agent=agents)
    def fail(self, agent: str) -> None:
        order = self._order(agent) if self.session_status is SessionStatus.ACTIVE else None
        legal = order is not None and self.agent_status.get(agent, AgentStatus.PENDING) in (
            AgentStatus.PENDING,
            AgentStatus.RUNNING,
        )
        if self._apply("fail", agent, legal, AgentStatus.FAILED):
            self._move(agent, order)
            if POLICY.is_critical(agent):
                self.session_status = SessionStatus.FAILED

    @rule(agent=agents)
    def retry(self, agent: str) -> None:
        step = AGENTS.index(agent) + 1
        legal = (
            self.agent_status.get(agent) is AgentStatus.FAILED
            and self.session_status in (SessionStatus.ACTIVE, SessionStatus.FAILED)
            and self.progress == step - 1
            and self.current == agent
        )
        if self._apply("retry", agent, legal, AgentStatus.RUNNING):
            self.session_status = SessionStatus.ACTIVE

    @invariant()
    def stored_state_matches_model(self) -> None:
        session = self.client.sessions.get(self.sid)
        assert session.progress == self.progress
        assert session.status is self.session_status
        assert set(session.failed_agents) == self.failed
        assert session.version >= self.versions[-1]
        self.versions.append(session.version)
        stored = {e.agent_name: e.status for e in self.client.executions.list(self.sid, load_payloads=False)}
        assert stored == self.agent_status
        # Nothing after the next agent has ever been recorded: agents run in order; everything before the
        # progress mark is COMPLETED or a tolerated failure.
        assert all(AGENTS.index(a) <= self.progress for a in stored)
        for agent in AGENTS[: self.progress]:
            assert stored[agent] is AgentStatus.COMPLETED or agent in self.failed


POLICY = RunPolicy()
_CLIENT: StateClient


@pytest.fixture(scope="module", autouse=True)
def _moto_client() -> object:
    global _CLIENT  # noqa: PLW0603 - hypothesis instantiates the machine itself; it reads this
    with moto_aws():
        _CLIENT = StateClient(StateConfig(env=f"sm{uuid.uuid4().hex[:6]}", region="us-east-1"))
        _CLIENT.create_tables()
        yield


AgentRun.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
test_agent_run_state_machine = AgentRun.TestCase
