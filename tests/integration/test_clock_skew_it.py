"""Chaos: a pipeline host whose clock is an hour behind (far more than the stall threshold).

Its stamps make every run it writes look an hour stale to the worker. The worker must still never take the
run it keeps heartbeating — it sees the run's liveness signature change on its own monotonic clock — and
must take the run that host stopped writing, once it has seen it unchanged for the confirmation window.
Real clocks, a real worker loop, LocalStack (or AWS).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from tdev_recovery import RecoveryWorker, ResumeRequest, RetryPolicy, WorkerConfig
from tdev_state import AGENTS, StateClient

from ..chaos_report import record

SKEW = timedelta(hours=1)
BEAT_SECONDS = 0.2
CONFIG = WorkerConfig(
    worker_id="skew-worker",
    poll_interval=0.1,
    stall_threshold=timedelta(seconds=1),  # the skew is 3,600 times this
    confirm=timedelta(seconds=0.8),  # four beats' worth: a live host always changes within it
    retry_delay=timedelta(seconds=1),
    lease=timedelta(seconds=5),
    retry=RetryPolicy(initial_interval=timedelta(milliseconds=10), maximum_attempts=3),
    grace_period=1.0,
)


def behind() -> datetime:
    return datetime.now(UTC) - SKEW


def in_generation(client: StateClient) -> str:
    sid = client.sessions.create(project_name="skewed").session_id
    for agent in AGENTS[:6]:
        client.executions.complete(sid, agent, output_data={"out": agent})
    client.executions.start(sid, "generation", input_data={"project_type": "react"})
    return sid


@pytest.mark.timeout(120)
async def test_a_host_an_hour_behind_keeps_its_heartbeating_run(client: StateClient) -> None:
    """The live run of the skewed host is never claimed; its dead run is, after the confirmation window."""
    host = StateClient(client.config, clock=behind)
    live, dead = in_generation(host), in_generation(host)
    resumed: list[ResumeRequest] = []

    async def resumer(request: ResumeRequest) -> None:
        """Another pipeline host (a correct clock) takes the run over and finishes it."""
        resumed.append(request)
        client.executions.retry(request.session_id, request.next_agent)  # the interrupted attempt
        for agent in AGENTS[AGENTS.index(request.next_agent) :]:
            if agent != request.next_agent:
                client.executions.start(request.session_id, agent)
            client.executions.complete(request.session_id, agent, output_data={"by": "resume"})

    beating = asyncio.Event()
    beats = 0

    async def heartbeat() -> None:
        nonlocal beats
        while not beating.is_set():
            await asyncio.to_thread(host.sessions.heartbeat, live)
            beats += 1
            await asyncio.sleep(BEAT_SECONDS)  # the pipeline's own beat interval, not a wait on the test

    pipeline = asyncio.create_task(heartbeat())
    started = time.monotonic()
    detected: float | None = None
    async with RecoveryWorker(client, resumer, CONFIG) as worker:
        async with asyncio.timeout(60):
            while detected is None or worker.metrics.sweeps._value.get() < 40:
                if detected is None and any(r.session_id == dead for r in resumed):
                    detected = time.monotonic() - started
                await asyncio.sleep(0.05)  # polling the worker, which exposes no event for a sweep
        sweeps = int(worker.metrics.sweeps._value.get())
    beating.set()
    await pipeline

    live_claims = client.sessions.recovery_history(live).fencing_token
    assert live_claims == 0, "the heartbeating run of the skewed host was claimed"
    assert [r.session_id for r in resumed] == [dead]
    assert client.sessions.get(dead).resume_count == 1
    assert detected is not None
    record(
        "pipeline host clock 1 h behind (stall threshold 1 s)",
        lost=int(not any(r.session_id == dead for r in resumed)),
        resumed_twice=int(sum(1 for r in resumed if r.session_id == dead) > 1),
        live_runs_taken=live_claims,
        skew_seconds=int(SKEW.total_seconds()),
        confirm_seconds=CONFIG.confirm.total_seconds() if CONFIG.confirm else None,
        heartbeats=beats,
        sweeps=sweeps,
        dead_run_detected_after_seconds=round(detected, 2),
    )
