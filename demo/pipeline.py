"""A simulated T-Developer pipeline that drives the real packages, as the demo's workload.

Two roles, each its own process:

- `drive`: runs a share of the planned runs concurrently from the first agent, through the adoption helper
  as docs/adoption.md shows (`PipelineRun.open`, `run.agent(...)` per attempt, `step.complete` /
  `step.fail`, `run.finish()`; metrics through the collector; `save_user_project` at the end); the demo
  kills some drivers with SIGKILL mid-run.
- `serve`: the pipeline's resume endpoint for the recovery worker's HTTP resumer, through the helper's
  receiving side (`tdev_state.accept_resume`): it refuses a fencing token lower than the run's or one it
  accepted already (409; the same request again is accepted once), opens the run with `PipelineRun.resume`
  and continues it from the agent it is told, in the background; when it already continues
  `MAX_RESUMED_RUNS` runs it answers a NEW run 503 + Retry-After (back-pressure, which the worker waits out
  without using an attempt), while the same request sent again gets its continuation (202).

Each agent attempt sleeps a short, agent-specific time (heartbeating), may fail (flaky agents are retried in
process, as the orchestrator's retry counts say; a non-critical agent that fails for good is tolerated and
the run goes on; generation or assembly failing stops the run), and appends an event line to events.jsonl,
which the demo checks its invariants with. Agents use the plan's own form,
`execution_id = f"{project_id}-{agent_name}"`, and receive the accumulated pipeline data as input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tdev_metrics import install_signal_handlers
from tdev_metrics.plan import default_collector
from tdev_state import (
    AGENTS,
    PIPELINE,
    ConflictError,
    PipelineRun,
    ResumeBusyError,
    StaleResumeError,
    StateError,
    accept_resume,
    save_user_project,
)
from tdev_state.plan import default_client
from tdev_state.resume import ResumeRequest
from tdev_state.testing import agent_payload, generated_project

#: Seconds an agent works in the demo (the real ones take tens of seconds; the proportions are kept), its
#: in-process retries (T-Developer's orchestrator's), and the agents whose failure stops the run: all from
#: the one declaration of the agents (tdev_state.agents.PIPELINE).
AGENT_SECONDS = {a.name: a.demo_seconds for a in PIPELINE}
RETRIES = {a.name: a.attempts - 1 for a in PIPELINE}
CRITICAL = tuple(a.name for a in PIPELINE if a.critical)
#: Resumed runs the resume endpoint continues at once; beyond that it answers 503 + Retry-After (back-
#: pressure, which the worker waits out without using an attempt) instead of taking on runs it cannot drive.
MAX_RESUMED_RUNS = 8
#: The demo's agents take seconds and its worker a 5 s stall threshold: heartbeat every 2 s, so a busy
#: process is slow, not dead, to the recovery worker (faster beats only queue up behind the writes).
HEARTBEAT_SECONDS = 2.0


class Framework(Enum):
    """What a real agent returns inside its objects (enums, paths, datetimes, sets, dataclasses)."""

    REACT = "react"
    VUE = "vue"


@dataclass
class GeneratedFile:
    path: Path
    content: str


class Events:
    """Append-only JSON lines shared by every demo process (O_APPEND writes of one line are atomic)."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def log(self, **event: Any) -> None:
        line = json.dumps({"t": time.time(), "pid": os.getpid(), **event}) + "\n"
        os.write(self._fd, line.encode())


def _seed(plan: dict[str, Any], *parts: str) -> int:
    """A seed stable across processes (`hash` of a str is not): a fork's plan seeds as its parent's, so a
    replayed agent makes the parent's output again, and a diff shows what the override changed."""
    return zlib.crc32("/".join((plan.get("seeded_as") or plan["session_id"], *parts)).encode()) % 1000


