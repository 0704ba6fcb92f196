"""The `tdev` operator CLI: readable output, --json for scripts, exit codes that mean something."""

from __future__ import annotations

import json

import pytest

from tdev_state import AGENTS, StateClient
from tdev_state.cli import main as tdev


@pytest.fixture
def seeded(client: StateClient, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TDEV_ENV", client.config.env)
    sid = client.sessions.create(user_id="ops", project_name="shop", session_id="run-1").session_id
    for agent in AGENTS[:3]:
        client.executions.start(sid, agent, input_data={"x": 1})
        client.executions.complete(sid, agent, output_data={"y": 2})
    client.executions.start(sid, AGENTS[3])
    client.executions.fail(sid, AGENTS[3], error_message="llm timeout")
    client.sessions.update(sid, status="FAILED")  # the pipeline gives up on the run
    client.projects.save(user_id="ops", project_id="p1", project_name="Shop")
    return sid


def test_sessions_show_prints_the_agent_timeline(seeded: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`tdev sessions show` lists all nine agents with status, retries and the error."""
    assert tdev(["sessions", "show", seeded]) == 0
    out = capsys.readouterr().out
    assert "FAILED" in out
    assert "llm timeout" in out
    assert all(agent in out for agent in AGENTS)


def test_sessions_show_json(seeded: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--json gives the session and a 9-row timeline for scripts."""
    assert tdev(["sessions", "show", seeded, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["session"]["status"] == "FAILED"
    assert [row["status"] for row in data["agents"][:5]] == ["COMPLETED"] * 3 + ["FAILED", "PENDING"]
    assert data["agents"][0]["output_bytes"] > 0


def test_sessions_list_by_user_and_status(seeded: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Listing by user works; FAILED runs come from the recovery index; a status no run has finds nothing."""
    assert tdev(["sessions", "list", "--user", "ops", "--json"]) == 0
    assert [r["session_id"] for r in json.loads(capsys.readouterr().out)] == [seeded]
    assert tdev(["sessions", "list", "--status", "FAILED", "--json"]) == 0
    assert [r["session_id"] for r in json.loads(capsys.readouterr().out)] == [seeded]
    assert tdev(["sessions", "list", "--status", "COMPLETED", "--day", "2026-11-26"]) == 1


def test_exit_codes_and_errors_without_tracebacks(seeded: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Not found is 1, bad input 2; the message is one line, never a traceback."""
    assert tdev(["sessions", "show", "nope"]) == 1
    err = capsys.readouterr().err
    assert "not found" in err
    assert "Traceback" not in err
    assert tdev(["projects", "list", "ops", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["project_id"] == "p1"
    assert tdev(["projects", "list", "nobody"]) == 1
    assert tdev(["sessions", "list", "--user", ""]) == 2
    assert tdev(["bogus"]) == 2


def test_stored_markup_is_printed_as_written(
    client: StateClient, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Names and errors holding rich markup (`[/]`, `[/srv/build]`, `[bold]`) print verbatim, no crash."""
    monkeypatch.setenv("TDEV_ENV", client.config.env)
    sid = client.sessions.create(user_id="hostile", project_name="shop [/] v2 [bold]x").session_id
    client.executions.start(sid, "nl_input")
    client.executions.fail(
        sid, "nl_input", error_message="cannot write [/srv/build] <script>alert(1)</script>"
    )
    client.projects.save(user_id="hostile", project_id="p[bold]", project_name="[red]shop[/red] [/]")
    assert tdev(["sessions", "show", sid]) == 0
    out = capsys.readouterr().out
    assert "shop [/] v2 [bold]x" in out
    assert "[/srv/build]" in out
    assert tdev(["sessions", "list", "--user", "hostile"]) == 0
    assert "shop [/] v2" in capsys.readouterr().out
    assert tdev(["projects", "list", "hostile"]) == 0
    assert "[red]shop[/red] [/]" in capsys.readouterr().out
