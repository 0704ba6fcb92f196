"""Usage counts of the facts the tables hold, counted from the tables (moto): a collector's buffer lost
with its process changes nothing; the worker's fold of a day is idempotent, recounts an open day, is read
as one item once closed, and skips a bad item; each figure has one definition (failed runs vs failure
events, funnel completed <= started, agent p50 = the metrics report's)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import boto3
import pytest

from tdev_metrics import MetricsCollector, MetricsReader
from tdev_metrics._usage_store import TABLES
from tdev_metrics.exceptions import MetricValidationError
from tdev_metrics.usage import RELATIVE_ERROR
from tdev_metrics.usage_reader import UsageReader
from tdev_metrics.usage_tables import (
    BUFFER,
    COUNTED,
    FOLDED,
    UsageFolder,
    count_day,
    fold_day,
    read_fold,
)
from tdev_recovery import RecoveryWorker, ResumeRequest, WorkerConfig
from tdev_state import AGENTS, StateClient
from tdev_state.testing import FakeClock, LogEntries

from ..console_runs import BackgroundResumer, make_failed_run
from ..usage_mix import assert_report_matches, drive_mix, ground_truth

DAY = date(2026, 11, 26)  # the FakeClock's day
NEXT = DAY + timedelta(days=1)


@contextmanager
def record_calls(client: StateClient) -> Iterator[list[tuple[str, str]]]:
    """(operation, table) of every DynamoDB call the client's door makes inside the block."""
    calls: list[tuple[str, str]] = []

    def seen(params: dict[str, Any], model: Any, **_: Any) -> None:  # the API call's own parameters
        table = params.get("TableName") or next(iter(params.get("RequestItems", {"?": 0})))
        calls.append((model.name, table))

    events = client.layer.dynamodb.meta.events
    events.register("before-parameter-build.dynamodb", seen)
    try:
        yield calls
    finally:
        events.unregister("before-parameter-build.dynamodb", seen)


def _finish(client: StateClient, sid: str) -> None:
    for agent in AGENTS:
        client.executions.start(sid, agent)
        client.executions.complete(sid, agent, output_data={"ok": agent})


def _finished_runs(client: StateClient, n: int) -> list[str]:
    sids = [client.sessions.create(pipeline_type="SIMPLE").session_id for _ in range(n)]
    for sid in sids:
        _finish(client, sid)
    return sids


def test_the_counts_equal_the_tables_when_the_buffer_is_lost(client: StateClient) -> None:
    """A collector that never flushes (its process SIGKILLed): the report still equals the tables (before,
    it counted nothing of what that buffer held)."""
    collector = MetricsCollector(client, start=False)
    scope = drive_mix(client)
    del collector  # never flushed, never closed: what a SIGKILL leaves
    report = UsageReader(client).report(DAY, DAY)
    truth = ground_truth(boto3.client("dynamodb", region_name="us-east-1"), client, scope)
    runs = report["runs"]
    assert {k: runs[k] for k in truth["runs"] if k != "by_pipeline_type"} == {
        k: v for k, v in truth["runs"].items() if k != "by_pipeline_type"
    }
    assert [dict(r) for r in report["funnel"]] == truth["funnel"]
    assert report["counted_from"] == {DAY.isoformat(): COUNTED}


def test_folding_a_day_twice_counts_it_once(client: StateClient) -> None:
    """The fold is the day's count, stored; a second fold writes the same count, never adds to it."""
    _finished_runs(client, 2)
    fold_day(client, DAY, today=DAY)  # today: open, recounted next time
    fold_day(client, DAY, today=DAY)
    stored = read_fold(client, DAY)
    assert stored is not None
    assert (stored.total("started"), stored.total("completed"), stored.closed) == (2, 2, False)
    assert UsageReader(client).report(DAY, DAY)["runs"]["started"] == 2


def test_a_day_folded_then_given_more_runs_is_counted_again(client: StateClient) -> None:
    """A day folded while open, then more runs of that day: the next fold and the report count them all."""
    _finished_runs(client, 1)
    open_run = client.sessions.create().session_id
    first = fold_day(client, DAY, today=NEXT)
    assert (first.total("started"), first.open_runs, first.closed) == (2, 1, False)
    _finish(client, open_run)
    _finished_runs(client, 1)
    second = fold_day(client, DAY, today=NEXT)
    assert (second.total("started"), second.total("completed"), second.closed) == (3, 3, True)
    assert UsageReader(client).report(DAY, DAY)["runs"]["completed"] == 3


