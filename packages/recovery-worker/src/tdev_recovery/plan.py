"""The plan's calls on one run: `resume_pipeline(session_id)` and `abandon_pipeline(session_id, reason=...)`.

Each is a short-lived `RecoveryWorker` and its public `resume_now` / `abandon_now`: the sweep's claim path
and the worker's `RecoveryPolicy`, with nothing of the worker's insides reached from here.
"""

from __future__ import annotations

import os
from typing import Any

from tdev_recovery.config import WorkerConfig
from tdev_recovery.exceptions import NotRecoverableError, ResumerConfigError
from tdev_recovery.resumers import Resumer, ResumeRequest, load_resumer
from tdev_recovery.worker import RecoveryWorker
from tdev_state import LivenessObserver, StateClient
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
        result = await worker.resume_now(session_id, force=force, observer=observer)
    finally:
        await worker.shutdown()
    return result.to_dict()


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
    check.error_text(reason)  # a bad reason is refused first, even where no client is configured
    sync = client or (await default_client()).sync
    worker = RecoveryWorker(sync, _no_resume, config)
    try:
        result = await worker.abandon_now(session_id, reason, force=force, observer=observer)
    finally:
        await worker.shutdown()
    return result.to_dict()


async def _no_resume(request: ResumeRequest) -> None:
    raise NotRecoverableError("an abandon never resumes")  # pragma: no cover - never called
