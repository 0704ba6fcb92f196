"""fork() after the collector started (issue 23.7): the child is a new writer with its own flusher and
nothing of the parent's buffer; locks held at the fork do not deadlock the child.

These fork for real. moto's tables live in each process's memory, so the child checks what it stored in
its own copy and reports back through a pipe; the parent checks its side. Both sides writing one shared
table is tests/integration/test_metrics_fork_it.py.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import pytest

from tdev_metrics import CollectorConfig, MetricsCollector, MetricsReader
from tdev_state import StateClient

NOON = datetime(2026, 11, 26, 12, 30, tzinfo=UTC).timestamp()
DAY = date(2026, 11, 26)

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")


def _stored(client: StateClient, metric: str) -> int:
    return sum(s.count for s in MetricsReader(client).daily(metric, start=DAY))


def in_child(body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run `body` in a forked child; return what it returned (or its error). The child never returns into
    pytest: it leaves with os._exit, after an alarm that turns a deadlock into a failure."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child; its result is asserted by the parent
        os.close(read)
        signal.alarm(30)
        try:
            result = body()
        except BaseException as exc:
            result = {"error": repr(exc)}
        with os.fdopen(write, "w") as out:
            out.write(json.dumps(result))
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as inp:
        text = inp.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"child died: {os.waitstatus_to_exitcode(status)}"
    reported: dict[str, Any] = json.loads(text)
    return reported


def test_a_forked_child_is_a_new_writer_that_stores_only_its_own_records(client: StateClient) -> None:
    """Parent buffers 10 and forks; the child records 7 and closes: the child stores 7 (not 17) under a
    new writer id; the parent still stores its 10."""
    metrics = MetricsCollector(client, CollectorConfig(flush_interval=3600))  # the flusher runs, idle
    for _ in range(10):
        metrics.record("forked", 1.0, agent_name="parser", timestamp=NOON)

    def child() -> dict[str, Any]:
        for _ in range(7):
            metrics.record("forked", 1.0, agent_name="parser", timestamp=NOON)
        flusher = metrics._thread is not None and metrics._thread.is_alive()
        assert metrics.close()
        return {
            "writer": metrics.writer_id,
            "forked_from": getattr(metrics, "forked_from", None),
            "stored": _stored(client, "forked"),
            "records": metrics.records,
            "flusher": flusher,
        }

    seen = in_child(child)
    assert seen.get("error") is None
    assert seen["writer"] != metrics.writer_id
    assert seen["forked_from"] == metrics.writer_id
    assert (seen["stored"], seen["records"], seen["flusher"]) == (7, 7, True)
    assert metrics.close()
    assert _stored(client, "forked") == 10  # the parent's copy of the table: its own 10


def test_a_lock_held_by_another_thread_at_the_fork_does_not_deadlock_the_child(client: StateClient) -> None:
    """A flush in progress in another thread holds the flush lock at the fork: the child still records
    and flushes (before the fix it waited forever on the inherited, never released lock)."""
    metrics = MetricsCollector(client, start=False)
    metrics.record("held", 1.0, agent_name="parser", timestamp=NOON)
    shard = metrics._local.shard
    with metrics._flush_lock, shard.lock:

        def child() -> dict[str, Any]:
            metrics.record("held", 1.0, agent_name="parser", timestamp=NOON)
            return {"flushed": metrics.flush(), "stored": _stored(client, "held")}

        seen = in_child(child)
    assert seen == {"flushed": True, "stored": 1}
    assert metrics.flush()
    assert _stored(client, "held") == 1


def test_usage_buffered_before_the_fork_stays_with_the_parent(client: StateClient) -> None:
    """Usage events buffered before the fork are the parent's: the child's close writes none of them."""
    metrics = MetricsCollector(client, start=False)
    client.sessions.create(user_id="u1")  # run_started + user_active, buffered in the parent

    def child() -> dict[str, Any]:
        assert metrics.close()
        return {"held": metrics.usage_buffer.events}

    assert in_child(child) == {"held": 0}
    assert metrics.usage_buffer.events == 2


def test_a_child_forked_from_a_closed_collector_refuses_records(client: StateClient) -> None:
    """A collector closed before the fork stays closed in the child: record() raises the typed error."""
    metrics = MetricsCollector(client, start=False)
    assert metrics.close()

    def child() -> dict[str, Any]:
        try:
            metrics.record("m", 1.0, agent_name="parser")
        except Exception as exc:
            return {"raised": type(exc).__name__}
        return {"raised": None}

    assert in_child(child) == {"raised": "CollectorClosedError"}
