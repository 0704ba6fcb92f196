"""The recovery worker's public face (issue 24): `resume_now` / `abandon_now` on one run through the sweep's
claim path and the shared RecoveryPolicy, tracked by the worker's lifecycle; and no caller outside
tdev_recovery reaching into a worker's private attributes."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from pathlib import Path

import pytest

import tdev_recovery
from tdev_recovery import (
    ActionResult,
    LiveRunError,
    NotRecoverableError,
    Outcome,
    RecoveryError,
    RecoveryWorker,
    ResumeRequest,
    WorkerConfig,
)
from tdev_state import SessionStatus, StateClient, ValidationError
from tdev_state.testing import FakeClock

from ..console_runs import make_failed_run

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = WorkerConfig(worker_id="operator-1", confirm=timedelta(0), grace_period=0.05)


class Gate:
    """A resumer that records its requests and, when `hold` is set, waits until released."""

    def __init__(self, *, hold: bool = False) -> None:
        self.requests: list[ResumeRequest] = []
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        if not hold:
            self.release.set()

    async def __call__(self, request: ResumeRequest) -> None:
        self.requests.append(request)
        self.entered.set()
        await self.release.wait()


async def test_resume_now_claims_through_the_sweeps_path_and_resumes(
    client: StateClient, clock: FakeClock
) -> None:
    """A FAILED run past its window: claimed with fencing token 1, sent from generation, handed over."""
    sid = make_failed_run(client)
    clock.advance(minutes=12)
    gate = Gate()
    worker = RecoveryWorker(client, gate, OPERATOR, clock=clock)
    try:
        result = await worker.resume_now(sid)
    finally:
        await worker.shutdown()
    assert result == ActionResult(sid, Outcome.RESUMED, 1)
    assert [r.next_agent for r in gate.requests] == ["generation"]
    assert [e.kind for e in client.sessions.recovery_history(sid).events] == ["claimed", "resumed"]


async def test_resume_now_refuses_a_live_run_by_the_workers_policy(
    client: StateClient, clock: FakeClock
) -> None:
    """Inside the failed agent's window the policy says live: LiveRunError, nothing claimed."""
    sid = make_failed_run(client)
    worker = RecoveryWorker(client, Gate(), OPERATOR, clock=clock)
    try:
        with pytest.raises(LiveRunError, match="is not stalled"):
            await worker.resume_now(sid)
    finally:
        await worker.shutdown()
    assert client.sessions.recovery_history(sid).fencing_token == 0


async def test_abandon_now_refuses_an_empty_reason_before_claiming(
    client: StateClient, clock: FakeClock
) -> None:
    """A blank reason is a ValidationError and the run is not even claimed."""
    sid = make_failed_run(client)
    clock.advance(minutes=12)
    worker = RecoveryWorker(client, Gate(), OPERATOR, clock=clock)
    try:
        with pytest.raises(ValidationError):
            await worker.abandon_now(sid, "   ")
        assert client.sessions.recovery_history(sid).fencing_token == 0
        result = await worker.abandon_now(sid, "customer cancelled")
    finally:
        await worker.shutdown()
    assert result.to_dict() == {"session_id": sid, "outcome": "abandoned", "fencing_token": 1}
    assert client.sessions.get(sid).status is SessionStatus.ABANDONED
    with pytest.raises(NotRecoverableError, match="ABANDONED"):
        await RecoveryWorker(client, Gate(), OPERATOR, clock=clock).abandon_now(sid, "again")


async def test_a_resume_now_in_flight_is_drained_by_shutdown(client: StateClient, clock: FakeClock) -> None:
    """An operator's resume is tracked with the sweep's: shutdown releases it after the grace period."""
    sid = make_failed_run(client)
    clock.advance(minutes=12)
    gate = Gate(hold=True)
    worker = RecoveryWorker(client, gate, OPERATOR, clock=clock)
    action = asyncio.create_task(worker.resume_now(sid))
    await asyncio.wait_for(gate.entered.wait(), 10)
    assert worker.inflight == frozenset({sid})
    await worker.shutdown()
    result = await action
    assert result.outcome is Outcome.RELEASED
    assert worker.is_shutdown
    assert [e.kind for e in client.sessions.recovery_history(sid).events] == ["claimed", "released"]


async def test_a_shut_down_worker_takes_no_action(client: StateClient, clock: FakeClock) -> None:
    """After shutdown, resume_now says so (a RecoveryError) and claims nothing."""
    sid = make_failed_run(client)
    clock.advance(minutes=12)
    worker = RecoveryWorker(client, Gate(), OPERATOR, clock=clock)
    await worker.shutdown()
    with pytest.raises(RecoveryError, match="shut down"):
        await worker.resume_now(sid)
    assert client.sessions.recovery_history(sid).fencing_token == 0


def test_the_public_face_is_sorted_and_complete(client: StateClient) -> None:
    """tdev_recovery's __all__ is sorted, every name resolves, and the worker's actions are on it."""
    names = tdev_recovery.__all__
    assert names == sorted(names)
    assert all(hasattr(tdev_recovery, n) for n in names)
    assert {"ActionResult", "LiveRunError", "Resumer", "abandon_pipeline", "resume_pipeline"} <= set(names)
    assert hasattr(RecoveryWorker, "resume_now")
    assert hasattr(RecoveryWorker, "abandon_now")
    assert not hasattr(RecoveryWorker(client, Gate(), OPERATOR), "last_sweep_monotonic")  # dead, gone


def test_nothing_outside_the_worker_reaches_its_private_attributes() -> None:
    """No `worker._…` (nor `._io` / `._drain`) outside tdev_recovery/worker.py: the public face suffices."""
    private = re.compile(r"\bworker\._[a-z]|(?<!self)\._(?:io|drain)\(")
    offenders = []
    for folder in ("packages", "tests", "demo", "benchmarks", "chaos", "examples"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "worker.py" and path.parent.name == "tdev_recovery":
                continue
            if path == Path(__file__).resolve() or ".venv" in path.parts:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if private.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []
