"""The console's server time: a runs list of 50 and a run of 9 agents, on the endpoint under test.

Each page is timed by its own `Server-Timing` header (reads and rendering, inside the server), and the
same reads are timed straight through the client in the same run, so the ratio says what the web layer adds.
Requests alternate between the two pages and the bare reads; nothing here is asserted (shared machines).
"""

from __future__ import annotations

import time
import urllib.request
from datetime import UTC, datetime
from typing import Any

from tdev_console import ConsoleSettings, create_app
from tdev_console.server import console_thread
from tdev_state import AGENTS, StateClient, StateConfig


def _quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50_ms": round(ordered[len(ordered) // 2], 1),
        "p95_ms": round(ordered[max(0, int(len(ordered) * 0.95) - 1)], 1),
    }


def _server_ms(url: str) -> float:
    with urllib.request.urlopen(url) as response:
        response.read()
        return float(response.headers["server-timing"].split("dur=")[1])


def bench_pages(config: StateConfig, *, rounds: int = 60) -> dict[str, Any]:
    client = StateClient(config)
    sids = [client.sessions.create(user_id="bench", project_name=f"p{i}").session_id for i in range(50)]
    run = sids[0]
    for agent in AGENTS:
        client.executions.start(run, agent, input_data={"agent": agent, "request": "x" * 400})
        client.executions.complete(run, agent, output_data={"agent": agent, "files": {"a.ts": "y" * 2000}})
    day = datetime.now(UTC).date()
    timings: dict[str, list[float]] = {"runs page": [], "run page": [], "runs reads": [], "run reads": []}
    with console_thread(create_app(client, ConsoleSettings(page_size=50))) as url:
        _server_ms(f"{url}/runs")  # warm-up: templates compiled, connections open
        for _ in range(rounds):
            timings["runs page"].append(_server_ms(f"{url}/runs"))
            timings["run page"].append(_server_ms(f"{url}/runs/{run}"))
            started = time.perf_counter()
            page = client.sessions.list_by_day(day, limit=50, load_metadata=False)
            timings["runs reads"].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            client.sessions.get(run, strict=False)
            client.executions.list(run, load_payloads=False)
            client.sessions.recovery_history(run)
            timings["run reads"].append((time.perf_counter() - started) * 1000)
    assert len(page.items) == 50
    out = {name: _quantiles(values) for name, values in timings.items()}
    for page_name, reads in (("runs page", "runs reads"), ("run page", "run reads")):
        out[page_name]["p50_over_reads"] = round(out[page_name]["p50_ms"] / out[reads]["p50_ms"], 2)
    out["target"] = "p95 under 200 ms server time"
    client.close()
    return out


def run_all(config: StateConfig) -> dict[str, Any]:
    return {"pages": bench_pages(config)}
