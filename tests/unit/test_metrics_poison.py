"""One bad metric must never stop the others: refused at record(), or dropped and counted at flush, and the
flusher thread survives anything (issue: a poison metric silently stopped all metrics)."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

import tdev_metrics
from tdev_metrics import (
    CollectorConfig,
    MetricsCollector,
    MetricsReader,
    MetricValidationError,
    record_metric,
)
from tdev_metrics._store import Write
from tdev_state import StateClient, ValidationError
from tdev_state.testing import LogEntries

NOW = time.time()
TODAY = datetime.fromtimestamp(NOW, UTC).date()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timestamp": NOW * 1000}, "looks like milliseconds"),
        ({"timestamp": datetime.max}, "not a moment"),
        ({"timestamp": datetime(1969, 1, 1, tzinfo=UTC)}, "not a moment"),
        ({"timestamp": NOW + 3 * 86_400}, "a day from now"),
        ({"value": 1e63}, "outside what the metrics table"),
        ({"value": 1e-200}, "outside what the metrics table"),
        ({"error": "false"}, "True or False"),
    ],
)
def test_what_cannot_be_stored_is_refused_at_record(
    client: StateClient, kwargs: dict[str, object], message: str
) -> None:
    """Millisecond timestamps, datetime.max, values whose square leaves DynamoDB's range: refused."""
    metrics = MetricsCollector(client, start=False)
    args: dict[str, object] = {"value": 1.0, "agent_name": "parser", **kwargs}
    value = args.pop("value")
    with pytest.raises(MetricValidationError, match=message):
        metrics.record("agent_execution_time", value, **args)  # type: ignore[arg-type]
    assert metrics.buffered_keys() == 0


def test_a_write_the_store_refuses_is_dropped_counted_and_the_rest_flows(
    client: StateClient, monkeypatch: pytest.MonkeyPatch, logs: LogEntries
) -> None:
    """A write that can never be applied is dropped (counted, logged); the 100 records after it all land."""
    metrics = MetricsCollector(client, CollectorConfig(flush_interval=0.05))
    metrics.record("poison", 1.0, agent_name="parser")
    real = metrics._store.apply

    def refuse_poison(key: tdev_metrics._aggregate.Key, write: Write) -> bool:
        if key.metric == "poison":
            raise ValidationError("sumsq holds a number DynamoDB cannot store")
        return real(key, write)

    monkeypatch.setattr(metrics._store, "apply", refuse_poison)
    for _ in range(100):
        metrics.record("agent_execution_time", 2.0, agent_name="search")
    assert metrics.close()
    assert metrics.dropped_writes == 1
    assert any(e["event"] == "flush.write_dropped" and e["tdev_metrics_dropped_total"] == 1 for e in logs())
    (summary,) = MetricsReader(client).daily("agent_execution_time", start=TODAY)
    assert summary.count == 100