def test_a_closed_day_is_read_as_its_one_item(client: StateClient) -> None:
    """Once folded closed, a day's report reads the metrics table only: no session or agent read."""
    _finished_runs(client, 2)
    assert fold_day(client, DAY, today=NEXT).closed
    with record_calls(client) as calls:
        report = UsageReader(client).report(DAY, DAY)
    assert report["runs"]["started"] == 2
    assert report["counted_from"] == {DAY.isoformat(): FOLDED}
    assert {table for _, table in calls} == {client.config.tables.metrics}


def test_a_closed_fold_is_never_written_again(client: StateClient) -> None:
    """A later fold of a closed day returns the stored count and writes nothing."""
    _finished_runs(client, 2)
    fold_day(client, DAY, today=NEXT)
    with record_calls(client) as calls:
        again = fold_day(client, DAY, today=NEXT + timedelta(days=3))
    assert (again.total("started"), again.source) == (2, FOLDED)
    assert [op for op, _ in calls] == ["GetItem"]


def test_a_malformed_session_is_counted_logged_and_skipped(client: StateClient, logs: LogEntries) -> None:
    """A session item the mapping cannot read is left out of the counts, counted in `skipped` and logged;
    the day's other runs are counted."""
    _finished_runs(client, 2)
    boto3.client("dynamodb", region_name="us-east-1").put_item(
        TableName=client.config.tables.sessions,
        Item={
            "session_id": {"S": "bad-run"},
            "created_day": {"S": DAY.isoformat()},
            "created_at": {"N": str(datetime(2026, 11, 26, 9, tzinfo=UTC).timestamp())},
            "status": {"S": "BOGUS"},
        },
    )
    count = fold_day(client, DAY, today=NEXT)
    assert (count.total("started"), count.skipped) == (2, 1)
    assert any(e["event"] == "usage.tables_item_skipped" for e in logs())
    assert UsageReader(client).report(DAY, DAY)["capped"]["items_skipped"] == 1


def test_a_hand_edited_fold_is_logged_and_the_day_counted_again(
    client: StateClient, logs: LogEntries
) -> None:
    """A fold that is not one (a count typed as text) is logged and the tables are counted instead."""
    _finished_runs(client, 1)
    boto3.client("dynamodb", region_name="us-east-1").put_item(
        TableName=client.config.tables.metrics,
        Item={
            "date": {"S": DAY.isoformat()},
            "metric_name": {"S": TABLES},
            "closed": {"BOOL": True},
            "runs": {"M": {"SIMPLE": {"M": {"started": {"S": "many"}}}}},
        },
    )
    report = UsageReader(client).report(DAY, DAY)
    assert (report["runs"]["started"], report["counted_from"][DAY.isoformat()]) == (1, COUNTED)
    assert any(e["event"] == "usage.fold_malformed" for e in logs())


def test_the_folder_goes_on_past_a_day_that_fails(
    client: StateClient, monkeypatch: pytest.MonkeyPatch, logs: LogEntries
) -> None:
    """One day whose fold raises is counted and logged; the folder folds the other days."""
    import tdev_metrics.usage_tables as tables

    real = tables.fold_day

    def flaky(c: StateClient, day: date, *, today: date) -> Any:
        if day == DAY:
            raise RuntimeError("a bug on one day")
        return real(c, day, today=today)

    monkeypatch.setattr(tables, "fold_day", flaky)
    folder = UsageFolder(client, days_per_call=3)
    assert folder.fold(NEXT) == 2
    assert (folder.failures, folder.folded) == (1, 2)
    assert [e["day"] for e in logs() if e["event"] == "usage.fold_crashed"] == [DAY.isoformat()]


def test_failed_runs_and_failure_events_are_two_figures(client: StateClient, clock: FakeClock) -> None:
    """A run that fails, is resumed and fails again is 1 failed run and 2 failure events (before, one
    figure `failed` said 2)."""
    sid = client.sessions.create().session_id
    for agent in AGENTS[:6]:
        client.executions.start(sid, agent)
        client.executions.complete(sid, agent, output_data={})
    client.executions.start(sid, "generation")
    client.executions.fail(sid, "generation", error_message="down")
    client.sessions.update(sid, status="ACTIVE")
    client.executions.retry(sid, "generation")
    client.executions.fail(sid, "generation", error_message="down again")
    runs = UsageReader(client).report(DAY, DAY)["runs"]
    assert (runs["failed"], runs["failure_events"]) == (1, 2)


