"""`resume_pipeline(session_id)`, the plan's call: one resume of one run, as an awaitable."""

from __future__ import annotations

import os
from typing import Any

from tdev_recovery.config import WorkerConfig
from tdev_recovery.exceptions import LiveRunError, NotRecoverableError, ResumerConfigError
from tdev_recovery.resumers import Resumer, ResumeRequest, load_resumer
from tdev_recovery.worker import RecoveryWorker
from tdev_state import Claim, LivenessObserver, SessionStatus, StateClient, ValidationError
from tdev_state import validate as check
from tdev_state.plan import default_client


async def resume_pipeline(
    session_id: str,
    *,
    resumer: Resumer | None = None,
    client: StateClient | None = None,
    config: WorkerConfig | None = None,
    force: bool = False,
    observer: LivenessObserver | None = None,
) -> dict[str, Any]:
    """Claim the open run `session_id` now and resume it once — unless it is live.

    The worker's own rule decides (`tdev_state.RecoveryPolicy`, shaped by `config`): a run inside the window
    its pipeline declared (an agent within its deadline, a fresh heartbeat), inside a resume's cool-down,
    or leased by a worker raises `LiveRunError` (a `NotRecoverableError`); `force=True` takes a run that is
    only live by its window or cool-down (never one a worker's lease holds). With an `observer` (a
    long-lived `LivenessObserver` of this process), the run must also have been seen unchanged for the
    confirmation window on this process's own clock, as the worker requires.

    Uses the resumer given, or the one named by `TDEV_RESUMER`. Raises NotRecoverableError if the run is
    COMPLETED/ABANDONED. Returns {"session_id", "outcome", "fencing_token"}.
    """
    sync = client or (await default_client()).sync
    if resumer is None:
        spec = os.environ.get("TDEV_RESUMER")
        if not spec:
            raise ResumerConfigError("resume_pipeline needs a resumer: pass resumer= or set TDEV_RESUMER")
        resumer = load_resumer(spec)
    worker = RecoveryWorker(sync, resumer, config)
    try:
        claim = await _claim_open_run(worker, sync, session_id, "resume", force=force, observer=observer)
        outcome = await worker.resume_claimed(claim)
    finally:
        await worker._drain()
    return {"session_id": session_id, "outcome": outcome.value, "fencing_token": claim.fencing_token}


async def abandon_pipeline(
    session_id: str,
    *,
    reason: str,
    client: StateClient | None = None,
    config: WorkerConfig | None = None,
    force: bool = False,
    observer: LivenessObserver | None = None,
) -> dict[str, Any]:
    """Give up on the open run `session_id` now, as an operator: claim it like the worker does (fencing
    token, lease) and ABANDON it with `reason` under that claim. Raises NotRecoverableError if the run is
    final already or a live worker holds it, and LiveRunError while the run is live by the worker's rule
    (`force=True` abandons it anyway). Returns {"session_id", "outcome", "fencing_token"}."""
    why = check.error_text(reason)  # refused before the claim, which would hold the run for a lease
    sync = client or (await default_client()).sync
    worker = RecoveryWorker(sync, _no_resume, config)
    try:
        claim = await _claim_open_run(worker, sync, session_id, "abandon", force=force, observer=observer)
        outcome = await worker._abandon(claim, why)
    finally:
        await worker._drain()
    return {"session_id": session_id, "outcome": outcome.value, "fencing_token": claim.fencing_token}


async def _no_resume(request: ResumeRequest) -> None:
    raise NotRecoverableError("an abandon never resumes")  # pragma: no cover - never called


async def _claim_open_run(
    worker: RecoveryWorker,
    sync: StateClient,
    session_id: str,
    what: str,
    *,
    force: bool,
    observer: LivenessObserver | None,
) -> Claim:
    """The operator's claim: the run as it is now, judged by the worker's rule (no retry delay: an operator
    acts on a FAILED run whenever its pipeline is done with it), through the sweep's own `claims.claim`."""
    if not isinstance(force, bool):
        raise ValidationError(f"force must be True or False, got {force!r:.40}")
    candidate = await worker._io(sync.sessions.candidate, session_id)
    if candidate.status not in (SessionStatus.ACTIVE, SessionStatus.FAILED):
        raise NotRecoverableError(f"session {session_id!r} is {candidate.status.value}; nothing to {what}")
    if not force:
        watched = observer.unchanged_for(candidate) if observer is not None else None
        verdict = worker.policy.judge(candidate, now=worker._clock(), unchanged_for=watched)
        if not verdict.claimable:
            wait = f"; watch it {verdict.confirm_left:.0f} s more" if verdict.confirm_left else ""
            raise LiveRunError(
                f"session {session_id!r} is not stalled — {verdict.reason}{wait}. Nothing was changed; "
                f"pass force=True to {what} it anyway"
            )
    claim = await worker._io(
        sync.claims.claim, candidate, worker_id=worker.config.worker_id, lease=worker.config.lease
    )
    if claim is None:
        raise NotRecoverableError(
            f"session {session_id!r} is held by another worker or changed meanwhile; try again later"
        )
    return claim
