"""Usage counting on moto: every number of the report equals the tables' ground truth; counting is off
without a collector; a failing sink never fails the pipeline; the plan's client counts into the plan's
collector."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

import boto3
import pytest

import tdev_metrics.usage as usage_module
import tdev_metrics.usage_reader as reader_module
import tdev_state
from tdev_metrics import MetricsCollector
from tdev_metrics._usage_store import ATTRS_PER_WRITE, DURATIONS, UsageStore, UsageWrite
from tdev_metrics.usage import (
    COUNTS,
    RELATIVE_ERROR,
    TECH_NAMES_PER_ITEM,
    bucket_value,
    duration_bucket,
)
from tdev_metrics.usage_reader import UsageReader
from tdev_state import AGENTS, StateClient
from tdev_state.testing import FakeClock, LogEntries
from tdev_state.usage import UsageEvent

from ..usage_mix import assert_report_matches, drive_mix, ground_truth

DAY = date(2026, 11, 26)  # the FakeClock's day


def _metrics_items(client: StateClient) -> list[dict[str, Any]]:
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    return ddb.scan(TableName=client.config.tables.metrics)["Items"]


def test_the_report_equals_the_ground_truth(client: StateClient) -> None:
    """A mix of runs (completed, retried, tolerated, failed-then-recovered, abandoned, in flight, repeated
    calls) and projects: every count of the report equals what raw boto3 finds in the tables."""
    collector = MetricsCollector(client, start=False)
    scope = drive_mix(client)
    assert collector.close()
    report = UsageReader(client).report(DAY, DAY)
    truth = ground_truth(boto3.client("dynamodb", region_name="us-east-1"), client, scope)
    assert_report_matches(report, truth, RELATIVE_ERROR)
    assert report["runs"]["started"] == 6
    assert report["runs"]["recovered"] == 1
    assert {f["agent"]: f["tolerated"] for f in report["funnel"] if f["tolerated"]} == {AGENTS[5]: 1}


def test_three_compact_items_per_day(client: StateClient) -> None:
    """The whole day's usage is three items, whatever the number of runs."""
    collector = MetricsCollector(client, start=False)
    drive_mix(client)
    drive_mix(client)
    assert collector.close()
    usage = [i for i in _metrics_items(client) if i["metric_name"]["S"].startswith("#usage#")]
    assert sorted(i["metric_name"]["S"] for i in usage) == [
        "#usage#counts",
        "#usage#durations",
        "#usage#users",
    ]
    assert UsageReader(client).report(DAY, DAY)["runs"]["started"] == 12


def test_no_collector_nothing_written_and_the_runs_still_counted(client: StateClient) -> None:
    """Without a collector nothing is written to the metrics table, and the report still counts the runs
    from the tables (before: 0 runs, the counts lived only in a collector's buffer)."""
    drive_mix(client)
    assert _metrics_items(client) == []
    assert UsageReader(client).report(DAY, DAY)["runs"]["started"] == 6


def test_a_failing_sink_never_fails_the_pipeline(client: StateClient) -> None:
    """A sink that raises: the transition is applied and returned, the error counted."""

    class Broken:
        def usage(self, event: UsageEvent) -> None:
            raise RuntimeError("sink down")

    client.layer.usage.attach(Broken())
    sid = client.sessions.create(user_id="u").session_id
    client.executions.start(sid, AGENTS[0])
    assert client.executions.complete(sid, AGENTS[0], output_data={"a": 1}).status.value == "COMPLETED"
    assert client.layer.usage.sink_errors == 4  # run_started, user_active, agent_started, agent_completed


def test_runs_are_held_until_they_end(client: StateClient) -> None:
    """A run's events reach the table together when it ends (one flush per run), not piece by piece."""
    collector = MetricsCollector(client, start=False)
    sid = client.sessions.create(user_id="held").session_id
    for agent in AGENTS[:4]:
        client.executions.start(sid, agent)
        client.executions.complete(sid, agent, output_data={"a": 1})
    assert collector.flush()
    (counts,) = [i for i in _metrics_items(client) if i["metric_name"]["S"] == COUNTS]
    assert counts["rs.SIMPLE"] == {"N": "1"}  # the start is written at once (a crash must not lose it)
    assert [k for k in counts if k[:2] in ("as", "ac")] == []  # the agents are held: the run is going on
    for agent in AGENTS[4:]:
        client.executions.start(sid, agent)
        client.executions.complete(sid, agent, output_data={"a": 1})
    assert collector.flush()
    funnel = {f["agent"]: f for f in UsageReader(client).report(DAY, DAY)["funnel"]}
    assert funnel[AGENTS[-1]]["completed"] == 1
    assert collector.usage_buffer.held_runs() == 0
    collector.close()