def test_an_agent_completed_without_a_start_never_makes_completed_exceed_started(client: StateClient) -> None:
    """The funnel counts stored agents: completed is a subset of started (before, a completion recorded
    without its start counted one completed of none started)."""
    collector = MetricsCollector(client, start=False)
    sid = client.sessions.create().session_id
    client.executions.complete(sid, AGENTS[0], output_data={})  # no start call: allowed from PENDING
    assert collector.close()
    first = UsageReader(client).report(DAY, DAY)["funnel"][0]
    assert (first["started"], first["completed"]) == (1, 1)


def test_an_agents_p50_is_the_metrics_reports(client: StateClient) -> None:
    """The usage report's agent percentiles are the agent_execution_time metric's, as MetricsReader gives
    them: one definition (before, the usage report timed the transitions itself: 0.041 s vs 0.010 s)."""
    collector = MetricsCollector(client, start=False)
    sid = client.sessions.create().session_id
    for agent in AGENTS[:3]:
        client.executions.start(sid, agent)
        client.executions.complete(sid, agent, output_data={})
    at = datetime(2026, 11, 26, 12, tzinfo=UTC)
    for i, seconds in enumerate((0.010, 0.011, 0.012, 0.5)):
        collector.record(
            "agent_execution_time", seconds, agent_name="parser", timestamp=at, variant="AB"[i % 2]
        )
    assert collector.close()
    usage = UsageReader(client).report(DAY, DAY)["duration_seconds"]["agents"]["parser"]
    metrics = MetricsReader(client).by_agent("agent_execution_time", start=DAY)["parser"]
    assert metrics.p50 is not None
    assert metrics.p95 is not None
    assert (usage["p50"], usage["p95"]) == (round(metrics.p50, 3), round(metrics.p95, 3))
    assert abs(usage["p50"] - 0.011) <= 0.011 * RELATIVE_ERROR
    fold_day(client, DAY, today=DAY + timedelta(days=7))  # closed: the day's buckets kept in the fold
    folded = UsageReader(client).report(DAY, DAY)
    assert folded["counted_from"] == {DAY.isoformat(): FOLDED}
    assert folded["duration_seconds"]["agents"]["parser"] == usage


def test_the_report_equals_the_tables_for_a_mix_of_runs(client: StateClient) -> None:
    """The whole mix, counted by the fold: the closed fold's report equals the raw tables."""
    scope = drive_mix(client)
    count = count_day(client, DAY)
    assert count.open_runs == 1  # the mix's run in flight
    fold_day(client, DAY, today=DAY + timedelta(days=7))  # settled: closed even with a run open
    report = UsageReader(client).report(DAY, DAY)
    assert report["counted_from"] == {DAY.isoformat(): FOLDED}
    truth = ground_truth(boto3.client("dynamodb", region_name="us-east-1"), client, scope)
    truth["active_users"] = {"total_distinct": 0, "by_day": {}}  # no collector here: users not counted
    truth["projects"] = {"saved": 0, "downloads": 0, "tech_stack": {}}
    assert_report_matches(report, truth, RELATIVE_ERROR)


async def test_the_worker_folds_usage_after_a_sweep(client: StateClient, clock: FakeClock) -> None:
    """A worker given a fold runs it after its sweep, off the event loop (the worker's CLI gives it a
    UsageFolder when usage counting is on)."""
    folded = threading.Event()

    async def resumer(request: ResumeRequest) -> None:
        raise AssertionError(f"nothing to resume: {request.session_id}")

    worker = RecoveryWorker(
        client,
        resumer,
        WorkerConfig(worker_id="fold", poll_interval=0.01),
        clock=clock,
        fold_usage=folded.set,
    )
    async with worker:
        assert await asyncio.to_thread(folded.wait, 10)