def agent_output(plan: dict[str, Any], agent: str, data: dict[str, Any]) -> Any:
    """An agent's result as the orchestrator has it: objects flattened by `__dict__`, plain values inside.
    Generation honours a `framework` in its accumulated input (a fork's override: docs/fork.md)."""
    if agent == "generation":
        files = generated_project(200_000, seed=_seed(plan, "files"))
        wanted = data.get("framework")
        return {
            "framework": Framework(wanted) if wanted in {f.value for f in Framework} else Framework.REACT,
            "files": [GeneratedFile(Path(name), text) for name, text in sorted(files.items())],
            "generated_at": datetime.now(UTC),
        }
    return {
        **agent_payload(2, seed=_seed(plan, agent, "out")),
        "finished_at": datetime.now(UTC),
        "tags": {agent, "demo"},
    }


async def run_agents(
    run: PipelineRun, plan: dict[str, Any], start_at: str, events: Events, *, resumed: bool
) -> str:
    """Run the agents of one planned run from `start_at`, as T-Developer's orchestrator does: each agent
    retried in process; a non-critical agent that fails for good is recorded and the next one runs; a
    critical one (generation, assembly) stops the run. Every attempt goes through the adoption helper
    (`run.agent`), which records it, its metric and its outcome. Returns COMPLETED or FAILED."""
    sid = plan["session_id"]
    rng = random.Random(f"{sid}-{start_at}-{resumed}")
    # Every agent's input is the accumulated pipeline data: the request plus every earlier output (for a
    # resumed run, the outputs the resume request carried: `run.earlier`).
    data: dict[str, Any] = {"request": plan["request"]}
    for agent, (succeeded, _, output, _) in run.earlier.items():
        if succeeded:
            data[agent] = output
    for agent in AGENTS[AGENTS.index(start_at) :]:
        retries = RETRIES[agent]
        for attempt in range(retries + 1):
            async with run.agent(agent, input_data=data) as step:
                events.log(event="start", sid=sid, agent=agent, attempt=attempt, resumed=resumed)
                started = time.monotonic()
                await asyncio.sleep(AGENT_SECONDS[agent] * rng.uniform(0.7, 1.4))
                elapsed = time.monotonic() - started
                doomed_here = plan["doomed"] and agent == plan["fail_at"]
                critical_once = plan["fail_at"] == agent and not resumed and agent in CRITICAL
                tolerated_here = agent == plan["tolerated"]
                flaky_here = agent in plan["flaky"] and attempt == 0
                failing = doomed_here or critical_once or tolerated_here or flaky_here
                output = None if failing else agent_output(plan, agent, data)
                # What the orchestrator's agents return: a result with success=False, or the output.
                if failing:
                    step.fail(f"simulated failure of {agent} (attempt {attempt + 1})")
                else:
                    step.complete(output)
            if failing:
                events.log(event="fail", sid=sid, agent=agent, attempt=attempt, resumed=resumed)
                if attempt < retries:
                    continue  # retried at once, in process
                if agent in CRITICAL:
                    events.log(event="run_failed", sid=sid, agent=agent, resumed=resumed)
                    return "FAILED"
                events.log(event="tolerated", sid=sid, agent=agent, resumed=resumed)
                break  # recorded; the run goes on to the next agent
            data[agent] = output
            events.log(
                event="complete",
                sid=sid,
                agent=agent,
                attempt=attempt,
                resumed=resumed,
                duration=elapsed,
                # False: the store did not answer within the helper's budget, so the completion waits in
                # this process's deferred backlog — lost if the process is SIGKILLed before it drains.
                stored=step.transition is not None,
            )
            break
    # The orchestrator ends the run itself (a last agent that failed for good is then tolerated); a run
    # whose download completed has ended already, and finishing it again changes nothing.
    await run.finish()
    if plan["user_id"]:
        await save_user_project(
            {
                "user_id": plan["user_id"],
                "project_id": plan["project_id"],
                "project_name": plan["project_name"],
                "description": "generated by the demo",
                "tech_stack": json.dumps(["React", "Tailwind"]),
                "size_mb": 1.2,
            }
        )
        await run.client.projects.record_download(plan["user_id"], plan["project_id"])
    events.log(event="run_completed", sid=sid, resumed=resumed)
    return "COMPLETED"


