"""Live run progress (issue #26): event latency from a transition's write to a watcher, and the store's read
units per run-minute with 1, 10 and 100 watchers of each of 10 concurrent runs (goal: flat — one shared
poller per run per process, `tdev_state.events`, polling at its default 1/s).

Each run is driven by its own thread (start and complete of the nine agents, `step` seconds apart); every
watcher follows its run (by its ref) from seq 0 through `EventHub.watch` until the run ends; the reads made
while the watchers connect (the ref look-ups and the first read of each run) are counted apart. Latency is
a watcher's receive time minus the event's stored time (the writer's clock, the same machine), over every
live event every watcher got (the replay of run_opened excluded).
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from typing import Any

from tdev_state import AGENTS, AsyncStateClient, StateClient, StateConfig
from tdev_state.events import EventHub
from tdev_state.models import RunEvent, epoch_float


def _drive(client: StateClient, sid: str, step: float) -> None:
    for agent in AGENTS:
        client.executions.start(sid, agent)
        time.sleep(step)
        client.executions.complete(sid, agent, output_data={"agent": agent})
        time.sleep(step)


async def _setting(config: StateConfig, watchers: int, runs: int, step: float) -> dict[str, Any]:
    writer = StateClient(config)
    sids = [writer.sessions.create(refs=[f"project_{uuid.uuid4().hex[:12]}"]).session_id for _ in range(runs)]
    latencies: list[float] = []
    async with AsyncStateClient(StateClient(config)) as reader:
        hub = EventHub(reader)

        async def watch(sid: str) -> None:
            async for item in hub.watch(sid):
                if isinstance(item, RunEvent) and item.seq > 1 and item.at is not None:
                    latencies.append(time.time() - epoch_float(item.at))

        meter = reader.sync.layer.meter
        before = meter.snapshot()["read_units"]
        tasks = [asyncio.create_task(watch(sid)) for sid in sids for _ in range(watchers)]
        # Every watcher attached (and its replay read) before the writes; the hub has no event for it.
        while hub.watchers < len(tasks):  # noqa: ASYNC110 - a benchmark's probe of a counter
            await asyncio.sleep(0.05)
        connect_reads = meter.snapshot()["read_units"] - before
        before += connect_reads
        started = time.monotonic()
        await asyncio.gather(*(asyncio.to_thread(_drive, writer, sid, step) for sid in sids))
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        seconds = time.monotonic() - started
        reads = meter.snapshot()["read_units"] - before
        await hub.aclose()
    ordered = sorted(latencies)
    return {
        "watchers_per_run": watchers,
        "runs": runs,
        "events_delivered": len(ordered),
        "read_units_to_connect": connect_reads,
        "read_units": reads,
        "read_units_per_run_minute": reads / (runs * seconds / 60),
        "latency_p50_s": statistics.median(ordered),
        "latency_p99_s": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "latency_max_s": ordered[-1],
    }


def run_all(config: StateConfig, *, runs: int = 10, step: float = 0.5) -> dict[str, Any]:
    """The three settings, one after another (each on fresh runs)."""
    return {f"{n}_watchers": asyncio.run(_setting(config, n, runs, step)) for n in (1, 10, 100)}
