"""Claims on the base table: a lease (owner, expiry) and a monotonically increasing fencing token.

Every write here is a conditional UpdateItem on the session item. The claim succeeds only if the run is
still as the sweep saw it (status, last_updated) and no live lease exists, and it increments
`fencing_token`, so a token orders all claims ever made on the run. Every later write of the claim is
conditioned on that token: a worker whose lease expired and was taken over cannot write again, and the
pipeline can reject its requests by comparing tokens (unlike a random record version, which can't be ordered).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from tdev_recovery.exceptions import ClaimLostError
from tdev_state.dynamo import ConditionFailed, DynamoLayer
from tdev_state.models import RecoveryCandidate, SessionStatus, format_ts

log = structlog.get_logger("tdev_recovery.claims")


@dataclass(frozen=True)
class Claim:
    """A held claim on one run."""

    session_id: str
    worker_id: str
    fencing_token: int
    status: SessionStatus
    lease_expires_at: datetime
    attempt: int
    resume_count: int
    last_updated: datetime


class ClaimStore:
    """Claim, extend, release and finish runs on `t-developer-{env}-pipeline-sessions`."""

    def __init__(self, layer: DynamoLayer, clock: Callable[[], datetime]) -> None:
        self._layer = layer
        self._table = layer.tables.sessions
        self._clock = clock

    def claim(self, candidate: RecoveryCandidate, *, worker_id: str, lease: timedelta) -> Claim | None:
        """Take the run if it is unchanged since the sweep and not leased; None if someone was faster."""
        now = self._clock()
        try:
            item = self._layer.update(
                self._table,
                {"session_id": candidate.session_id},
                update="SET lease_owner = :w, lease_expires_at = :exp, "
                "fencing_token = if_not_exists(fencing_token, :zero) + :one, "
                "resume_attempts = if_not_exists(resume_attempts, :zero) + :one, "
                "version = version + :one",
                condition="#s = :status AND last_updated = :seen "
                "AND (attribute_not_exists(lease_expires_at) OR lease_expires_at < :now)",
                names={"#s": "status"},
                values={
                    ":w": worker_id,
                    ":exp": format_ts(now + lease),
                    ":zero": 0,
                    ":one": 1,
                    ":status": candidate.status.value,
                    ":seen": format_ts(candidate.last_updated),
                    ":now": format_ts(now),
                },
                return_values="ALL_NEW",
            )
        except ConditionFailed:
            return None
        assert item is not None
        claim = Claim(
            session_id=candidate.session_id,
            worker_id=worker_id,
            fencing_token=int(item["fencing_token"]),
            status=candidate.status,
            lease_expires_at=now + lease,
            attempt=int(item["resume_attempts"]),
            resume_count=int(item.get("resume_count", 0)),
            last_updated=candidate.last_updated,
        )
        log.info(
            "claim.taken",
            session_id=claim.session_id,
            fencing_token=claim.fencing_token,
            attempt=claim.attempt,
        )
        return claim

    def extend(self, claim: Claim, *, lease: timedelta) -> Claim:
        """Heartbeat the lease; ClaimLostError if another worker holds the run now."""
        expires = self._clock() + lease
        self._guarded(claim, "SET lease_expires_at = :exp", {":exp": format_ts(expires)})
        return Claim(**{**claim.__dict__, "lease_expires_at": expires})

    def next_attempt(self, claim: Claim) -> Claim:
        """Count one more attempt under the same claim (after a retryable failure)."""
        self._guarded(claim, "SET resume_attempts = resume_attempts + :one", {":one": 1})
        return Claim(**{**claim.__dict__, "attempt": claim.attempt + 1})

    def handed_over(self, claim: Claim) -> None:
        """The pipeline accepted the resume: count it, reset attempts, refresh liveness, drop the lease.

        `last_updated` and `alive_at` move to now: the hand-over is the run's latest sign of life, so it is
        not taken again unless the pipeline then stays silent for a whole stall threshold (or retry delay).
        """
        now = format_ts(self._clock())
        self._guarded(
            claim,
            "SET resume_count = if_not_exists(resume_count, :zero) + :one, resume_attempts = :zero, "
            "last_resumed_at = :now, last_updated = :now, alive_at = :now, version = version + :one "
            "REMOVE lease_owner, lease_expires_at",
            {":zero": 0, ":one": 1, ":now": now},
        )

    def release(self, claim: Claim) -> None:
        """Give the run back untouched (shutdown): another worker may take it at once."""
        with contextlib.suppress(ClaimLostError):  # already someone else's: nothing to give back
            self._guarded(claim, "REMOVE lease_owner, lease_expires_at", {})

    def abandon(self, claim: Claim, *, reason: str) -> None:
        """Final: ABANDONED with the reason; the run leaves the recovery index."""
        now = format_ts(self._clock())
        self._guarded(
            claim,
            "SET #s = :abandoned, abandon_reason = :why, error_message = :why, last_updated = :now, "
            "version = version + :one REMOVE recovery_shard, lease_owner, lease_expires_at",
            {":abandoned": SessionStatus.ABANDONED.value, ":why": reason[:4000], ":now": now, ":one": 1},
            names={"#s": "status"},
        )
        log.warning("run.abandoned", session_id=claim.session_id, reason=reason)

    def _guarded(
        self,
        claim: Claim,
        update: str,
        values: dict[str, Any],
        names: dict[str, str] | None = None,
    ) -> None:
        try:
            self._layer.update(
                self._table,
                {"session_id": claim.session_id},
                update=update,
                condition="fencing_token = :token AND lease_owner = :w",
                names=names,
                values={**values, ":token": claim.fencing_token, ":w": claim.worker_id},
            )
        except ConditionFailed as exc:
            newer = exc.old_item.get("fencing_token") if exc.old_item else None
            raise ClaimLostError(
                f"lost the claim on {claim.session_id} (token {claim.fencing_token}; now {newer})"
            ) from None