async def drive(plans: list[dict[str, Any]], events: Events) -> None:
    async def one(plan: dict[str, Any], delay: float) -> None:
        await asyncio.sleep(delay)
        run = await PipelineRun.open(  # some runs have no user at all, as the orchestrator has none
            await default_client(),
            plan["session_id"],
            user_id=plan["user_id"] or None,
            project_name=plan["project_name"] if plan["user_id"] else None,
            pipeline_type=plan["pipeline_type"],
            metadata={"demo_run": plan["demo_run"]},
            metrics=default_collector(),
            heartbeat_seconds=HEARTBEAT_SECONDS,
            variant=plan["variant"],
        )
        events.log(event="created", sid=plan["session_id"])
        await run_agents(run, plan, AGENTS[0], events, resumed=False)

    await asyncio.gather(*(one(p, i * 0.15) for i, p in enumerate(plans)))
    events.log(event="meter", meter=(await default_client()).sync.layer.meter.snapshot())


def serve(plans: dict[str, dict[str, Any]], events: Events) -> None:
    """The resume endpoint; runs until SIGTERM (which flushes metrics first)."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def plan_of(sid: str) -> dict[str, Any] | None:
        """The run's plan; for a fork of a planned run (`sessions.fork`, demo/fork.py), the parent's plan
        without its planned failures: the child runs from its fork point as a healthy run would."""
        if sid in plans:
            return plans[sid]
        try:
            parent = (await (await default_client()).sessions.lineage(sid)).parent_id
        except StateError:
            return None
        if parent not in plans:
            return None
        fork = {**plans[parent], "session_id": sid, "project_id": sid, "flaky": [], "tolerated": None}
        plans[sid] = {**fork, "fail_at": None, "doomed": False, "seeded_as": parent}
        return plans[sid]

    async def continue_run(run: PipelineRun, request: ResumeRequest) -> str:
        return await run_agents(run, plans[run.session_id], request.next_agent, events, resumed=True)

    async def accept(body: Any) -> None:
        # Back-pressure lives in accept_resume: a NEW run beyond MAX_RESUMED_RUNS is busy, while a request
        # sent again for a run already continued here is answered with its continuation (202).
        await accept_resume(
            await default_client(),
            body,
            continue_run,
            max_running=MAX_RESUMED_RUNS,
            metrics=default_collector(),
            heartbeat_seconds=HEARTBEAT_SECONDS,
        )

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            sid, token = body["session_id"], int(body["fencing_token"])
            try:
                if asyncio.run_coroutine_threadsafe(plan_of(sid), loop).result() is None:
                    raise StaleResumeError(f"{sid} is not a run of this demo, nor a fork of one")
                asyncio.run_coroutine_threadsafe(accept(body), loop).result()
            except ResumeBusyError:
                events.log(event="resume_busy", sid=sid, token=token)
                self.send_response(503)  # at its limit or still driving the run: the worker asks again
                self.send_header("Retry-After", "1")
            except StateError as exc:
                events.log(event="resume_rejected", sid=sid, token=token, reason=str(exc)[:200])
                self.send_response(409 if isinstance(exc, ConflictError) else 503)
            else:
                events.log(
                    event="resume_accepted",
                    sid=sid,
                    token=token,
                    next_agent=body["next_agent"],
                    completed=[c["agent_name"] for c in body["completed"]],
                )
                self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)

    def meter() -> dict[str, float]:
        return asyncio.run_coroutine_threadsafe(default_client(), loop).result().sync.layer.meter.snapshot()

    def stop(num: int, frame: object) -> None:
        events.log(event="meter", meter=meter())
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    install_signal_handlers(default_collector(), (signal.SIGTERM,))
    server.serve_forever()
    default_collector().close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.pipeline")
    parser.add_argument("role", choices=("drive", "serve"))
    parser.add_argument("--plan", type=Path, required=True)
    parser.add_argument("--events", type=Path, required=True)
    parser.add_argument("--driver", type=int, default=0)
    args = parser.parse_args()
    plans: list[dict[str, Any]] = json.loads(args.plan.read_text())
    events = Events(args.events)
    if args.role == "serve":
        serve({p["session_id"]: p for p in plans}, events)
        return 0
    asyncio.run(drive([p for p in plans if p["driver"] == args.driver], events))
    default_collector().close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
