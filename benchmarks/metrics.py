"""Metrics-collector benchmarks (issue #5).

1. record() cost per call, p50 over batches, at 1 and 8 threads, against prometheus_client's Summary.observe
   measured in the same run (ratios, not absolute timings, are the comparable figure);
2. write units per 1M records, against distinct keys x flushes (from ConsumedCapacity on the endpoint);
3. peak memory (tracemalloc) with the buffer full: max_keys keys, each with a folded sketch.
"""

from __future__ import annotations

import statistics
import threading
import time
import tracemalloc
import uuid
from typing import Any

from prometheus_client import CollectorRegistry, Summary

from tdev_metrics import CollectorConfig, MetricsCollector
from tdev_state import AGENTS, StateClient

NOON = 1795696200.0


def _per_call_ns(fn: Any, threads: int, calls: int = 200_000, batch: int = 1000) -> float:
    """Median over batches of (batch wall time / batch size), all threads running at once."""
    samples: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def work(t: int) -> None:
        local: list[float] = []
        start.wait()
        for b in range(calls // batch):
            t0 = time.perf_counter_ns()
            for i in range(batch):
                fn(t, b * batch + i)
            local.append((time.perf_counter_ns() - t0) / batch)
        with lock:
            samples.extend(local)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for p in pool:
        p.start()
    for p in pool:
        p.join()
    return statistics.median(samples)


def bench_record_cost(client: StateClient) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for threads in (1, 8):
        collector = MetricsCollector(client, CollectorConfig(max_keys=100_000), start=False)

        def ours(t: int, i: int, c: MetricsCollector = collector) -> None:
            c.record(
                "agent_execution_time", float(i % 1000), agent_name=AGENTS[t % len(AGENTS)], timestamp=NOON
            )

        summary = Summary("latency", "bench", ["agent"], registry=CollectorRegistry())
        children = [summary.labels(agent=a) for a in AGENTS]

        def prom(t: int, i: int, children: list[Any] = children) -> None:
            children[t % len(AGENTS)].observe(float(i % 1000))

        # Interleave the two, twice, so machine drift hits both.
        a1, p1 = _per_call_ns(ours, threads), _per_call_ns(prom, threads)
        a2, p2 = _per_call_ns(ours, threads), _per_call_ns(prom, threads)
        record_ns, prom_ns = min(a1, a2), min(p1, p2)
        out[f"{threads}_threads"] = {
            "record_ns_p50": record_ns,
            "prometheus_summary_ns_p50": prom_ns,
            "ratio_to_prometheus": record_ns / prom_ns,
        }
    return out


def bench_write_units(client: StateClient, records: int = 1_000_000) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for keys, flushes in ((9, 1), (9, 10), (90, 10)):
        fresh = StateClient(client.config)
        collector = MetricsCollector(fresh, CollectorConfig(max_keys=1000), start=False)
        metric = f"wu_{uuid.uuid4().hex[:6]}"
        per_flush = records // flushes
        for f in range(flushes):
            for i in range(per_flush):
                k = i % keys
                collector.record(
                    metric,
                    float(1 + (i * 7919) % 60_000) / 1000,  # 1 ms .. 60 s
                    agent_name=AGENTS[k % len(AGENTS)],
                    timestamp=NOON + (k // 9 % 10) * 3600,
                    error=i % 50 == 0,
                )
            assert collector.flush(), "flush failed"
            del f
        wu = fresh.layer.meter.snapshot()["write_units"]
        out[f"{keys}_keys_x_{flushes}_flushes"] = {
            "write_units": wu,
            "per_key_flush": wu / (keys * flushes),
            "usd_per_million_records": wu * 0.625e-6 * (1_000_000 / records),
        }
    return out


def bench_memory(client: StateClient, keys: int = 10_000, per_key: int = 300) -> dict[str, Any]:
    tracemalloc.start()
    collector = MetricsCollector(client, CollectorConfig(max_keys=keys), start=False)
    for k in range(keys):
        for i in range(per_key):
            collector.record(
                f"m{k % 100}",
                float(1 + (i * 7919) % 60_000) / 1000,
                agent_name=AGENTS[k % len(AGENTS)],
                timestamp=NOON + (k // 900) * 3600,
            )
    # Fold raw values as a flush would, so the sketch buckets are what is held.
    for shard in collector._shards:
        for agg in shard.aggs.values():
            agg.fold()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "keys": keys,
        "records_per_key": per_key,
        "peak_mb": peak / 2**20,
        "held_mb": current / 2**20,
        "dropped": collector.dropped,
    }


def run_all(client: StateClient) -> dict[str, Any]:
    return {
        "record_cost": bench_record_cost(client),
        "memory": bench_memory(client),
        "write_units": bench_write_units(client),
    }
