"""Chaos: 5 worker processes, 500 stalled runs, workers SIGKILLed at random and restarted.

A fake pipeline (an HTTP server in this process) accepts a resume only with a fencing token higher than any
it has seen for that run (409 otherwise), counts accepted resumes, and finishes the run from the agent it
was told — recording every agent it runs. The test proves: every run resumed exactly once, no completed
agent ran again, and every run ended COMPLETED (nothing left unclaimed).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from typing import Any

import pytest

from tdev_recovery.testing import start_worker
from tdev_state import AGENTS, AgentStatus, InvalidTransitionError, SessionStatus, StateClient
from tdev_state.testing import make_stalled_runs, serve_resume_endpoint

from ..chaos_report import record

RUNS = int(os.environ.get("TDEV_CHAOS_RUNS", "500"))
WORKERS = 5
STALL_SECONDS = 4.0


class FakePipeline:
    """Accepts resumes fenced by token and completes the run synchronously (its transitions are its
    sign of life, as a real pipeline's heartbeats would be)."""

    def __init__(self, client: StateClient, runs: set[str]) -> None:
        self.client = client
        #: Only these runs are ours: other tests' stalled runs share the tables and are refused.
        self.runs = runs
        self.lock = threading.Lock()
        self.highest: dict[str, int] = {}
        self.accepted: Counter[str] = Counter()
        self.stale = 0
        self.ran: list[tuple[str, str]] = []
        self.errors: list[str] = []

    def handle(self, body: dict[str, Any]) -> int:
        sid, token = body["session_id"], int(body["fencing_token"])
        if sid not in self.runs:
            return 409
        with self.lock:
            if token <= self.highest.get(sid, 0):
                self.stale += 1
                return 409
            self.highest[sid] = token
            self.accepted[sid] += 1
        try:
            self._finish(sid, body["next_agent"])
        except Exception as exc:
            self.errors.append(f"{sid}: {type(exc).__name__}: {exc}")
            return 500
        return 200

    def _finish(self, sid: str, next_agent: str) -> None:
        for agent in AGENTS[AGENTS.index(next_agent) :]:
            try:
                self.client.executions.start(sid, agent, input_data={"resumed": True})
            except InvalidTransitionError as exc:
                if not (exc.current and exc.current.get("status") == AgentStatus.FAILED.value):
                    raise
                self.client.executions.retry(sid, agent)
            with self.lock:
                self.ran.append((sid, agent))
            self.client.executions.complete(sid, agent, output_data={"by": "resume"})


@pytest.mark.timeout(600)
def test_killed_workers_resume_every_run_exactly_once(client: StateClient) -> None:
    """500 stalled runs, 5 replicas killed with SIGKILL at random: each run resumed once, none rerun."""
    originals = make_stalled_runs(client, RUNS)
    pipeline = FakePipeline(StateClient(client.config), set(originals))
    server, url = serve_resume_endpoint(pipeline.handle)
    env = {
        **os.environ,
        "TDEV_ENV": client.config.env,
        "AWS_ENDPOINT_URL": client.config.endpoint_url or "",
        "TDEV_PAYLOAD_BUCKET": client.config.payload_bucket or "",
    }
    time.sleep(STALL_SECONDS)  # the last runs created must look stalled too
    workers = [start_worker(i, url, env, stall=STALL_SECONDS) for i in range(WORKERS)]
    rng = random.Random(7)
    kills = 0
    deadline = time.monotonic() + 420
    try:
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.5, 2.0))
            victim = rng.randrange(WORKERS)
            workers[victim].send_signal(signal.SIGKILL)
            workers[victim].wait()
            kills += 1
            workers[victim] = start_worker(victim + 10 * kills, url, env, stall=STALL_SECONDS)
            if len(pipeline.accepted) >= RUNS:
                break
        # Let the survivors finish what they hold, without more kills.
        settle = time.monotonic() + 60
        while len(pipeline.accepted) < RUNS and time.monotonic() < settle:
            time.sleep(0.5)
    finally:
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        for proc in workers:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        server.shutdown()

    assert not pipeline.errors, pipeline.errors[:5]
    assert kills >= 5
    assert len(pipeline.accepted) == RUNS, f"{RUNS - len(pipeline.accepted)} runs never resumed"
    assert max(pipeline.accepted.values()) == 1, "a run was resumed twice"
    rerun = [(sid, agent) for sid, agent in pipeline.ran if agent in originals[sid]]
    assert rerun == [], f"completed agents ran again: {rerun[:5]}"
    for sid in originals:
        session = client.sessions.get(sid)
        assert session.status is SessionStatus.COMPLETED, (sid, session.status)
        for execution in client.executions.list(sid, load_payloads=True):
            expected = "original" if execution.agent_name in originals[sid] else "resume"
            assert execution.output_data == {"by": expected}
    print(f"\nchaos: {RUNS} runs, {kills} SIGKILLs, {pipeline.stale} stale-token requests rejected")
    record(
        "recovery workers SIGKILLed at random (5 replicas)",
        lost=RUNS - len(pipeline.accepted),
        double_counted=len(rerun),
        resumed_twice=sum(1 for n in pipeline.accepted.values() if n > 1),
        runs=RUNS,
        sigkills=kills,
        stale_token_requests_rejected=pipeline.stale,
    )
