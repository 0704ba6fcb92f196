"""Recovery-worker benchmarks (issue #6) against the endpoint in AWS_ENDPOINT_URL.

1. detection latency: runs crash at known moments; from each run's last sign of life to the resume
   request, with stall threshold S and poll interval P (target p99 <= S + P + 1 s);
2. sweep cost: read units of one sweep with 100 versus 100,000 finished sessions in the table (target
   ratio <= 1.2: cost follows the open runs, not the table);
3. throughput: resumes per second with 1 versus 4 worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from tdev_recovery import RecoveryWorker, ResumeRequest, RetryPolicy, WorkerConfig
from tdev_recovery.testing import start_worker
from tdev_state import AGENTS, StateClient
from tdev_state.models import epoch, utcnow
from tdev_state.testing import make_stalled_runs, serve_resume_endpoint


def bench_detection(
    client: StateClient, runs: int = 40, stall: float = 3.0, poll: float = 0.5
) -> dict[str, Any]:
    received: dict[str, float] = {}
    all_in = asyncio.Event()

    async def resumer(request: ResumeRequest) -> None:
        # The first resume is the detection; this resumer does not continue the run, so it stalls and is
        # resumed again a stall threshold later — that second claim is not a detection latency.
        received.setdefault(request.session_id, time.time())
        if len(received) >= runs:
            all_in.set()

    config = WorkerConfig(
        poll_interval=poll,
        stall_threshold=timedelta(seconds=stall),
        retry_delay=timedelta(hours=1),
        lease=timedelta(seconds=2),
        retry=RetryPolicy(initial_interval=timedelta(milliseconds=10)),
    )

    async def scenario() -> dict[str, float]:
        worker = RecoveryWorker(StateClient(client.config), resumer, config)
        last_seen: dict[str, float] = {}
        async with worker:
            for _ in range(runs):  # crashes spread over ~runs*0.1 s
                sid = await asyncio.to_thread(
                    lambda: client.sessions.create(user_id="lat", project_name="l").session_id
                )
                await asyncio.to_thread(client.executions.start, sid, AGENTS[0])
                last_seen[sid] = time.time()
                await asyncio.sleep(0.1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_in.wait(), timeout=stall + 30)
        return {sid: received[sid] - last_seen[sid] for sid in last_seen if sid in received}

    latencies = sorted(asyncio.run(scenario()).values())
    return {
        "runs": runs,
        "detected": len(latencies),
        "stall_threshold_s": stall,
        "poll_interval_s": poll,
        "latency_p50_s": statistics.median(latencies),
        "latency_p99_s": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "target_p99_s": stall + poll + 1,
    }


def _finished_sessions(client: StateClient, count: int) -> None:
    """Write `count` COMPLETED sessions as the client leaves them (no recovery_shard), 25 per batch."""
    table = client.config.tables.sessions
    now = epoch(utcnow())

    def batch(n: int) -> None:
        items = []
        for _ in range(n):
            item = {
                "session_id": str(uuid.uuid4()),
                "user_id": "done",
                "project_name": "p",
                "pipeline_type": "SIMPLE",
                "status": "COMPLETED",
                "current_agent": "download",
                "progress": 9,
                "created_at": now,
                "last_updated": now,
                "stalled_at": now,
                "version": 19,
                "resume_count": 0,
                "metadata": "null",
            }
            items.append({"PutRequest": {"Item": client.layer.serialize(item)}})
        pending: dict[str, Any] = {table: items}
        while pending:
            pending = client.layer.dynamodb.batch_write_item(RequestItems=pending).get("UnprocessedItems", {})

    sizes = [25] * (count // 25) + ([count % 25] if count % 25 else [])
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(batch, sizes))


def bench_sweep_cost(client: StateClient) -> dict[str, Any]:
    _retire(
        client,
        {
            c.session_id
            for c in client.sessions.recovery_candidates(
                failed_idle=timedelta(0), stalled_idle=timedelta(0), limit=1000, live=True
            )
        },
    )
    make_stalled_runs(client, 10, seed=3)
    results: dict[str, Any] = {}
    written = 0
    for finished in (100, 100_000):
        started = time.perf_counter()
        _finished_sessions(client, finished - written)
        written = finished
        probe = StateClient(client.config)
        found = probe.sessions.recovery_candidates(
            failed_idle=timedelta(0), stalled_idle=timedelta(0), limit=1000, live=True
        )
        results[str(finished)] = {
            "read_units": probe.layer.meter.snapshot()["read_units"],
            "candidates": len(found),
            "seed_seconds": round(time.perf_counter() - started, 1),
        }
    results["ratio"] = results["100000"]["read_units"] / results["100"]["read_units"]
    return results


def bench_throughput(client: StateClient, runs: int = 200) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for replicas in (1, 4):
        phase = set(make_stalled_runs(client, runs, seed=replicas))
        accepted: set[str] = set()
        lock = threading.Lock()

        def accept(
            body: dict[str, Any],
            seen: set[str] = accepted,
            lock: threading.Lock = lock,
            mine: set[str] = phase,
        ) -> int:
            if body["session_id"] not in mine:
                return 409  # a run of another benchmark phase: not ours to count
            with lock:
                seen.add(body["session_id"])
            return 200

        server, url = serve_resume_endpoint(accept)
        env = {**os.environ, "TDEV_ENV": client.config.env}
        time.sleep(3.5)  # every run is now older than the 3 s stall threshold
        started = time.perf_counter()
        workers = [start_worker(i, url, env, stall=3.0) for i in range(replicas)]
        deadline = time.perf_counter() + 300
        while len(accepted) < runs and time.perf_counter() < deadline:
            if all(proc.poll() is not None for proc in workers):
                raise RuntimeError("every worker process exited; see their stderr above")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        for proc in workers:
            proc.terminate()
        for proc in workers:
            proc.wait(timeout=30)
        server.shutdown()
        _retire(client, phase)  # accepted but never continued: keep them out of the next phase
        out[f"{replicas}_workers"] = {
            "resumed": len(accepted),
            "seconds": elapsed,
            "per_second": len(accepted) / elapsed,
        }
    out["speedup"] = out["4_workers"]["per_second"] / out["1_workers"]["per_second"]
    return out


def _retire(client: StateClient, sessions: set[str]) -> None:
    def one(sid: str) -> None:
        session = client.sessions.get(sid)
        if session.status.value in ("ACTIVE", "FAILED"):
            client.sessions.update(sid, expected_version=session.version, status="ABANDONED")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, sessions))


def run_all(client: StateClient) -> dict[str, Any]:
    detection = bench_detection(client)
    _retire(
        client,
        {
            c.session_id
            for c in client.sessions.recovery_candidates(
                failed_idle=timedelta(0), stalled_idle=timedelta(0), limit=1000, live=True
            )
        },
    )
    return {
        "detection": detection,
        "throughput": bench_throughput(client),
        "sweep_cost": bench_sweep_cost(client),
    }
