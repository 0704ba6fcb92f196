"""A library is quiet: a host application that logs at WARNING sees nothing from it, on stdout or stderr."""

from __future__ import annotations

import subprocess
import sys
import textwrap

HOST = textwrap.dedent(
    """
    import logging, os
    os.environ.update(AWS_ACCESS_KEY_ID="t", AWS_SECRET_ACCESS_KEY="t", AWS_DEFAULT_REGION="us-east-1")
    os.environ.pop("AWS_ENDPOINT_URL", None)
    logging.basicConfig(level=logging.{level})
    from moto import mock_aws
    with mock_aws():
        from tdev_state import StateClient, StateConfig
        from tdev_metrics import MetricsCollector
        client = StateClient(StateConfig(env="host"))
        client.create_tables()
        sid = client.sessions.create(user_id="u").session_id
        client.executions.start(sid, "nl_input", input_data={{"q": 1}})
        client.executions.complete(sid, "nl_input", output_data={{"a": 1}})
        client.executions.fail(sid, "ui_selection", error_message="tolerated")
        with MetricsCollector(client) as metrics:
            metrics.record("agent_execution_time", 1.0, agent_name="parser")
    """
)


def _host(level: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", HOST.format(level=level)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_host_logging_at_warning_sees_no_output_from_the_library() -> None:
    """Tables, a session, agent transitions and a metrics flush print nothing at WARNING."""
    done = _host("WARNING")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr == ""


def test_a_host_logging_at_info_receives_the_events_through_logging() -> None:
    """The same work at INFO reaches the host's own handler (stderr here), never stdout."""
    done = _host("INFO")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "INFO:tdev_state.runs.agent_steps:agent.complete" in done.stderr
    assert "session.created" in done.stderr