def test_a_fold_of_a_datetime_is_refused_and_writes_nothing(client: StateClient) -> None:
    """A datetime (or text) where a day is expected is the package's typed error, naming the argument."""
    with pytest.raises(MetricValidationError, match="day must be a date"):
        fold_day(client, datetime(2026, 11, 26, tzinfo=UTC), today=NEXT)  # type: ignore[arg-type]
    assert read_fold(client, DAY) is None


def test_the_folder_backfills_history_and_never_rereads_a_closed_day(client: StateClient) -> None:
    """Days older than the settle window with no fold are folded closed a few per call; a day folded
    closed is not read again by that folder (a day's legacy buffer counts still show: see the reader)."""
    _finished_runs(client, 1)
    folder = UsageFolder(client, history_days=20, days_per_call=10)
    later = DAY + timedelta(days=15)  # DAY is in the history, past the settle window
    assert folder.fold(later) == 10  # days 1..10 back
    assert read_fold(client, DAY) is None
    assert folder.fold(later) == 10  # days 11..20 back: DAY among them
    stored = read_fold(client, DAY)
    assert stored is not None
    assert (stored.closed, stored.total("started")) == (True, 1)
    with record_calls(client) as calls:
        assert folder.fold(later) == 0
    assert calls == []


def test_a_day_folded_empty_still_shows_its_buffer_counts(client: StateClient) -> None:
    """A day whose runs the tables no longer hold (expired, or written before folding) folds closed and
    empty; the report then shows the usage buffer's counts of it, and says so."""
    boto3.client("dynamodb", region_name="us-east-1").put_item(
        TableName=client.config.tables.metrics,
        Item={
            "date": {"S": DAY.isoformat()},
            "metric_name": {"S": "#usage#counts"},
            "rs.SIMPLE": {"N": "5"},
            "rf.SIMPLE": {"N": "3"},
        },
    )
    assert fold_day(client, DAY, today=NEXT).closed
    report = UsageReader(client).report(DAY, DAY)
    assert (report["runs"]["started"], report["runs"]["failure_events"]) == (5, 3)
    assert report["counted_from"] == {DAY.isoformat(): BUFFER}


def test_a_stopped_folder_folds_no_further_day(client: StateClient) -> None:
    """After stop() (the worker's SIGTERM) a fold call folds nothing more and writes nothing."""
    folder = UsageFolder(client)
    folder.stop()
    with record_calls(client) as calls:
        assert folder.fold(NEXT) == 0
    assert calls == []


def test_a_day_is_not_folded_closed_in_the_first_moments_after_midnight(
    client: StateClient, clock: FakeClock
) -> None:
    """A run stamped with the day just ended by a process whose clock lags the worker's by a second (or
    still on its way into the by-day index) is counted: the folder does not close a day at 00:00:01."""
    _finished_runs(client, 1)
    clock.now = datetime.combine(NEXT, datetime.min.time(), UTC) + timedelta(seconds=1)
    UsageFolder(client, history_days=3)()
    clock.now = datetime.combine(NEXT, datetime.min.time(), UTC) - timedelta(seconds=1)  # the lagging clock
    _finished_runs(client, 1)
    clock.now = datetime.combine(NEXT, datetime.min.time(), UTC) + timedelta(days=1)
    assert UsageReader(client).report(DAY, DAY)["runs"]["started"] == 2


def test_a_session_edited_to_a_negative_count_is_skipped_not_counted_negative(client: StateClient) -> None:
    """A run whose fail_count was edited to -3 is a malformed item (skipped), never -3 failure events —
    which also made the day's closed fold unreadable, so the report counted that day again every time."""
    _finished_runs(client, 1)
    bad = client.sessions.create().session_id
    item = client.layer.get(client.layer.tables.sessions, {"session_id": bad})
    assert item is not None
    client.layer.put(client.layer.tables.sessions, {**item, "fail_count": -3, "status": "COMPLETED"})
    count = fold_day(client, DAY, today=NEXT)
    assert (count.total("started"), count.total("failure_events"), count.skipped) == (1, 0, 1)
    assert read_fold(client, DAY) is not None


