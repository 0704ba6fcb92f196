"""`resume_pipeline(session_id)`, the plan's call: one resume of one run, as an awaitable."""

from __future__ import annotations

import os
from typing import Any

from tdev_recovery.config import WorkerConfig
from tdev_recovery.exceptions import NotRecoverableError, ResumerConfigError
from tdev_recovery.resumers import Resumer, load_resumer
from tdev_recovery.worker import RecoveryWorker
from tdev_state import SessionStatus, StateClient
from tdev_state._plan import default_client
from tdev_state.models import RecoveryCandidate


async def resume_pipeline(
    session_id: str,
    *,
    resumer: Resumer | None = None,
    client: StateClient | None = None,
    config: WorkerConfig | None = None,
) -> dict[str, Any]:
    """Claim the open run `session_id` now (whatever its age) and resume it once.

    Uses the resumer given, or the one named by `TDEV_RESUMER`. Raises NotRecoverableError if the run is
    COMPLETED/ABANDONED or leased by a live worker. Returns {"session_id", "outcome", "fencing_token"}.
    """
    sync = client or (await default_client()).sync
    if resumer is None:
        spec = os.environ.get("TDEV_RESUMER")
        if not spec:
            raise ResumerConfigError("resume_pipeline needs a resumer: pass resumer= or set TDEV_RESUMER")
        resumer = load_resumer(spec)
    worker = RecoveryWorker(sync, resumer, config)
    claims = sync.claims
    session = await worker._io(sync.sessions.get, session_id)
    if session.status not in (SessionStatus.ACTIVE, SessionStatus.FAILED):
        raise NotRecoverableError(f"session {session_id!r} is {session.status.value}; nothing to resume")
    candidate = RecoveryCandidate(
        session_id=session.session_id,
        status=session.status,
        last_updated=session.last_updated,
        progress=session.progress,
        current_agent=session.current_agent,
        version=session.version,
    )
    claim = await worker._io(
        claims.claim, candidate, worker_id=worker.config.worker_id, lease=worker.config.lease
    )
    if claim is None:
        raise NotRecoverableError(
            f"session {session_id!r} is held by another worker or changed meanwhile; try again later"
        )
    try:
        outcome = await worker.resume_claimed(claim)
    finally:
        await worker._drain()
    return {"session_id": session_id, "outcome": outcome.value, "fencing_token": claim.fencing_token}
