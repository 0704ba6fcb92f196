"""The operator's CLI, finished (#25): `tdev sessions show` with the run's recovery history, the console's
stalled and tolerated-failure filters in `tdev sessions list`, one date range for every command that takes
dates, help texts that say what the code does."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tdev_console import cli as console_cli
from tdev_metrics import MetricsCollector
from tdev_recovery import _backlog_text as backlog_text
from tdev_recovery import cli as worker_cli
from tdev_state import AGENTS, RunPolicy, StateClient, dates
from tdev_state import _sessions_list as listing
from tdev_state.cli import main as tdev
from tdev_state.dates import DateRange
from tdev_state.runs.sessions import SessionStore
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


def test_status_active_with_a_limit_is_not_filled_by_stalled_runs(
    runs: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    """--status ACTIVE --limit 1 lists the live run even when an older stalled run is first in the index."""
    assert _listed(capsys, "--status", "ACTIVE", "--limit", "1") == [runs.healthy]


def test_status_tolerated_splits_completed_runs(runs: Runs, capsys: pytest.CaptureFixture[str]) -> None:
    """TOLERATED lists COMPLETED runs with tolerated failures; COMPLETED the clean ones."""
    assert _listed(capsys, "--status", "TOLERATED") == [runs.tolerated]
    assert _listed(capsys, "--status", "COMPLETED") == [runs.clean]


def test_listed_runs_say_their_state(runs: Runs, capsys: pytest.CaptureFixture[str]) -> None:
    """Each row carries the filter it falls under, as --status takes it (STALLED, TOLERATED, ...)."""
    assert tdev(["sessions", "list", "--user", "ops", "--json"]) == 0
    states = {row["session_id"]: row["state"] for row in json.loads(capsys.readouterr().out)}
    assert states[runs.stalled] == "STALLED"
    assert states[runs.tolerated] == "TOLERATED"
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


# --- 3. one date range for every command that takes dates -------------------------------------------------

NOW = datetime(2026, 12, 6, 7, 30, tzinfo=UTC)


def _span(**options: str | int | None) -> DateRange:
    given = {
        k: dates.parse_when(v) if isinstance(v, str) else None for k, v in options.items() if k != "days"
    }
    days = options.get("days")
    return DateRange.resolve(
        since=given.get("since"),
        until=given.get("until"),
        days=days if isinstance(days, int) else None,
        now=NOW,
    )


def test_a_day_as_until_includes_the_whole_day() -> None:
    """--since D starts at D's first moment; --until D ends after D's last."""
    span = _span(since="2026-11-26", until="2026-11-27")
    assert (span.start, span.end) == (datetime(2026, 11, 26, tzinfo=UTC), datetime(2026, 11, 28, tzinfo=UTC))


def test_relative_times_and_moments_are_read_at_now() -> None:
    """`12h` is twelve hours before now; an ISO time with an offset is read in UTC; --until is now."""
    assert _span(since="12h") == DateRange(NOW - timedelta(hours=12), NOW)
    assert _span(since="2026-12-06T08:00+02:00").start == datetime(2026, 12, 6, 6, tzinfo=UTC)


def test_days_counts_back_from_the_until_day() -> None:
    """--days 2 --until D is D and the day before, whole (the old --day/--days and --to/--days)."""
    span = _span(days=2, until="2026-11-26")
    assert span.days() == [date(2026, 11, 25), date(2026, 11, 26)]
    assert span.end == datetime(2026, 11, 27, tzinfo=UTC)


COMMANDS_WITH_DATES = [
    ["sessions", "list"],
    ["usage", "report"],
    ["metrics", "report"],
]


@pytest.mark.parametrize("argv", COMMANDS_WITH_DATES, ids=" ".join)
@pytest.mark.parametrize("bad", ["yesterday-ish", "2026-02-30", "12x", "2026-11-26T25:00"])
def test_a_bad_time_is_one_line_naming_the_forms(
    argv: list[str], bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every command that takes dates refuses a bad WHEN in one line that names the accepted forms, exit 2."""
    assert tdev([*argv, "--since", bad]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "2026-11-26T14:30" in err
    assert "7d" in err


@pytest.mark.parametrize("argv", COMMANDS_WITH_DATES, ids=" ".join)
@pytest.mark.parametrize(
    "span",
    [["--since", "2026-11-27", "--until", "2026-11-26"], ["--since", "2024-01-01", "--until", "2025-06-01"]],
)
def test_an_empty_or_too_long_range_is_one_line(
    client: StateClient,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    span: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A range that ends before it starts, or spans more than 366 days, is refused in one line, exit 2."""
    monkeypatch.setenv("TDEV_ENV", client.config.env)
    assert tdev([*argv, *span]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "since" in err


@pytest.mark.parametrize("argv", COMMANDS_WITH_DATES, ids=" ".join)
@pytest.mark.parametrize(
    "span",
    [
        ["--until", "9999-12-31"],
        ["--since", "9999-12-31T23:59-02:00"],
        ["--until", "0001-01-01", "--days", "5"],
        ["--since", "9999-12-31T00:00", "--until", "9999-12-31T12:00"],
    ],
)
def test_a_range_at_the_calendars_edge_is_one_line(
    client: StateClient,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    span: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A WHEN whose range would leave the calendar (year 9999's last day as --until) is one line, exit 2."""
    monkeypatch.setenv("TDEV_ENV", client.config.env)
    assert tdev([*argv, *span]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "calendar" in err


def test_sessions_list_keeps_the_runs_started_inside_the_range(
    client: StateClient, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A range to the hour lists the runs started in it; the old `--day` still means the whole day."""
    monkeypatch.setenv("TDEV_ENV", client.config.env)
    early = client.sessions.create(user_id="ops", project_name="noon").session_id
    clock.advance(hours=2)
    late = client.sessions.create(user_id="ops", project_name="two").session_id
    assert _listed(capsys, "--since", "2026-11-26T13:00", "--until", "2026-11-26") == [late]
    assert _listed(capsys, "--user", "ops", "--until", "2026-11-26T13:00") == [early]
    assert _listed(capsys, "--day", "2026-11-26") == [late, early]


def test_metrics_report_keeps_the_hours_inside_the_range(
    client: StateClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hourly rows outside --since/--until are left out; --daily covers the days the range touches."""
    metrics = MetricsCollector(client, start=False)
    for hour in (9, 12, 15):
        moment = datetime(2026, 11, 26, hour, 10, tzinfo=UTC).timestamp()
        metrics.record("t", 1.0, agent_name="generation", timestamp=moment)
    assert metrics.flush()
    monkeypatch.setenv("TDEV_ENV", client.config.env)
    span = ["--since", "2026-11-26T11:30", "--until", "2026-11-26T15:00"]
    assert tdev(["metrics", "report", "--metric", "t", *span, "--json"]) == 0
    assert [row["hour"] for row in json.loads(capsys.readouterr().out)] == [12]
    assert tdev(["metrics", "report", "--metric", "t", *span, "--daily", "--json"]) == 0
    assert [row["count"] for row in json.loads(capsys.readouterr().out)] == [3]


def test_backlog_reads_durations_with_the_shared_parser() -> None:
    """`tdev backlog --older-than` reads durations with the same parser as the date range's `7d`."""
    assert backlog_text.duration is dates.duration


# --- 4. help and settings that match the code -------------------------------------------------------------


def test_the_stall_threshold_setting_reads_the_same_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """$TDEV_STALL_THRESHOLD=5m is five minutes for the worker, the console and the CLIs alike."""
    monkeypatch.setenv("TDEV_STALL_THRESHOLD", "5m")
    worker = worker_cli.worker_config(worker_cli.build_parser().parse_args(["--resumer", "http://x"]))
    console = console_cli.build_parser().parse_args([])
    assert worker.stall_threshold == timedelta(minutes=5)
    assert console.stall_threshold == 300
    assert listing.recovery_policy(None, RunPolicy()).stall_threshold == timedelta(minutes=5)


@pytest.mark.parametrize(
    "argv", [["sessions", "list"], ["sessions", "show"], ["usage", "report"], ["metrics", "report"]]
)
def test_no_help_shows_a_default_that_says_nothing(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A plain flag's help has no `(default: False)`; no option says `(default: None)`."""
    assert tdev([*argv, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # wrapped help lines joined
    assert "(default: False)" not in out
    assert "(default: None)" not in out


# --- 6. the documented command lines run as written -------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTED_RUN = "prod_20261206_041907_1177"


def documented_commands() -> list[tuple[str, int]]:
    """The ```bash lines of operations.md's "Runs, filters and dates" section: (command, exit code its
    comment gives, else 0)."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("## Runs, filters and dates from the terminal", 1)[1].split("\n## ", 1)[0]
    found = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL):
        for line in block.splitlines():
            command, _, comment = line.partition("  #")
            code = re.match(r"\s*exit (\d)", comment)
            found.append((command.strip(), int(code.group(1)) if code else 0))
    return found


def test_the_section_lists_its_commands() -> None:
    """The extraction finds the section's commands (guards against a silently empty list)."""
    commands = [c for c, _ in documented_commands()]
    assert any(c.startswith("tdev sessions show") for c in commands)
    assert any("--since" in c for c in commands)
    assert all(c.startswith("tdev ") for c in commands)


def test_every_documented_command_runs_as_written(
    client: StateClient, runs: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each documented line exits as documented, with no traceback (moto; runs, usage and metrics of the
    last hours; a run recovery claimed and abandoned under the id the docs show)."""
    clock = FakeClock(datetime.now(UTC) - timedelta(hours=1))
    recent = StateClient(client.config, clock=clock)
    collector = MetricsCollector(recent, start=False)
    sid = recent.sessions.create(user_id="ops", project_name="docs", session_id=DOCUMENTED_RUN).session_id
    recent.executions.start(sid, "nl_input")
    recent.executions.fail(sid, "nl_input", error_message="model overloaded")
    recent.sessions.update(sid, status="FAILED")
    claim = recent.claims.claim(recent.sessions.candidate(sid), worker_id="w1", lease=LEASE)
    assert claim is not None
    recent.claims.abandon(claim, reason="customer cancelled the project")
    collector.record("agent_execution_time", 1.5, agent_name="nl_input", timestamp=clock.now.timestamp())
    assert collector.close()
    for command, expected in documented_commands():
        code = tdev(shlex.split(command)[1:])
        out, err = capsys.readouterr()
        assert code == expected, f"{command}: exit {code}\n{out[-800:]}\n{err[-800:]}"
        assert "Traceback" not in err, command


def test_a_listing_judges_a_handed_over_run_by_the_window_it_declared(
    client: StateClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run handed over 200 s ago (a 120 s cool-down declared) at generation (a 360 s agent window) is
    stalled by the worker's rule; the by-user listing says so too, not only the recovery-index one."""
    monkeypatch.setenv("TDEV_ENV", client.config.env)
    monkeypatch.delenv("TDEV_STALL_THRESHOLD", raising=False)
    clock = FakeClock(datetime.now(UTC) - timedelta(seconds=200))
    recent = StateClient(client.config, clock=clock)
    sid = recent.sessions.create(user_id="handed", project_name="resumed").session_id
    for agent in AGENTS[:6]:
        recent.executions.start(sid, agent)
        recent.executions.complete(sid, agent, output_data={"ok": agent})
    recent.executions.start(sid, "generation")
    claim = recent.claims.claim(recent.sessions.candidate(sid), worker_id="w1", lease=LEASE)
    assert claim is not None
    recent.claims.handed_over(claim, cooldown=timedelta(seconds=120))
    assert _listed(capsys, "--status", "STALLED") == [sid]  # the recovery index: the declared window
    assert _listed(capsys, "--user", "handed", "--status", "STALLED") == [sid]


def test_a_filtered_listing_reads_a_bounded_number_of_pages(
    client: StateClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A filter no run matches stops after MAX_INDEX_PAGES pages of the user's runs, not all of them."""
    monkeypatch.setenv("TDEV_ENV", client.config.env)
    for n in range(listing.MAX_INDEX_PAGES + 5):
        client.sessions.create(user_id="many", project_name=f"run {n}")
    calls = []
    original = SessionStore.list_for_user

    def counted(self: SessionStore, *args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("limit"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SessionStore, "list_for_user", counted)
    assert tdev(["sessions", "list", "--user", "many", "--status", "ABANDONED", "--limit", "1"]) == 1
    assert len(calls) == listing.MAX_INDEX_PAGES
