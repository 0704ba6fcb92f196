"""Metrics under faults on a real endpoint: throttling, timeouts after success, SIGTERM, two processes.

Stored totals must equal recorded totals exactly: nothing lost, nothing counted twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

from tdev_metrics import CollectorConfig, MetricsCollector, MetricsReader
from tdev_state import AGENTS, StateClient, StateConfig

from ..chaos_report import record
from ..faults import timeout_after_success

NOON = datetime(2026, 11, 26, 12, 30, tzinfo=UTC).timestamp()
DAY = date(2026, 11, 26)
ROOT = Path(__file__).resolve().parents[2]


def _record_many(collector: MetricsCollector, metric: str, n: int, agents: int = len(AGENTS)) -> None:
    for i in range(n):
        agent = AGENTS[i % agents]
        collector.record(
            metric, float(i % 50), agent_name=agent, timestamp=NOON + (i % 3) * 3600, error=i % 11 == 0
        )


def _expected(n: int) -> tuple[int, float, int]:
    return n, float(sum(i % 50 for i in range(n))), sum(1 for i in range(n) if i % 11 == 0)


def _stored(client: StateClient, metric: str) -> tuple[int, float, int]:
    days = MetricsReader(client).daily(metric, start=DAY)
    return sum(s.count for s in days), sum(s.total for s in days), sum(s.errors for s in days)


def test_exact_totals_under_localstack_throttling(throttling_config: StateConfig) -> None:
    """With 30 % of DynamoDB calls throttled by LocalStack, many small flushes still store exact totals."""
    client = StateClient(throttling_config)
    collector = MetricsCollector(client, CollectorConfig(), start=False)
    metric = f"throttled_{uuid.uuid4().hex[:6]}"
    for _ in range(8):  # 8 flushes x 6 keys: dozens of throttled-and-retried writes
        _record_many(collector, metric, 500, agents=2)
        while not collector.flush():
            time.sleep(0.2)
    count, total, errors = _expected(500)
    stored = _stored(client, metric)
    assert stored == (8 * count, 8 * total, 8 * errors)
    record(
        "metrics flushes with 30 % of DynamoDB calls failing (LocalStack error probability)",
        lost=max(0, 8 * count - stored[0]),
        double_counted=max(0, stored[0] - 8 * count),
        observations=8 * count,
        flushes=8,
        flush_attempts_failed=collector.failed_flushes,
    )


def test_a_timeout_after_a_successful_write_is_not_counted_twice(client: StateClient) -> None:
    """Each of the first five writes lands, then times out and is retried: stored totals stay exact."""
    fresh = StateClient(client.config)
    collector = MetricsCollector(fresh, CollectorConfig(), start=False)
    metric = f"timeouts_{uuid.uuid4().hex[:6]}"
    _record_many(collector, metric, 3000)
    with timeout_after_success(fresh.layer.dynamodb, "UpdateItem", times=5) as counts:
        assert collector.flush()
    assert counts["injected"] == 5
    assert collector.duplicates_ignored == 5
    stored = _stored(client, metric)
    assert stored == _expected(3000)
    record(
        "metrics writes timing out after they landed (retried by botocore)",
        lost=max(0, 3000 - stored[0]),
        double_counted=max(0, stored[0] - 3000),
        observations=3000,
        timeouts_injected=counts["injected"],
        duplicate_writes_recognised=collector.duplicates_ignored,
    )


def _child_env(config: StateConfig) -> dict[str, str]:
    return {
        **os.environ,
        "TDEV_ENV": config.env,
        "AWS_ENDPOINT_URL": config.endpoint_url or "",
        "PYTHONPATH": str(ROOT),
    }


def _child(config: StateConfig, mode: str, out: Path, metric: str, count: int = 0) -> subprocess.Popen[bytes]:
    """A tests.metrics_child process recording `metric` against `config`'s tables."""
    argv = [
        sys.executable,
        "-m",
        "tests.metrics_child",
        "--mode",
        mode,
        "--out",
        str(out),
        "--metric",
        metric,
    ]
    if count:
        argv += ["--count", str(count)]
    return subprocess.Popen(argv, env=_child_env(config), cwd=ROOT)


def test_sigterm_mid_stream_loses_nothing(client: StateClient, tmp_path: Path) -> None:
    """A child recording flat out is sent SIGTERM: what it took in is exactly what is stored."""
    metric = f"sigterm_{uuid.uuid4().hex[:6]}"
    out = tmp_path / "count"
    child = _child(client.config, "stream", out, metric)
    deadline = time.monotonic() + 30
    while not Path(str(out) + ".ready").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) == 0
    recorded = int(out.read_text())
    assert recorded > 10_000
    stored = _stored(client, metric)[0]
    assert stored == recorded
    record(
        "metrics collector SIGTERMed while recording flat out",
        lost=recorded - stored if stored <= recorded else 0,
        double_counted=stored - recorded if stored > recorded else 0,
        observations_recorded=recorded,
        observations_stored=stored,
    )


def test_sigkill_loses_at_most_the_unflushed_buffer_and_counts_nothing_twice(
    client: StateClient, tmp_path: Path
) -> None:
    """SIGKILL gives no chance to flush: what was buffered since the last flush (1 s here) is lost, by
    design. Nothing is counted twice: the store never holds more than was taken in, and a collector started
    afterwards adds exactly its own observations."""
    metric = f"sigkill_{uuid.uuid4().hex[:6]}"
    out = tmp_path / "count"
    child = _child(client.config, "kill", out, metric)
    deadline = time.monotonic() + 30
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(3.3)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    taken_in = int(out.read_text())  # at most 1,000 behind the true count
    stored = _stored(client, metric)[0]
    assert stored <= taken_in + 1000  # nothing counted twice
    # The loss docs/reliability.md states: at most what was buffered since the last confirmed flush, i.e.
    # two flush intervals (1 s each) of records at the child's rate, capped at 20,000/s by its own sleeps.
    assert taken_in - stored <= 2 * 1.0 * 20_000
    assert _child(client.config, "fixed", tmp_path / "later", metric, count=5000).wait(timeout=120) == 0
    assert _stored(client, metric)[0] == stored + 5000
    record(
        "metrics collector SIGKILLed (no flush possible), then a new collector on the same keys",
        lost=max(0, taken_in - stored),
        double_counted=max(0, stored - taken_in - 1000),
        observations_taken_in_at_least=taken_in,
        observations_stored=stored,
        lost_at_most=taken_in + 999 - stored,
        flush_interval_seconds=1.0,
        restarted_collector_added=5000,
    )


def test_two_processes_writing_the_same_keys_sum_correctly(client: StateClient, tmp_path: Path) -> None:
    """Two collector processes, same metric/agent/hour: counts and errors add up exactly."""
    metric = f"twoproc_{uuid.uuid4().hex[:6]}"
    procs = [_child(client.config, "fixed", tmp_path / f"c{i}", metric, count=20000) for i in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    errors = 2 * sum(1 for i in range(20000) if i % 7 == 0)
    assert _stored(client, metric) == (40_000, 40_000.0, errors)
