"""fork() after the collector started, on a real endpoint (issue 23.7): a parent and its forked children
(a bare os.fork child that closes its collector, and multiprocessing children that just return) all write
the same keys of one table. Stored = sent, each process under its own writer id."""

from __future__ import annotations

import multiprocessing
import os
import signal
import uuid
from datetime import UTC, date, datetime

from tdev_metrics import CollectorConfig, MetricsCollector, MetricsReader
from tdev_metrics._aggregate import Key
from tdev_metrics._store import item_key
from tdev_state import StateClient

from ..chaos_report import record
from .endpoints import raw_client

NOON = datetime(2026, 11, 26, 12, 30, tzinfo=UTC).timestamp()
DAY = date(2026, 11, 26)
PER_PROCESS = 60


def _record(metrics: MetricsCollector, metric: str, n: int = PER_PROCESS) -> None:
    for i in range(n):
        metrics.record(metric, 1.0, agent_name="parser", timestamp=NOON, error=i % 10 == 0)


def test_forked_children_and_their_parent_store_every_record_exactly_once(client: StateClient) -> None:
    """Parent records 60 and forks three children (one bare os.fork, two multiprocessing 'fork'
    children that never call close) that record 60 each, then records 60 more: 300 stored, 0 twice."""
    fresh = StateClient(client.config)
    metrics = MetricsCollector(fresh, CollectorConfig(flush_interval=3600))  # flusher running, idle
    metric = f"fork_{uuid.uuid4().hex[:6]}"
    _record(metrics, metric)  # buffered in the parent at the fork: the parent's alone

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; the parent asserts what it stored
        signal.alarm(60)
        _record(metrics, metric)
        os._exit(0 if metrics.close() else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

    forking = multiprocessing.get_context("fork")
    children = [forking.Process(target=_record, args=(metrics, metric)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
    assert [c.exitcode for c in children] == [0, 0]

    _record(metrics, metric)
    assert metrics.close()

    sent = 5 * PER_PROCESS
    summaries = MetricsReader(client).daily(metric, start=DAY)
    stored = sum(s.count for s in summaries)
    errors = sum(s.errors for s in summaries)
    item = raw_client("dynamodb", client.config).get_item(
        TableName=client.config.tables.metrics,
        Key={k: {"S": v} for k, v in item_key(Key(int(NOON // 3600), metric, "parser", None)).items()},
        ConsistentRead=True,
    )["Item"]
    writers = sorted(name for name in item if name.startswith("w_"))
    record(
        "fork: collector processes forked after it started (bare os.fork + multiprocessing 'fork')",
        lost=max(0, sent - stored),
        double_counted=max(0, stored - sent),
        records_sent=sent,
        records_stored=stored,
        processes=4,
        writer_ids_on_the_item=len(writers),
    )
    assert (stored, errors) == (sent, 5 * PER_PROCESS // 10)
    assert len(writers) == 4  # the parent and three children, each under its own writer id
