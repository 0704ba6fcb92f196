"""Metrics collector on moto: exact aggregation, exactly-once writes, bounded memory, the read side."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tdev_metrics
from tdev_metrics import (
    BufferFullError,
    CollectorClosedError,
    CollectorConfig,
    MetricsCollector,
    MetricsReader,
    MetricValidationError,
    record_metric,
)
from tdev_metrics._aggregate import Aggregate, Key
from tdev_metrics._store import MetricsStore, plan_writes
from tdev_metrics.cli import main as metrics_cli
from tdev_state import AGENTS, StateClient, StorageUnavailableError
from tdev_state.testing import FakeClock, LogEntries, make_client

NOON = datetime(2026, 11, 26, 12, 30, tzinfo=UTC).timestamp()
DAY = date(2026, 11, 26)


def collector(client: StateClient, **config: object) -> MetricsCollector:
    return MetricsCollector(client, CollectorConfig(**config), start=False)  # type: ignore[arg-type]


records = st.lists(
    st.tuples(
        st.sampled_from(["agent_execution_time", "tokens"]),
        st.sampled_from(AGENTS[:3]),
        st.integers(min_value=0, max_value=80_000).map(lambda n: n / 8),  # exactly representable sums
        st.booleans(),
        st.integers(min_value=0, max_value=2),  # hour offset
    ),
    max_size=120,
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=records)
def test_stored_totals_equal_recorded_totals(
    aws: None, batch: list[tuple[str, str, float, bool, int]]
) -> None:
    """Whatever is recorded, flushed and read back has exactly the recorded counts, sums and errors."""
    client = make_client(FakeClock(), env=f"m{abs(hash(tuple(batch))) % 10**8}")
    metrics = collector(client)
    expected: dict[tuple[str, str, int], list[float]] = {}
    errors: dict[tuple[str, str, int], int] = {}
    for metric, agent, value, error, hour in batch:
        metrics.record(metric, value, agent_name=agent, timestamp=NOON + hour * 3600, error=error)
        expected.setdefault((metric, agent, 12 + hour), []).append(value)
        errors[(metric, agent, 12 + hour)] = errors.get((metric, agent, 12 + hour), 0) + int(error)
    assert metrics.flush()
    reader = MetricsReader(client)
    got = {
        (s.metric, s.agent, s.hour): s
        for metric in ("agent_execution_time", "tokens")
        for s in reader.hourly(metric, start=DAY)
    }
    assert set(got) == set(expected)
    for key, values in expected.items():
        assert got[key].count == len(values)
        assert got[key].total == sum(values)
        assert got[key].errors == errors[key]
        assert got[key].min == min(values)
        assert got[key].max == max(values)


def test_eight_threads_of_100k_records_are_exact(client: StateClient) -> None:
    """8 threads x 100,000 records: the stored count and sum are exact."""
    metrics = collector(client)

    def work(thread: int) -> None:
        agent = AGENTS[thread % len(AGENTS)]
        for i in range(100_000):
            metrics.record("agent_execution_time", float(i % 10), agent_name=agent, timestamp=NOON)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert metrics.flush()
    daily = MetricsReader(client).daily("agent_execution_time", start=DAY)
    assert sum(s.count for s in daily) == 800_000
    assert sum(s.total for s in daily) == 8 * 100_000 * 4.5


def test_a_repeated_write_is_not_counted_twice(client: StateClient) -> None:
    """Sending the same write again (a retry after a timeout) changes nothing."""
    store = MetricsStore(client.layer, "w1")
    agg = Aggregate()
    for v in (1.0, 2.0, 3.0):
        agg.add(v, error=v > 2)
    key = Key(int(NOON // 3600), "agent_execution_time", "parser", None)
    (write,) = plan_writes(agg, iter(range(1, 100)).__next__)
    assert store.apply(key, write) is True
    assert store.apply(key, write) is False
    (summary,) = MetricsReader(client).hourly("agent_execution_time", start=DAY)
    assert (summary.count, summary.total, summary.errors) == (3, 6.0, 1)


def test_two_collectors_merge_and_keep_min_max(client: StateClient) -> None:
    """Two collectors writing the same key sum their counts; min and max are the global ones."""
    a, b = collector(client), collector(client)
    for v in (5.0, 6.0):
        a.record("agent_execution_time", v, agent_name="search", timestamp=NOON)
    for v in (1.0, 9.0, 7.0):
        b.record("agent_execution_time", v, agent_name="search", timestamp=NOON)
    assert a.flush()
    assert b.flush()
    a.record("agent_execution_time", 0.5, agent_name="search", timestamp=NOON)
    assert a.flush()
    (s,) = MetricsReader(client).hourly("agent_execution_time", start=DAY)
    assert (s.count, s.total, s.min, s.max) == (6, 28.5, 0.5, 9.0)


def test_percentiles_are_within_one_percent(client: StateClient) -> None:
    """p50/p95/p99 from the stored sketch are within 1 % of the exact quantiles; days merge hours."""
    metrics = collector(client)
    values = [1.0 + (i * 7919 % 10_000) / 100 for i in range(10_000)]
    for i, v in enumerate(values):
        metrics.record("agent_execution_time", v, agent_name="generation", timestamp=NOON + (i % 3) * 3600)
    assert metrics.flush()
    (day,) = MetricsReader(client).daily("agent_execution_time", start=DAY)
    ordered = sorted(values)
    for q, got in ((0.5, day.p50), (0.95, day.p95), (0.99, day.p99)):
        exact = ordered[int(q * (len(ordered) - 1))]
        assert got is not None
        assert abs(got - exact) / exact <= 0.011


def test_overflow_is_counted_and_logged(client: StateClient, logs: LogEntries) -> None:
    """Past max_keys new keys are dropped, counted and logged; with overflow="raise" it raises."""
    metrics = collector(client, max_keys=2)
    for agent in AGENTS[:4]:
        metrics.record("m", 1.0, agent_name=agent, timestamp=NOON)
    assert metrics.dropped == 2
    assert any(entry["event"] == "metrics.overflow_dropped" for entry in logs())
    strict = collector(client, max_keys=1, overflow="raise")
    strict.record("m", 1.0, agent_name="parser", timestamp=NOON)
    with pytest.raises(BufferFullError):
        strict.record("m", 1.0, agent_name="search", timestamp=NOON)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("m", float("nan")), "finite"),
        (("m", float("inf")), "finite"),
        (("m", True), "real number"),
        (("m", "3"), "real number"),
        (("", 1.0), "metric_name"),
        (("a#b", 1.0), "metric_name"),
    ],
)
def test_bad_records_are_refused(client: StateClient, args: tuple[object, object], message: str) -> None:
    """Malformed records raise MetricValidationError and buffer nothing."""
    metrics = collector(client)
    with pytest.raises(MetricValidationError, match=message):
        metrics.record(*args, agent_name="parser")  # type: ignore[arg-type]
    with pytest.raises(MetricValidationError, match="unknown agent"):
        metrics.record("m", 1.0, agent_name="coder")
    assert metrics.buffered_keys() == 0


def test_a_failed_flush_keeps_its_data(client: StateClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flush that fails keeps everything; the next one delivers it, once."""
    metrics = collector(client)
    for _ in range(10):
        metrics.record("m", 2.0, agent_name="parser", timestamp=NOON)
    real = MetricsStore.apply
    calls = {"n": 0}

    def flaky(self: MetricsStore, key: Key, write: object) -> bool:
        calls["n"] += 1
        if calls["n"] == 1:
            raise StorageUnavailableError("injected")
        return real(self, key, write)  # type: ignore[arg-type]

    monkeypatch.setattr(MetricsStore, "apply", flaky)
    assert metrics.flush() is False
    metrics.record("m", 2.0, agent_name="parser", timestamp=NOON)  # waits behind the failed write
    assert metrics.flush() is True
    assert metrics.flush() is True
    (s,) = MetricsReader(client).hourly("m", start=DAY)
    assert (s.count, s.total) == (11, 22.0)