def test_the_plans_client_counts_into_the_plans_collector(
    aws: None, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`from tdev_metrics import record_metric` registers the plan's collector: the plan's own client,
    built from the environment, sends its usage there."""
    import asyncio

    from tdev_metrics import plan as metrics_plan
    from tdev_state import save_pipeline_session

    monkeypatch.setenv("TDEV_ENV", "planusage")
    StateClient(tdev_state.StateConfig(env="planusage")).create_tables()
    tdev_state.configure(None)
    metrics_plan.configure(None)
    try:
        asyncio.run(save_pipeline_session({"session_id": "plan-run", "status": "ACTIVE"}))
        collector = metrics_plan.default_collector()
        assert collector.close()
        reader = UsageReader(StateClient(tdev_state.StateConfig(env="planusage")))
        today = datetime.now(UTC).date()  # the plan's client has the real clock
        assert reader.report(today, today)["runs"]["started"] == 1
    finally:
        tdev_state.configure(None)
        metrics_plan.configure(None)


def test_histogram_buckets_bound_the_relative_error() -> None:
    """Every value is within RELATIVE_ERROR of its bucket's representative."""
    for seconds in (0.0011, 0.5, 1.0, 1.19, 7.3, 61.0, 3599.0, 86_000.0):
        value = bucket_value(duration_bucket(seconds))
        assert abs(value - seconds) <= RELATIVE_ERROR * seconds + 1e-12, seconds


def test_report_validates_its_range(client: StateClient) -> None:
    from tdev_metrics.exceptions import MetricValidationError

    reader = UsageReader(client)
    with pytest.raises(MetricValidationError, match="before"):
        reader.report(DAY, date(2026, 11, 1))
    with pytest.raises(MetricValidationError, match="366"):
        reader.report(date(2024, 1, 1), DAY)
    with pytest.raises(MetricValidationError, match="must be a date"):
        reader.report("2026-11-01", DAY)  # type: ignore[arg-type]


def test_tdev_usage_report_json_png_html(
    client: StateClient, tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tdev usage report --json` has the documented shape; --png and --html are written; stored strings
    (a tech stack called <script>) are escaped in the page; a range with no runs is exit 1."""
    from tdev_state.cli import main as tdev

    monkeypatch.setenv("TDEV_ENV", client.config.env)
    collector = MetricsCollector(client, start=False)
    drive_mix(client)
    client.projects.save(
        user_id="x", project_id="xss", project_name="p", tech_stack=["<script>alert(1)</script>"]
    )
    assert collector.close()
    png, page = tmp_path / "usage.png", tmp_path / "usage.html"
    argv = ["usage", "report", "--from", "2026-11-26", "--to", "2026-11-26", "--json", "--png", str(png)]
    assert tdev([*argv, "--html", str(page)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) >= {"from", "to", "runs", "funnel", "duration_seconds", "projects", "active_users",
                           "busiest_hours_utc"}  # fmt: skip
    assert set(report["runs"]) >= {
        "started",
        "completed",
        "failed",
        "abandoned",
        "recovered",
        "by_pipeline_type",
    }
    assert set(report["runs"]["by_pipeline_type"]) >= {"SIMPLE", "PRODUCTION"}
    assert [r["agent"] for r in report["funnel"]] == list(AGENTS)
    assert set(report["funnel"][0]) >= {"agent", "started", "completed", "failed", "retries"}
    assert set(report["duration_seconds"]["run"]) == {"p50", "p95"}
    assert set(report["duration_seconds"]["agents"]) == set(AGENTS)
    assert png.read_bytes()[:4] == b"\x89PNG"
    text = page.read_text()
    assert "<script>alert(1)" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert tdev(["usage", "report", "--from", "2026-10-01", "--to", "2026-10-01"]) == 1
    assert tdev(["usage", "report", "--from", "2026-11-30", "--to", "2026-11-01"]) == 2
    assert tdev(["usage", "report"]) in (0, 1)
    human = capsys.readouterr().out
    assert "funnel" in human


# --- issue 23.8: bounded usage items, exactly once across shards ---------------------------------------


def _store_write(client: StateClient, writer: str, seq: int, **attrs: int) -> tuple[UsageStore, UsageWrite]:
    return UsageStore(client.layer, writer), UsageWrite("2026-11-26", COUNTS, seq, attrs=dict(attrs))


def test_a_retry_of_a_write_that_landed_before_its_shard_filled_is_recognised(client: StateClient) -> None:
    """A write lands on shard 0, the shard is then marked full, the write is retried (its reply was lost):
    it is recognised as applied — not moved to shard 1 and counted again."""
    store, write = _store_write(client, "w1", 10, **{"p.saved": 1})
    assert store.apply(write)
    store._mark_full(write.day, COUNTS, 0)
    assert store.apply(write) is False
    assert write.shard == 0
    assert UsageReader(client).report(DAY, DAY)["projects"]["saved"] == 1


def test_a_write_refused_by_a_full_shard_moves_on_with_its_sequence_number(client: StateClient) -> None:
    """Another writer marked shard 0 full: this writer's write is refused there, lands on shard 1 once."""
    other, first = _store_write(client, "w1", 10, **{"p.saved": 1})
    assert other.apply(first)
    other._mark_full(first.day, COUNTS, 0)
    store, write = _store_write(client, "w2", 5, **{"p.saved": 2})
    assert store.apply(write)
    assert (write.shard, store.shard_moves) == (1, 1)
    assert store.apply(write) is False  # a retry on shard 1 is recognised there
    assert UsageReader(client).report(DAY, DAY)["projects"]["saved"] == 3


@pytest.mark.parametrize("seconds", [float("nan"), float("inf"), -1.0, 1e9])
def test_odd_durations_are_clamped_and_counted(client: StateClient, seconds: float) -> None:
    """A NaN/infinite/negative/huge duration raised inside the sink (the event was lost); now it is
    clamped into the histogram's end bucket and counted as clamped."""
    collector = MetricsCollector(client, start=False, usage=False)
    at = datetime(2026, 11, 26, 12, tzinfo=UTC)
    collector.usage(UsageEvent(kind="run_started", at=at, pipeline_type="SIMPLE"))  # a run of that day
    collector.usage(UsageEvent(kind="run_completed", at=at, pipeline_type="SIMPLE", seconds=seconds))
    assert collector.close()
    report = UsageReader(client).report(DAY, DAY)
    assert report["runs"]["completed"] == 1
    assert report["capped"]["durations_clamped"] == 1
    assert report["duration_seconds"]["run"]["p50"] is not None


def test_an_unknown_pipeline_type_counts_as_other(client: StateClient) -> None:
    """A free-text pipeline type would add attributes without bound: it is counted under OTHER."""
    collector = MetricsCollector(client, start=False, usage=False)
    at = datetime(2026, 11, 26, 12, tzinfo=UTC)
    for kind in ("custom-1", "custom-2", "SIMPLE"):
        collector.usage(UsageEvent(kind="run_started", at=at, pipeline_type=kind))
    assert collector.close()
    by_type = UsageReader(client).report(DAY, DAY)["runs"]["by_pipeline_type"]
    assert (by_type["OTHER"]["started"], by_type["SIMPLE"]["started"]) == (2, 1)


def test_a_usage_write_refused_as_invalid_is_dropped_counted_and_the_rest_flow(
    client: StateClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A counts write DynamoDB refuses as invalid was kept and retried forever (every flush failed); now
    it is dropped and counted, and the users write of the same flush lands."""
    collector = MetricsCollector(client, start=False, usage=False)
    buffer = collector.usage_buffer
    real = buffer.store.apply

    def refuse_counts(write: UsageWrite) -> bool:
        if write.family == COUNTS:
            raise tdev_state.ValidationError("refused by DynamoDB as invalid")
        return real(write)

    monkeypatch.setattr(buffer.store, "apply", refuse_counts)
    at = datetime(2026, 11, 26, 12, tzinfo=UTC)
    collector.usage(UsageEvent(kind="project_saved", at=at, tech_stack=("react",)))
    collector.usage(UsageEvent(kind="user_active", at=at, user_id="u1"))
    assert collector.flush()
    assert buffer.dropped_writes == 1
    assert UsageReader(client).report(DAY, DAY)["active_users"]["total_distinct"] == 1


def test_a_flush_of_many_attributes_is_split_into_bounded_writes(client: StateClient) -> None:
    """1,000 distinct counters in one flush go as writes of at most ATTRS_PER_WRITE attributes each."""
    collector = MetricsCollector(client, start=False, usage=False)
    at = datetime(2026, 11, 26, 12, tzinfo=UTC)
    names = tuple(f"stack-{i}" for i in range(1000))
    collector.usage(UsageEvent(kind="project_saved", at=at, tech_stack=names))
    calls: list[int] = []
    real = client.layer.update

    def count(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(kwargs.get("names") or {}))
        return real(*args, **kwargs)

    client.layer.update = count  # type: ignore[method-assign]
    assert collector.close()
    assert max(calls) <= ATTRS_PER_WRITE + 4  # + kind, writer, full, expires_at
    report = UsageReader(client).report(DAY, DAY)
    named = sum(s["projects"] for s in report["projects"]["tech_stack"])
    assert named + report["projects"]["tech_stack_other"] == 1000


def test_the_report_shows_what_was_capped(
    client: StateClient, tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tech-stack entries counted as other and clamped durations are in the JSON, the terminal report and
    the HTML page."""
    from tdev_state.cli import main as tdev

    monkeypatch.setenv("TDEV_ENV", client.config.env)
    collector = MetricsCollector(client, start=False, usage=False)
    at = datetime(2026, 11, 26, 12, tzinfo=UTC)
    collector.usage(UsageEvent(kind="run_started", at=at, pipeline_type="SIMPLE"))
    collector.usage(UsageEvent(kind="run_completed", at=at, pipeline_type="SIMPLE", seconds=1e9))
    collector.usage(
        UsageEvent(
            kind="project_saved", at=at, tech_stack=tuple(f"s{i}" for i in range(TECH_NAMES_PER_ITEM + 7))
        )
    )
    assert collector.close()
    argv = ["usage", "report", "--from", "2026-11-26", "--to", "2026-11-26"]
    assert tdev([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["capped"]["tech_stack_entries_as_other"] == report["projects"]["tech_stack_other"] == 7
    assert report["capped"]["durations_clamped"] == 1
    page = tmp_path / "usage.html"
    assert tdev([*argv, "--html", str(page)]) == 0
    assert "7 tech-stack entries counted as other" in " ".join(capsys.readouterr().out.split())
    assert "(other)" in page.read_text()


def test_a_usage_write_that_crashes_is_dropped_counted_and_logged(
    client: StateClient, monkeypatch: pytest.MonkeyPatch, logs: LogEntries
) -> None:
    """An unexpected exception in one usage write (a bug, not the store) is counted and logged; the
    flush goes on with the other items and is not stuck on it next time."""
    collector = MetricsCollector(client, start=False, usage=False)
    buffer = collector.usage_buffer
    real = buffer.store.apply

    def crash_on_durations(write: UsageWrite) -> bool:
        if write.family == DURATIONS:
            raise TypeError("a bug in the write path")
        return real(write)

    monkeypatch.setattr(buffer.store, "apply", crash_on_durations)
    at = datetime(2026, 11, 26, 12, tzinfo=UTC)
    collector.usage(UsageEvent(kind="run_started", at=at, pipeline_type="SIMPLE"))  # a run of that day
    collector.usage(UsageEvent(kind="run_completed", at=at, pipeline_type="SIMPLE", seconds=3.0))
    assert collector.flush()
    assert collector.flush()
    assert buffer.dropped_writes == 1
    assert any(e["event"] == "usage.write_crashed" for e in logs())
    assert UsageReader(client).report(DAY, DAY)["runs"]["completed"] == 1


def test_a_long_running_writer_forgets_old_days(client: StateClient) -> None:
    """Shard views and users already sent are kept for the last two days written, not forever."""
    collector = MetricsCollector(client, start=False, usage=False)
    for day in range(1, 6):
        at = datetime(2026, 11, day, 12, tzinfo=UTC)
        collector.usage(UsageEvent(kind="run_started", at=at, pipeline_type="SIMPLE"))
        collector.usage(UsageEvent(kind="user_active", at=at, user_id="u"))
        assert collector.flush()
    assert collector.usage_buffer.store.days() == {"2026-11-04", "2026-11-05"}
    assert set(collector.usage_buffer._users_sent) == {"2026-11-04", "2026-11-05"}


# --- counters keyed by agent name; days stored under the old positional keys ---------------------------


def _put_usage_day(client: StateClient, **attrs: Any) -> None:
    """Write a day's counts and durations items by hand, as an older collector left them (with a run
    started that day, as every such day has: the tables no longer hold it)."""
    attrs = {"rs.SIMPLE": 1, **attrs}
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    table = client.config.tables.metrics
    counts = {k: {"N": str(v)} for k, v in attrs.items() if not k.startswith("d:")}
    durations = {k[2:]: {"N": str(v)} for k, v in attrs.items() if k.startswith("d:")}
    for name, values in ((COUNTS, counts), (DURATIONS, durations)):
        item = {"date": {"S": DAY.isoformat()}, "metric_name": {"S": name}, "kind": {"S": "usage"}, **values}
        ddb.put_item(TableName=table, Item=item)


def test_agent_counters_are_stored_under_the_agent_name(client: StateClient) -> None:
    """A completed agent is counted as `ac.<name>` with its duration in series `a.<name>`, not by position."""
    collector = MetricsCollector(client, start=False)
    sid = client.sessions.create(user_id="named").session_id
    client.executions.start(sid, "nl_input")
    client.executions.complete(sid, "nl_input", output_data={"a": 1})
    assert collector.close()
    items = {i["metric_name"]["S"]: i for i in _metrics_items(client)}
    assert (items[COUNTS]["as.nl_input"], items[COUNTS]["ac.nl_input"]) == ({"N": "1"}, {"N": "1"})
    assert [k for k in items[DURATIONS] if k.startswith("a.")] != []
    assert all(k.startswith("a.nl_input.") for k in items[DURATIONS] if k.startswith("a"))


def test_a_day_stored_under_positional_keys_reads_by_the_legacy_order(
    client: StateClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An old day (`ac8`, `a6.23`) is read through LEGACY_AGENTS even after an agent was inserted before
    `download`: position 8 stays download, never the new agent now declared at that place."""
    inserted = (*usage_module.LEGACY_AGENTS[:8], "review", usage_module.LEGACY_AGENTS[8])
    monkeypatch.setattr(reader_module, "AGENTS", inserted)
    _put_usage_day(
        client, **{"as0": 5, "ac0": 5, "ac6": 4, "af6": 1, "ar6": 1, "at5": 1, "ac8": 3, "d:a6.23": 4}
    )
    funnel = {f["agent"]: f for f in UsageReader(client).report(DAY, DAY)["funnel"]}
    assert list(funnel) == list(inserted)
    assert (funnel["download"]["completed"], funnel["review"]["completed"]) == (3, 0)
    assert (funnel["nl_input"]["started"], funnel["generation"]["completed"]) == (5, 4)
    generation = funnel["generation"]
    assert (generation["failed"], generation["retries"], funnel["search"]["tolerated"]) == (1, 1, 1)


def test_old_and_new_keys_of_one_day_add_up(client: StateClient) -> None:
    """A day written partly by an old collector (positional) and partly by a new one (named) sums both."""
    _put_usage_day(client, **{"ac6": 2, "ac.generation": 3})
    report = UsageReader(client).report(DAY, DAY)
    generation = next(f for f in report["funnel"] if f["agent"] == "generation")
    assert generation["completed"] == 5


def test_a_stored_agent_no_longer_declared_is_still_reported(client: StateClient) -> None:
    """Counters of an agent removed from the declaration since are listed after the declared agents."""
    _put_usage_day(client, **{"ac.legacy_step": 2, "ac.parser": 1})
    funnel = UsageReader(client).report(DAY, DAY)["funnel"]
    assert [f["agent"] for f in funnel] == [*AGENTS, "legacy_step"]
    assert funnel[-1]["completed"] == 2
