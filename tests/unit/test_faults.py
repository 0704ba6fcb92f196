"""Error translation on moto. Throttling and timeouts are injected in tests/integration: on moto a
`before-send` handler cannot stop the request from being applied (moto handles it in the same event)."""

from __future__ import annotations

import pytest

from tdev_state import StateClient, StateConfig, TableMissingError
from tdev_state.testing import LogEntries


def test_missing_tables_say_how_to_create_them(aws: None) -> None:
    """Using an env whose tables do not exist raises TableMissingError naming `make tables`."""
    client = StateClient(StateConfig(env="nowhere"))
    with pytest.raises(TableMissingError, match="make tables ENV=nowhere"):
        client.sessions.get("s")


def test_transition_logs_carry_session_and_agent(client: StateClient, logs: LogEntries) -> None:
    """Logs carry session_id and agent_name for transitions."""
    sid = client.sessions.create(user_id="u", project_name="p").session_id
    client.executions.start(sid, "nl_input")
    assert {"event": "agent.start", "session_id": sid, "agent_name": "nl_input"}.items() <= logs()[-1].items()