def test_the_flusher_thread_survives_any_exception(
    client: StateClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error inside a flush is counted and logged; the thread keeps flushing afterwards."""
    metrics = MetricsCollector(client, CollectorConfig(flush_interval=0.02, max_backoff=0.05))
    real, calls = metrics._collect, {"n": 0}

    def explode_once() -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        real()

    monkeypatch.setattr(metrics, "_collect", explode_once)
    metrics.record("agent_execution_time", 1.0, agent_name="parser")
    deadline = time.monotonic() + 5
    while metrics.records < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert metrics._thread is not None
    assert metrics._thread.is_alive()
    assert metrics.flusher_errors == 1
    assert metrics.records == 1
    metrics.close()


def test_the_agent_allow_list_refuses_on_every_call(client: StateClient) -> None:
    """An unknown agent is refused the second time too, and a metric or variant name is not an agent."""
    metrics = MetricsCollector(client, start=False)
    for _ in range(2):
        with pytest.raises(MetricValidationError, match="unknown agent"):
            metrics.record("m", 1.0, agent_name="bogus")
    metrics.record("latency", 1.0, agent_name="parser", variant="B")
    for name in ("latency", "B"):
        with pytest.raises(MetricValidationError, match="unknown agent"):
            metrics.record("m", 1.0, agent_name=name)


def test_two_collectors_given_one_writer_id_do_not_drop_each_other(client: StateClient) -> None:
    """Writer ids are unique by construction: 10 + 10 records from two same-named collectors are 20."""
    a = MetricsCollector(client, start=False, writer_id="pipeline")
    b = MetricsCollector(client, start=False, writer_id="pipeline")
    assert a.writer_id != b.writer_id
    for _ in range(10):
        a.record("agent_execution_time", 1.0, agent_name="parser")
        b.record("agent_execution_time", 1.0, agent_name="parser")
    assert a.flush()
    assert b.flush()
    (summary,) = MetricsReader(client).daily("agent_execution_time", start=TODAY)
    assert summary.count == 20


async def test_record_metric_error_must_be_a_bool(client: StateClient) -> None:
    """`error="false"` was counted as an error; now it is refused."""
    tdev_metrics.configure(MetricsCollector(client, start=False))
    try:
        with pytest.raises(MetricValidationError, match="True or False"):
            await record_metric({"metric_name": "m", "agent_name": "parser", "value": 1.0, "error": "false"})
    finally:
        tdev_metrics.configure(None)


# --- issue 23.16: every odd value is accepted exactly or refused with the package's error ---------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (10**400, "outside what the metrics table"),
        (-(10**400), "outside what the metrics table"),
        (10**5000, "outside what the metrics table"),  # repr() of it raises ValueError on 3.11+
        (2**53 + 1, "more significant bits"),
        (Decimal("0.1"), "no exact float value"),
        (Decimal("1e400"), "outside what the metrics table"),
        (Decimal("sNaN"), "cannot be converted"),
        (Decimal("NaN"), "finite"),
        (Fraction(1, 3), "no exact float value"),
        (1 + 2j, "real number"),
        (True, "real number"),
        ("1.5", "real number"),
        (None, "real number"),
        (-math.inf, "finite"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, int) else None,  # pytest itself cannot str(10**5000)
)
def test_odd_values_are_refused_with_the_typed_error(
    client: StateClient, value: object, message: str
) -> None:
    """Huge ints, inexact Decimals/Fractions, signalling NaN, complex, bool, str: MetricValidationError."""
    metrics = MetricsCollector(client, start=False)
    with pytest.raises(MetricValidationError, match=message):
        metrics.record("latency", value, agent_name="parser")  # type: ignore[arg-type]
    assert metrics.buffered_keys() == 0


def test_numpy_scalars_are_accepted_or_refused_like_their_values(client: StateClient) -> None:
    """numpy float/int scalars count as the floats they equal; numpy NaN and bool_ are refused."""
    metrics = MetricsCollector(client, start=False)
    for bad, message in (
        (np.float64("nan"), "finite"),
        (np.float32("inf"), "finite"),
        (np.bool_(True), "real"),
    ):
        with pytest.raises(MetricValidationError, match=message):
            metrics.record("latency", bad, agent_name="parser")  # type: ignore[arg-type]
    for good in (np.float64(2.5), np.float32(0.5), np.int64(3), np.int8(-4)):
        metrics.record("latency", good, agent_name="parser")  # type: ignore[arg-type]
    assert metrics.flush()
    (summary,) = MetricsReader(client).daily("latency", start=TODAY)
    assert (summary.count, summary.total, summary.min, summary.max) == (4, 2.0, -4.0, 3.0)


def test_exact_decimals_fractions_and_negative_values_are_stored_exactly(client: StateClient) -> None:
    """Decimal("1.5"), Fraction(1, 4), -2 and -0.0 are the floats they equal: sums and min/max exact."""
    metrics = MetricsCollector(client, start=False)
    for value in (Decimal("1.5"), Fraction(1, 4), -2, -0.0, 2**60):
        metrics.record("latency", value, agent_name="parser")  # type: ignore[arg-type]
    assert metrics.flush()
    (summary,) = MetricsReader(client).daily("latency", start=TODAY)
    assert (summary.count, summary.total, summary.min, summary.max) == (5, 2.0**60 - 0.25, -2.0, 2.0**60)


@pytest.mark.parametrize(
    ("timestamp", "message"),
    [(10**400, "not a moment"), (-(10**5000), "not a moment"), (math.nan, "not a moment"), (True, "epoch")],
    ids=["1e400", "-1e5000", "nan", "bool"],
)
def test_odd_timestamps_are_refused_with_the_typed_error(
    client: StateClient, timestamp: object, message: str
) -> None:
    """A timestamp of 10**400 raised a raw OverflowError; now every odd one is MetricValidationError."""
    metrics = MetricsCollector(client, start=False)
    with pytest.raises(MetricValidationError, match=message):
        metrics.record("latency", 1.0, agent_name="parser", timestamp=timestamp)  # type: ignore[arg-type]


def test_a_timestamp_whose_timezone_raises_is_refused(client: StateClient) -> None:
    """A datetime whose tzinfo.utcoffset() raises is refused with the typed error, not the tzinfo's."""

    class Broken(tzinfo):
        def utcoffset(self, dt: datetime | None) -> timedelta:
            raise RuntimeError("broken tz")

        def dst(self, dt: datetime | None) -> timedelta:
            return timedelta(0)

        def tzname(self, dt: datetime | None) -> str:
            return "broken"

    metrics = MetricsCollector(client, start=False)
    with pytest.raises(MetricValidationError, match="not a moment"):
        metrics.record("latency", 1.0, agent_name="parser", timestamp=datetime(2026, 1, 1, tzinfo=Broken()))


@pytest.mark.parametrize(
    "metric",
    [
        {"metric_name": "m", "agent_name": "parser", "value": 10**400},
        {"metric_name": "m", "agent_name": "parser", "value": 1.0, 1: "x", "z": "y"},
        {"metric_name": "m\ud800", "agent_name": "parser", "value": 1.0},
        {"metric_name": "m", "agent_name": "parser\x1b[2J", "value": 1.0},
    ],
)
async def test_record_metric_refuses_odd_input_with_the_typed_error(
    client: StateClient, metric: dict[object, object]
) -> None:
    """record_metric(value=10**400) raised OverflowError; mixed-type keys a TypeError: now typed errors."""
    tdev_metrics.configure(MetricsCollector(client, start=False))
    try:
        with pytest.raises(MetricValidationError):
            await record_metric(metric)  # type: ignore[arg-type]
    finally:
        tdev_metrics.configure(None)


def test_a_write_that_crashes_is_dropped_counted_and_the_other_keys_flow(
    client: StateClient, monkeypatch: pytest.MonkeyPatch, logs: LogEntries
) -> None:
    """An unexpected exception for one key's write (not a store error) no longer stops the keys after it
    in every later flush: it is dropped, counted and logged; the other keys land."""
    metrics = MetricsCollector(client, start=False)
    metrics.record("poison", 1.0, agent_name="parser")
    real = metrics._store.apply

    def crash_on_poison(key: tdev_metrics._aggregate.Key, write: Write) -> bool:
        if key.metric == "poison":
            raise TypeError("a bug in the write path")
        return real(key, write)

    monkeypatch.setattr(metrics._store, "apply", crash_on_poison)
    for agent in ("search", "generation"):
        metrics.record("agent_execution_time", 2.0, agent_name=agent)
    assert metrics.flush()
    assert metrics.dropped_writes == 1
    assert metrics.buffered_keys() == 0
    assert any(e["event"] == "flush.write_crashed" for e in logs())
    assert sum(s.count for s in MetricsReader(client).daily("agent_execution_time", start=TODAY)) == 2
