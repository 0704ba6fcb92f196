"""The operator's CLI, finished (#25): `tdev sessions show` with the run's recovery history, the console's
stalled and tolerated-failure filters in `tdev sessions list`, one date range for every command that takes
dates, help texts that say what the code does."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from tdev_state import AGENTS, StateClient
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


# --- 2. sessions list: the console's filters, by the worker's rule ----------------------------------------

#: The worker's settings the CLIs read; a developer's shell must not change what these tests see.
_SETTINGS = ("TDEV_STALL_THRESHOLD", "TDEV_RESUME_COOLDOWN", "TDEV_MAX_ATTEMPTS", "TDEV_MAX_RESUMES")


@dataclass
class Runs:
    stalled: str  # ACTIVE at match_rate, silent 65 min
    healthy: str  # ACTIVE, generation started 3 min ago (inside its 6 min window)
    failed: str  # FAILED at generation
    clean: str  # COMPLETED, no failure
    tolerated: str  # COMPLETED with match_rate's failure tolerated


def _complete(client: StateClient, sid: str, *, tolerate: str | None = None) -> None:
    for agent in AGENTS:
        client.executions.start(sid, agent)
        if agent == tolerate:
            client.executions.fail(sid, agent, error_message="no match")
        else:
            client.executions.complete(sid, agent, output_data={"ok": agent})


@pytest.fixture
def runs(client: StateClient, monkeypatch: pytest.MonkeyPatch) -> Runs:
    """Five runs written on a clock that ends at the real now: the CLI judges them with its own clock."""
    monkeypatch.setenv("TDEV_ENV", client.config.env)
    for name in _SETTINGS:
        monkeypatch.delenv(name, raising=False)
    clock = FakeClock(datetime.now(UTC) - timedelta(hours=2))
    recent = StateClient(client.config, clock=clock)
    stalled = recent.sessions.create(user_id="ops", project_name="stuck").session_id
    for agent in AGENTS[:4]:
        recent.executions.start(stalled, agent)
        recent.executions.complete(stalled, agent, output_data={"ok": agent})
    recent.executions.start(stalled, AGENTS[4])
    clean = recent.sessions.create(user_id="ops", project_name="clean").session_id
    _complete(recent, clean)
    tolerated = recent.sessions.create(user_id="ops", project_name="tolerated").session_id
    _complete(recent, tolerated, tolerate="match_rate")
    failed = make_failed_run(recent)
    clock.advance(minutes=52)
    healthy = recent.sessions.create(user_id="ops", project_name="live").session_id
    for agent in AGENTS[:6]:
        recent.executions.start(healthy, agent)
        recent.executions.complete(healthy, agent, output_data={"ok": agent})
    clock.advance(minutes=65)  # the stalled run's last write is 65 min old now
    recent.executions.start(healthy, "generation")
    clock.advance(minutes=3)
    assert clock.now <= datetime.now(UTC)
    return Runs(stalled=stalled, healthy=healthy, failed=failed, clean=clean, tolerated=tolerated)


def _listed(capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    code = tdev(["sessions", "list", *argv, "--json"])
    rows = json.loads(capsys.readouterr().out or "[]")
    assert code == (0 if rows else 1)
    return [row["session_id"] for row in rows]


def test_status_stalled_lists_what_the_backlog_calls_stalled(
    runs: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    """--status STALLED lists the run silent past its window and not the live one, as `tdev backlog` does."""
    assert _listed(capsys, "--status", "stalled") == [runs.stalled]
    assert tdev(["backlog", "list", "--stalled-only", "--json"]) == 0
    assert [row["session_id"] for row in json.loads(capsys.readouterr().out)] == [runs.stalled]


def test_status_active_leaves_stalled_runs_out(runs: Runs, capsys: pytest.CaptureFixture[str]) -> None:
    """ACTIVE means ACTIVE and not stalled, as the console's filter reads it (the filters partition runs)."""
    assert _listed(capsys, "--status", "ACTIVE") == [runs.healthy]


def test_status_tolerated_splits_completed_runs(runs: Runs, capsys: pytest.CaptureFixture[str]) -> None:
    """TOLERATED lists COMPLETED runs with tolerated failures; COMPLETED the clean ones."""
    assert _listed(capsys, "--status", "TOLERATED") == [runs.tolerated]
    assert _listed(capsys, "--status", "COMPLETED") == [runs.clean]


def test_listed_runs_say_their_state(runs: Runs, capsys: pytest.CaptureFixture[str]) -> None:
    """Each row carries the state the console's badge shows (stalled, tolerated failures)."""
    assert tdev(["sessions", "list", "--user", "ops", "--json"]) == 0
    states = {row["session_id"]: row["state"] for row in json.loads(capsys.readouterr().out)}
    assert states[runs.stalled] == "stalled"
    assert states[runs.tolerated] == "COMPLETED with tolerated failures"
    assert states[runs.healthy] == "ACTIVE"


def test_the_stall_threshold_is_the_workers_setting(
    runs: Runs, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """$TDEV_STALL_THRESHOLD (or --stall-threshold) makes a run silent 3 min stalled, as for the worker."""
    assert _listed(capsys, "--user", "ops", "--status", "STALLED", "--stall-threshold", "1m") == [
        runs.healthy,
        runs.stalled,
    ]
    monkeypatch.setenv("TDEV_STALL_THRESHOLD", "60")
    assert set(_listed(capsys, "--status", "STALLED")) == {runs.healthy, runs.stalled}


def test_a_bad_stall_threshold_setting_is_one_line(
    runs: Runs, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A malformed $TDEV_STALL_THRESHOLD is one line naming the variable, exit 2."""
    monkeypatch.setenv("TDEV_STALL_THRESHOLD", "soon")
    assert tdev(["sessions", "list", "--status", "STALLED"]) == 2
    err = capsys.readouterr().err
    assert "TDEV_STALL_THRESHOLD" in err
    assert len(err.strip().splitlines()) == 1
