"""Do no harm (#22): what a store problem costs T-Developer's orchestrator once the state layer is adopted.

The miniature of the orchestrator (examples/orchestrator) runs one 9-agent request, each agent doing
`AGENT_WORK` seconds of (simulated) work, in four set-ups, interleaved round by round:

- `no_store`: before.py, the orchestrator as it is today (stores nothing) — the baseline;
- `healthy`: after.py on the endpoint under test (LocalStack by default);
- `refused`: after.py on a store refusing connections (an endpoint on a local port nobody listens on);
- `latency_5s`: after.py on the endpoint under test with 5 s added to every DynamoDB/S3 call (a botocore
  `before-send` hook that waits 5 s before the request goes out).

Reported: the run's wall time (median of the rounds) and its ratio to `no_store`, plus what the helper
counted (writes deferred / lost). Each faulty round uses a fresh client, so every round meets the outage
from the start (the worst case: the first call of a process waits its whole budget). The deferred writes
of the faulty rounds are not waited for (in the latency case they land minutes later).
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import threading
import time
from dataclasses import replace
from typing import Any

from examples.orchestrator import after, before
from examples.orchestrator.agents import Script

from tdev_state import AsyncStateClient, DeferPolicy, StateClient, StateConfig, deferred_writes

#: Seconds of work per agent (the real agents take 20-300 s; short here so the store's share shows).
AGENT_WORK = 0.2
LATENCY = 5.0
POLICY = DeferPolicy()  # the defaults, as an adopting orchestrator gets them


def _closed_port() -> int:
    """A local port nobody listens on (bound, then released): connections to it are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _working(pipeline: Any) -> None:
    """Give each fake agent AGENT_WORK seconds of work (its answer unchanged)."""
    for name, agent in list(pipeline.agents.items()):

        async def slow(data: Any, context: Any, _agent: Any = agent) -> Any:
            await asyncio.sleep(AGENT_WORK)
            return await _agent(data, context)

        pipeline.agents[name] = slow


async def _one(pipeline: Any) -> tuple[float, bool]:
    if not pipeline.initialized:
        await pipeline.initialize()
    _working(pipeline)
    started = time.perf_counter()
    result = await pipeline.execute("a todo app with login", project_name="todo", project_type="react")
    return time.perf_counter() - started, bool(result.success)


def _add_latency(client: StateClient, seconds: float) -> None:
    stop = threading.Event()

    def wait(**_: Any) -> None:
        stop.wait(seconds)

    for boto in (client.layer.dynamodb, client.layer.payloads.s3):
        if boto is not None:
            boto.meta.events.register_first("before-send", wait)


async def _adopted_round(config: StateConfig, *, latency: float | None) -> dict[str, Any]:
    sync = StateClient(config)
    if latency:
        _add_latency(sync, latency)
    state = AsyncStateClient(sync)
    writes = deferred_writes(state, POLICY)
    seconds, success = await _one(after.ProductionECSPipeline({"state": state, "script": Script()}))
    counters = {"deferred": writes.deferred, "lost": writes.lost, "pending": writes.pending_writes}
    writes.close()
    state._executor.shutdown(wait=False, cancel_futures=True)  # hung calls are not waited for
    return {"seconds": seconds, "success": success, **counters}


async def _rounds(config: StateConfig, rounds: int) -> dict[str, Any]:
    refused = replace(config, endpoint_url=f"http://127.0.0.1:{_closed_port()}", payload_bucket=None)
    cells: dict[str, list[dict[str, Any]]] = {"no_store": [], "healthy": [], "refused": [], "latency_5s": []}
    for _ in range(rounds):
        seconds, success = await _one(before.ProductionECSPipeline({"script": Script()}))
        cells["no_store"].append({"seconds": seconds, "success": success})
        cells["healthy"].append(await _adopted_round(config, latency=None))
        cells["refused"].append(await _adopted_round(refused, latency=None))
        cells["latency_5s"].append(await _adopted_round(config, latency=LATENCY))
    base = statistics.median(c["seconds"] for c in cells["no_store"])
    summary: dict[str, Any] = {
        "agent_work_seconds": AGENT_WORK,
        "call_budget_seconds": POLICY.call_budget_seconds,
        "rounds": rounds,
    }
    for name, runs in cells.items():
        median = statistics.median(c["seconds"] for c in runs)
        summary[name] = {
            "median_seconds": round(median, 3),
            "ratio_to_no_store": round(median / base, 2),
            "added_seconds": round(median - base, 3),
            "all_succeeded": all(c["success"] for c in runs),
            "deferred_writes": [c.get("deferred") for c in runs],
            "lost_writes": [c.get("lost") for c in runs],
        }
    return summary


def run_all(config: StateConfig, *, rounds: int = 3) -> dict[str, Any]:
    """The four set-ups, `rounds` times each (interleaved)."""
    return asyncio.run(_rounds(config, rounds))