def test_close_flushes_and_is_idempotent(client: StateClient) -> None:
    """Leaving `with` flushes; close() twice is fine; record() after close raises."""
    with MetricsCollector(client) as metrics:
        metrics.record("m", 1.0, agent_name="parser", timestamp=NOON)
    assert metrics.close() is True
    with pytest.raises(CollectorClosedError):
        metrics.record("m", 1.0, agent_name="parser")
    assert MetricsReader(client).hourly("m", start=DAY)[0].count == 1


async def test_record_metric_as_the_plan_calls_it(client: StateClient) -> None:
    """await record_metric({...}) with datetime.now() works and only touches memory."""
    metrics = collector(client)
    tdev_metrics.configure(metrics)
    try:
        await record_metric(
            {
                "metric_name": "agent_execution_time",
                "agent_name": "generation",
                "value": 1.25,
                "timestamp": datetime.now(),
            }
        )
        with pytest.raises(MetricValidationError, match="missing"):
            await record_metric({"metric_name": "x", "value": 1})
        assert metrics.buffered_keys() == 1
    finally:
        tdev_metrics.configure(None)


def test_ab_comparison_and_report_cli(
    client: StateClient, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slower variant B shows a significant positive difference; the CLI prints and charts."""
    metrics = collector(client)
    for i in range(400):
        metrics.record("t", 10.0 + (i % 5), agent_name="generation", timestamp=NOON, variant="A")
        metrics.record(
            "t", 12.0 + (i % 5), agent_name="generation", timestamp=NOON, variant="B", error=i % 10 == 0
        )
    assert metrics.flush()
    result = MetricsReader(client).compare("t", agent="generation", variant_a="A", variant_b="B", start=DAY)
    assert result.mean is not None
    assert result.mean.significant
    assert result.mean.low < 2.0 < result.mean.high
    monkeypatch.setenv("TDEV_ENV", client.config.env)
    png = tmp_path / "chart.png"
    assert metrics_cli(["report", "--metric", "t", "--from", "2026-11-26", "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "generation" in capsys.readouterr().out
    code = metrics_cli(
        ["report", "--metric", "t", "--from", "2026-11-26", "--agent", "generation", "--compare", "A", "B"]
    )
    assert code == 0
    assert "significant" in capsys.readouterr().out
    assert metrics_cli(["report", "--metric", "nothing", "--from", "2026-11-26"]) == 1


def test_a_signal_inside_record_is_handled_after_it(client: StateClient) -> None:
    """A signal landing while the main thread is inside record() waits for it, instead of deadlocking."""
    import signal

    from tdev_metrics import install_signal_handlers

    metrics = collector(client)
    fired: list[str] = []
    old = signal.signal(signal.SIGUSR1, lambda num, frame: fired.append("previous handler"))
    try:
        install_signal_handlers(metrics, (signal.SIGUSR1,))
        metrics._local.busy = True
        signal.raise_signal(signal.SIGUSR1)
        assert fired == []
        metrics._local.busy = False
        metrics.record("m", 1.0, agent_name="parser", timestamp=NOON)  # leaving record() runs it
        assert fired == ["previous handler"]
        assert MetricsReader(client).hourly("m", start=DAY)[0].count == 1
    finally:
        signal.signal(signal.SIGUSR1, old)


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(
        st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False), min_size=1
    )
)
def test_folded_buckets_match_ddsketch_mapping(values: list[float]) -> None:
    """The fold puts every value in the bucket ddsketch's own mapping would (zero within limits)."""
    from collections import Counter

    from tdev_metrics._aggregate import sketch_bucket_label

    agg = Aggregate()
    agg.raw = list(values)
    agg.fold()
    assert agg.buckets == Counter(sketch_bucket_label(v) for v in values)
