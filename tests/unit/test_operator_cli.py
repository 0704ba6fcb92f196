"""The operator's CLI, finished (#25): `tdev sessions show` with the run's recovery history, the console's
stalled and tolerated-failure filters in `tdev sessions list`, one date range for every command that takes
dates, help texts that say what the code does."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from tdev_state import StateClient
from tdev_state.cli import main as tdev
from tdev_state.testing import FakeClock

from ..console_runs import make_failed_run

pytestmark = pytest.mark.unit

LEASE = timedelta(seconds=30)


@pytest.fixture
def recovered(client: StateClient, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> str:
    """A FAILED run claimed by w1 (one failed attempt, released), then claimed by w2 and abandoned."""
    monkeypatch.setenv("TDEV_ENV", client.config.env)
    sid = make_failed_run(client)
    first = client.claims.claim(client.sessions.candidate(sid), worker_id="w1", lease=LEASE)
    assert first is not None
    first = client.claims.next_attempt(first, error="pipeline answered 500")
    client.claims.release(first)
    second = client.claims.claim(client.sessions.candidate(sid), worker_id="w2", lease=LEASE)
    assert second is not None
    client.claims.abandon(second, reason="customer cancelled the project")
    return sid


# --- 1. sessions show: the recovery history ---------------------------------------------------------------


def test_sessions_show_prints_the_recovery_history(
    recovered: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The text output lists each recovery step with its worker and the abandon's reason."""
    assert tdev(["sessions", "show", recovered, "--time-format", "iso"]) == 0
    out = capsys.readouterr().out
    assert "recovery: 2 claim(s)" in out
    assert "abandoned because: customer cancelled the project" in out
    steps = [line for line in out.splitlines() if "2026-11-26T" in line and ("w1" in line or "w2" in line)]
    kinds = ("claimed", "attempt_failed", "released", "abandoned")
    assert [next(k for k in kinds if k in line) for line in steps] == [
        "claimed",
        "attempt_failed",
        "released",
        "claimed",
        "abandoned",
    ]


def test_sessions_show_json_has_the_recovery_history(
    recovered: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json carries the history: counters, lease, and each step with token, worker, attempt, detail."""
    assert tdev(["sessions", "show", recovered, "--json"]) == 0
    recovery = json.loads(capsys.readouterr().out)["recovery"]
    assert (recovery["fencing_token"], recovery["lease_owner"], recovery["status"]) == (2, None, "ABANDONED")
    assert recovery["abandon_reason"] == "customer cancelled the project"
    assert [(e["kind"], e["fencing_token"], e["worker_id"], e["attempt"]) for e in recovery["events"]] == [
        ("claimed", 1, "w1", None),
        ("attempt_failed", 1, "w1", 1),
        ("released", 1, "w1", 2),
        ("claimed", 2, "w2", None),
        ("abandoned", 2, "w2", 3),
    ]
    assert recovery["events"][1]["detail"] == "pipeline answered 500"
    assert isinstance(recovery["events"][0]["at"], float)


def test_sessions_show_says_when_a_run_was_never_claimed(
    client: StateClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run recovery never touched says so instead of an empty table."""
    monkeypatch.setenv("TDEV_ENV", client.config.env)
    sid = make_failed_run(client)
    assert tdev(["sessions", "show", sid]) == 0
    assert "recovery: never claimed" in capsys.readouterr().out
