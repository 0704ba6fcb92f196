"""Unreadable stored items (edited by hand, written by another tool): one typed error at the item->model
mapping, skipped by listings, the sweep, the console and the CLI — never a KeyError three layers up."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from tdev_console import ConsoleSettings, create_app
from tdev_recovery import RecoveryWorker, RetryPolicy, WorkerConfig
from tdev_state import AGENTS, MalformedItemError, SessionStatus, StateClient
from tdev_state.cli import main as tdev
from tdev_state.testing import FakeClock

pytestmark = pytest.mark.unit

WORKER = WorkerConfig(
    worker_id="w1",
    confirm=timedelta(0),  # one sweep decides: these tests move a fake clock, not a monotonic one
    poll_interval=0.01,
    retry_delay=timedelta(hours=1),
    stall_threshold=timedelta(minutes=10),
    retry=RetryPolicy(initial_interval=timedelta(milliseconds=1), maximum_attempts=3),
    grace_period=1.0,
)

#: What an operator or another tool can leave in a session item: (update expression, values).
CORRUPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "status typed Failed": ("SET #a = :v", {"#a": "status", ":v": "Failed"}),
    "version missing": ("REMOVE #a", {"#a": "version"}),
    "last_updated as text": ("SET #a = :v", {"#a": "last_updated", ":v": "2026-11-26T12:00:00Z"}),
    "progress as a bool": ("SET #a = :v", {"#a": "progress", ":v": True}),
    "failed_agents not agents": ("SET #a = :v", {"#a": "failed_agents", ":v": ["nobody"]}),
}


def corrupt(client: StateClient, sid: str, how: str) -> None:
    """Change one attribute of a session item behind the library's back (as the AWS console would)."""
    update, args = CORRUPTIONS[how]
    names = {k: v for k, v in args.items() if k.startswith("#")}
    values = {k: v for k, v in args.items() if k.startswith(":")} or None
    client.layer.update(
        client.layer.tables.sessions, {"session_id": sid}, update=update, names=names, values=values
    )


def failed_run(client: StateClient, user: str = "u") -> str:
    sid = client.sessions.create(user_id=user, project_name="p").session_id
    client.executions.complete(sid, AGENTS[0], output_data={"out": 1})
    client.sessions.update(sid, status="FAILED")
    return sid


class Accepting:
    """A resumer that accepts every request."""

    def __init__(self) -> None:
        self.sessions: list[str] = []

    async def __call__(self, request: Any) -> None:
        self.sessions.append(request.session_id)


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
async def test_the_sweep_skips_an_unreadable_item_and_resumes_the_others(
    client: StateClient, clock: FakeClock, how: str
) -> None:
    """One malformed FAILED run: the sweep resumes the healthy ones, counts the bad one, raises nothing."""
    bad, good = failed_run(client), failed_run(client)
    corrupt(client, bad, how)
    clock.advance(hours=2)
    resumer = Accepting()
    worker = RecoveryWorker(client, resumer, WORKER, clock=clock)
    assert await worker.sweep() == 1
    await worker.wait_for_inflight()
    assert resumer.sessions == [good]
    assert worker.metrics.malformed_items._value.get() == 1
    assert worker.metrics.sweep_errors._value.get() == 0


async def test_the_worker_loop_survives_an_unexpected_error(client: StateClient, clock: FakeClock) -> None:
    """A sweep that raises something other than a StateError is counted and the loop turns again."""
    calls = 0

    def broken(**_: Any) -> list[Any]:
        nonlocal calls
        calls += 1
        raise TypeError("bug in a sweep")

    worker = RecoveryWorker(client, Accepting(), WORKER, clock=clock)
    client.sessions.recovery_candidates = broken  # type: ignore[method-assign]
    async with worker:
        async with asyncio.timeout(10):
            while calls < 2:  # noqa: ASYNC110 - the loop exposes no event per turn
                await asyncio.sleep(0.01)
    assert worker.metrics.sweep_errors._value.get() >= 2


def test_the_typed_error_names_the_item_the_attribute_and_the_problem(client: StateClient) -> None:
    """Reading a malformed session is a MalformedItemError with its key, attribute and what was wrong."""
    sid = failed_run(client)
    corrupt(client, sid, "status typed Failed")
    with pytest.raises(MalformedItemError) as caught:
        client.sessions.get(sid)
    error = caught.value
    assert (error.key, error.attribute) == ({"session_id": sid}, "status")
    assert "'Failed'" in error.problem
    assert "FAILED" in error.problem
    assert sid in str(error)


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
def test_listings_skip_an_unreadable_session_and_say_so(
    client: StateClient, clock: FakeClock, how: str
) -> None:
    """By user and by day: the other runs are listed; the page names the skipped item."""
    bad, good = failed_run(client, "alice"), failed_run(client, "alice")
    corrupt(client, bad, how)
    for page in (
        client.sessions.list_for_user("alice"),
        client.sessions.list_by_day(clock.now.date()),
        client.sessions.list_by_day(clock.now.date(), status="FAILED"),
    ):
        assert [s.session_id for s in page.items] == [good]
        (skipped,) = page.skipped
        assert isinstance(skipped, MalformedItemError)
        assert skipped.key == {"session_id": bad}


