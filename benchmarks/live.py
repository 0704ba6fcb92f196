"""Live run progress (issue #26): event latency from a transition's write to a watcher, and the store's read
units per run-minute with 1, 10 and 100 watchers of each of 10 concurrent runs (goal: flat — one shared
poller per run per process, `tdev_state.events`), twice: woken by the sessions table's DynamoDB stream
(`StreamTrigger`, the default where the table has one) and polling at 1/s (`IntervalTrigger`, the fallback).
The stream's requests (DescribeStream, GetShardIterator, GetRecords) are not table read units: they are
counted apart (`stream_requests`). Runs on tables of its own with the schema's streams (the other groups'
tables have none: a stream slows LocalStack's writes, which would skew their timings).

Each run is driven by its own thread (start and complete of the nine agents, `step` seconds apart); every
watcher follows its run (by its ref) from seq 0 through `EventHub.watch` until the run ends; the reads made
while the watchers connect (the ref look-ups and the first read of each run) are counted apart. Latency is
a watcher's receive time minus the event's stored time (the writer's clock, the same machine), over every
live event every watcher got (the replay of run_opened excluded).
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
import uuid
from typing import Any

from tdev_state import AGENTS, AsyncStateClient, StateClient, StateConfig
from tdev_state.events import EventHub, IntervalTrigger, StreamTrigger
from tdev_state.models import RunEvent, epoch_float
from tdev_state.tables import delete_tables


def _drive(client: StateClient, sid: str, step: float) -> None:
    for agent in AGENTS:
        client.executions.start(sid, agent)
        time.sleep(step)
        client.executions.complete(sid, agent, output_data={"agent": agent})
        time.sleep(step)


async def _setting(
    config: StateConfig, watchers: int, runs: int, step: float, stream: bool
) -> dict[str, Any]:
    writer = StateClient(config)
    sids = [writer.sessions.create(refs=[f"project_{uuid.uuid4().hex[:12]}"]).session_id for _ in range(runs)]
    latencies: list[float] = []
    async with AsyncStateClient(StateClient(config)) as reader:
        trigger = StreamTrigger(reader) if stream else IntervalTrigger(1.0)
        hub = EventHub(reader, trigger=trigger)

        async def watch(sid: str) -> None:
            async for item in hub.watch(sid):
                if isinstance(item, RunEvent) and item.seq > 1 and item.at is not None:
                    latencies.append(time.time() - epoch_float(item.at))

        meter = reader.sync.layer.meter
        before = meter.snapshot()["read_units"]
        tasks = [asyncio.create_task(watch(sid)) for sid in sids for _ in range(watchers)]
        # Every watcher attached (and its replay read) before the writes; the hub has no event for it.
        while hub.watchers < len(tasks) or (  # noqa: ASYNC110 - a benchmark's probe of a counter
            isinstance(trigger, StreamTrigger) and not trigger.healthy
        ):
            await asyncio.sleep(0.05)
        connect_reads = meter.snapshot()["read_units"] - before
        before += connect_reads
        requests_before = trigger.stream_requests if isinstance(trigger, StreamTrigger) else 0
        started = time.monotonic()
        await asyncio.gather(*(asyncio.to_thread(_drive, writer, sid, step) for sid in sids))
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        seconds = time.monotonic() - started
        reads = meter.snapshot()["read_units"] - before
        requests = (trigger.stream_requests if isinstance(trigger, StreamTrigger) else 0) - requests_before
        await hub.aclose()
    ordered = sorted(latencies)
    return {
        "watchers_per_run": watchers,
        "runs": runs,
        "events_delivered": len(ordered),
        "read_units_to_connect": connect_reads,
        "read_units": reads,
        "read_units_per_run_minute": reads / (runs * seconds / 60),
        "stream_requests": requests,
        "stream_requests_per_minute": requests / (seconds / 60),
        "latency_p50_s": statistics.median(ordered),
        "latency_p99_s": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "latency_max_s": ordered[-1],
    }


def run_all(config: StateConfig, *, runs: int = 10, step: float = 0.5) -> dict[str, Any]:
    """Per mode (the stream, then polling 1/s): one run with one watcher (the latency when the store keeps
    up), then the three settings of `runs` concurrent runs (each on fresh runs), on tables with streams."""
    streamed = dataclasses.replace(config, env=f"{config.env}s")
    client = StateClient(streamed)
    client.create_tables()
    try:
        results: dict[str, Any] = {}
        for mode in ("stream", "polling_1s"):
            stream = mode == "stream"
            results[mode] = {"1_run_1_watcher": asyncio.run(_setting(streamed, 1, 1, step, stream))}
            for n in (1, 10, 100):
                results[mode][f"{n}_watchers"] = asyncio.run(_setting(streamed, n, runs, step, stream))
        return results
    finally:
        delete_tables(client.layer)
