"""One bad metric must never stop the others: refused at record(), or dropped and counted at flush, and the
flusher thread survives anything (issue: a poison metric silently stopped all metrics)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

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

from ..conftest import LogEntries

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