def test_failed_sessions_skip_an_unreadable_item(client: StateClient, clock: FakeClock) -> None:
    """The plan's get_failed_sessions path lists the readable FAILED runs."""
    bad, good = failed_run(client), failed_run(client)
    corrupt(client, bad, "last_updated as text")
    clock.advance(hours=2)
    assert [s.session_id for s in client.sessions.failed_sessions()] == [good]


def test_an_unreadable_agent_item_is_a_typed_error(client: StateClient) -> None:
    """An agent item with an unknown status raises MalformedItemError naming the agent's key."""
    sid = failed_run(client)
    key = {"execution_id": sid, "agent_name": "01#nl_input"}
    client.layer.update(
        client.layer.tables.executions,
        key,
        update="SET #s = :v",
        names={"#s": "status"},
        values={":v": "done"},
    )
    with pytest.raises(MalformedItemError) as caught:
        client.executions.list(sid)
    assert caught.value.key == key
    assert caught.value.attribute == "status"


def test_project_listing_skips_an_unreadable_project(client: StateClient) -> None:
    """A project whose download_count is text is skipped; the others are listed."""
    client.projects.save(user_id="u", project_id="bad", project_name="a")
    client.projects.save(user_id="u", project_id="good", project_name="b")
    client.layer.update(
        client.layer.tables.projects,
        {"user_id": "u", "project_id": "bad"},
        update="SET download_count = :v",
        values={":v": "many"},
    )
    page = client.projects.list_for_user("u")
    assert [p.project_id for p in page.items] == ["good"]
    assert page.skipped[0].attribute == "download_count"


def test_recovery_history_of_a_malformed_log_is_a_typed_error(client: StateClient) -> None:
    """A recovery_log entry without its moment is MalformedItemError, not a KeyError."""
    sid = failed_run(client)
    client.layer.update(
        client.layer.tables.sessions,
        {"session_id": sid},
        update="SET recovery_log = :v",
        values={":v": [{"k": "claimed", "at": "noon"}]},
    )
    with pytest.raises(MalformedItemError) as caught:
        client.sessions.recovery_history(sid)
    assert caught.value.attribute == "at"


def test_console_backlog_and_runs_show_the_other_runs(client: StateClient, clock: FakeClock) -> None:
    """/backlog and the day's /runs answer 200 and list the healthy run; the bad run's page is a 422."""
    bad, good = failed_run(client), failed_run(client)
    corrupt(client, bad, "status typed Failed")
    clock.advance(hours=2)
    web = TestClient(
        create_app(client, ConsoleSettings(clock=clock)),
        base_url="http://127.0.0.1:8080",
        follow_redirects=False,
    )
    for path in ("/backlog", "/runs", f"/runs?day={clock.now.date().isoformat()}"):
        page = web.get(path)
        assert page.status_code == 200, (path, page.text[:300])
        assert good in page.text
        assert bad not in page.text
    page = web.get(f"/runs/{bad}")
    assert page.status_code == 422
    assert "status" in page.text


def test_cli_lists_the_other_runs(
    client: StateClient, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tdev sessions list` (by status, by user) exits 0 with the readable runs."""
    monkeypatch.setenv("TDEV_ENV", client.config.env)
    bad, good = failed_run(client, "ops"), failed_run(client, "ops")
    corrupt(client, bad, "version missing")
    assert tdev(["sessions", "list", "--status", "FAILED", "--json"]) == 0
    assert [r["session_id"] for r in json.loads(capsys.readouterr().out)] == [good]
    assert tdev(["sessions", "list", "--user", "ops", "--json"]) == 0
    assert [r["session_id"] for r in json.loads(capsys.readouterr().out)] == [good]
    assert tdev(["sessions", "show", bad]) == 3
    err = capsys.readouterr().err
    assert "version" in err
    assert "Traceback" not in err
    assert client.sessions.get(good).status is SessionStatus.FAILED


def test_metric_and_usage_reports_skip_hand_edited_items(client: StateClient) -> None:
    """A metric item with a count typed as text, or a name without its hour, and a usage counter typed as
    text are skipped; the reports show the readable figures instead of failing."""
    from datetime import UTC, datetime

    from tdev_metrics import MetricsCollector, MetricsReader
    from tdev_metrics.usage_reader import UsageReader

    collector = MetricsCollector(client, usage=False)
    for _ in range(3):
        collector.record("edited", 1.0, agent_name="parser")
    assert collector.close()
    day = datetime.now(UTC).date()
    table = client.layer.tables.metrics
    hour = datetime.now(UTC).hour
    other = f"edited#parser#{(hour + 1) % 24:02d}"  # not the hour the collector wrote
    client.layer.put(table, {"date": day.isoformat(), "metric_name": other, "count": "many"})
    client.layer.put(table, {"date": day.isoformat(), "metric_name": "edited#parser#noon", "count": 5})
    client.layer.put(
        table,
        {
            "date": day.isoformat(),
            "metric_name": "#usage#counts",
            "rs.SIMPLE": "lots",
            "rs.PRODUCTION": 3,
            "rc.SIMPLE": 2,
        },
    )
    assert sum(s.count for s in MetricsReader(client).daily("edited", start=day)) == 3
    runs = UsageReader(client).report(day, day)["runs"]
    # The buffer's day (no run of it in the tables): the readable counters, the one typed as text skipped.
    assert (runs["started"], runs["completed"]) == (3, 2)