def test_a_day_with_an_unreadable_run_stays_open_until_it_settles(client: StateClient) -> None:
    """A run the mapping cannot read may be an open one: its day is not folded closed before SETTLE_DAYS,
    so once the item is repaired the next fold counts it."""
    _finished_runs(client, 1)
    bad = client.sessions.create().session_id
    item = client.layer.get(client.layer.tables.sessions, {"session_id": bad})
    assert item is not None
    client.layer.put(client.layer.tables.sessions, {**item, "status": "BOGUS"})
    assert not fold_day(client, DAY, today=NEXT).closed
    client.layer.put(client.layer.tables.sessions, {**item, "status": "COMPLETED"})  # repaired
    again = fold_day(client, DAY, today=NEXT)
    assert (again.total("started"), again.skipped, again.closed) == (2, 0, True)


def test_a_run_resumed_the_next_day_counts_its_resume_once(client: StateClient, clock: FakeClock) -> None:
    """A run created on DAY and resumed on NEXT, a day with no run of its own: the worker's buffer counted
    the resume on NEXT, the tables on DAY (its run's day) — the report over both counts it once, as the
    tables do (NEXT's buffered resume is not read as a day whose runs the tables no longer hold)."""
    sid = make_failed_run(client)
    clock.advance(days=1)
    claim = client.claims.claim(client.sessions.candidate(sid), worker_id="w1", lease=timedelta(minutes=5))
    assert claim is not None
    client.claims.handed_over(claim, cooldown=timedelta(minutes=1))
    # What the worker's collector writes for that resume on NEXT (its buffer: the day of the event).
    client.layer.put(
        client.layer.tables.metrics,
        {"date": NEXT.isoformat(), "metric_name": "#usage#counts", "kind": "usage", "rm.SIMPLE": 1},
    )
    assert UsageReader(client).report(DAY, NEXT)["runs"]["resumes"] == 1


def test_forks_and_replays_are_counted_by_fork_point_and_survive_the_fold(client: StateClient) -> None:
    """Forks count under the agent forked from, replays (no overrides) among them; a closed fold keeps them,
    and the report, its CLI table and its HTML page show them."""
    parent = client.sessions.create(pipeline_type="SIMPLE").session_id
    for agent in AGENTS:
        client.executions.start(parent, agent, input_data={"request": "x"})
        client.executions.complete(parent, agent, output_data={"ok": agent})
    client.sessions.fork(parent, from_agent="ui_selection", overrides={"framework": "vue"})
    client.sessions.fork(parent, from_agent="ui_selection")
    client.sessions.fork(parent, from_agent="generation")
    expected = {"ui_selection": {"forks": 2, "replays": 1}, "generation": {"forks": 1, "replays": 1}}
    forks = UsageReader(client).report(DAY, DAY)["forks"]
    assert forks == {"forks": 3, "replays": 2, "by_fork_point": expected}
    fold_day(client, DAY, today=DAY + timedelta(days=30))  # closed: read back as its one item
    stored = read_fold(client, DAY)
    assert stored is not None
    assert stored.closed
    assert UsageReader(client).report(DAY, DAY)["forks"]["by_fork_point"] == expected


def test_the_usage_cli_prints_forks_by_fork_point(
    client: StateClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tdev usage report`'s tables include the forks by fork point when some run was forked."""
    from tdev_metrics.usage_cli import print_report

    parent = _finished_runs(client, 1)[0]
    client.sessions.fork(parent, from_agent="search")
    print_report(UsageReader(client).report(DAY, DAY))
    out = capsys.readouterr().out
    assert "forks of stored runs: 1 (1 replays), by fork point:" in out
    assert "search" in out.split("by fork point:")[1]


def test_a_forks_start_through_the_resume_path_is_not_counted_as_a_recovery(client: StateClient) -> None:
    """A fork started by the worker's resume path and run to its end counts as a run started and completed
    and its start as a resume handed to the pipeline, but not as a recovered run."""
    parent = _finished_runs(client, 1)[0]
    child = client.sessions.fork(parent, from_agent="search").session_id
    resumer = BackgroundResumer(client)
    worker = RecoveryWorker(client, resumer, WorkerConfig(worker_id="w"))
    try:
        result = asyncio.run(worker.resume_now(child))
    finally:
        asyncio.run(worker.shutdown())
    resumer.join()
    assert resumer.errors == []
    assert result.outcome == "resumed"
    assert client.sessions.get(child).resume_count == 1
    runs = UsageReader(client).report(DAY, DAY)["runs"]
    assert (runs["started"], runs["completed"], runs["resumes"], runs["recovered"]) == (2, 2, 1, 0)
