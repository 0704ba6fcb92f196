"""Recovery claims on the session item: a lease (owner, expiry) and a monotonically increasing fencing token.

The session rows `claim`, `extend`, `next_attempt`, `hand_over`, `release` and `abandon` of
`rules.SESSION_RULES`, applied. A claim succeeds only if the run is still as the sweep saw it (status,
last_updated) and no live lease exists, and it increments `fencing_token`, so a token orders all claims ever
made on the run. Every later write of the claim is conditioned on that token and owner: a worker whose lease
expired and was taken over cannot write again (ClaimLostError), and the pipeline can reject its requests by
comparing tokens (unlike a random record version, which cannot be ordered).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import NoReturn

from tdev_state import validate as check
from tdev_state.exceptions import ClaimLostError, StateError
from tdev_state.log import get_logger
from tdev_state.models import RecoveryCandidate, SessionStatus, epoch
from tdev_state.runs.eventlog import log_run_event
from tdev_state.runs.rules import SessionKind, require_claim, session_expr, status_effects
from tdev_state.runs.writer import RowWrite, TransitionWriter
from tdev_state.storage import Expr, Item
from tdev_state.usage import UsageEvent, UsageKind

log = get_logger(__name__)


@dataclass(frozen=True)
class Claim:
    """A held claim on one run."""

    session_id: str
    worker_id: str
    fencing_token: int
    status: SessionStatus
    lease_expires_at: datetime
    #: Resume attempts counted on the run so far, this one included (they survive lost claims).
    attempt: int
    resume_count: int
    last_updated: datetime
    #: Why the previous attempt failed (None for a first attempt).
    last_error: str | None = None
    #: The run's progress when claimed (agents finished); while the claim holds, nobody else moves it.
    progress: int = 0
    #: The agents the run policy tolerated as failed: never rerun.
    failed_agents: tuple[str, ...] = ()
    #: The lease is gone under this claim's token — the run reached a final status (a resumer ran it to
    #: the end) or this claim handed it over: there is nothing left to extend, and nothing was lost.
    ended: bool = False
    #: The run is a fork (`sessions.fork`): its first hand-over is how it starts, not a recovery.
    forked: bool = False

    @property
    def recoveries(self) -> int:
        """Resumes so far that recovered the run (`Session.recoveries`): what `max_resumes` bounds."""
        return max(0, self.resume_count - (1 if self.forked else 0))


class _RunEnded(ClaimLostError):
    """This claim's lease is gone but its fencing token is still the run's: the run became final
    (COMPLETED/ABANDONED), or this claim itself handed it over — nobody else took it."""

    def __init__(self, message: str, *, status: str) -> None:
        super().__init__(message)
        self.status = status


_FINAL = (SessionStatus.COMPLETED.value, SessionStatus.ABANDONED.value)


class ClaimStore:
    """Claim, extend, release, hand over and abandon runs on `t-developer-{env}-pipeline-sessions`."""

    def __init__(self, writer: TransitionWriter, clock: Callable[[], datetime]) -> None:
        self._writer = writer
        self._layer = writer.layer
        self._table = writer.layer.tables.sessions
        self._clock = clock

    def claim(self, candidate: RecoveryCandidate, *, worker_id: str, lease: timedelta) -> Claim | None:
        """Take the run if it is unchanged since the sweep and not leased; None if someone was faster."""
        owner = check.identifier("worker_id", worker_id)
        now = self._clock()
        expr = self._expr("claim")
        expr.require_equal("status", candidate.status.value)
        # The liveness signature the claimer judged (RecoveryCandidate.signature): any transition or
        # heartbeat since then refuses the claim.
        expr.require_equal("last_updated", epoch(candidate.last_updated))
        expr.require_equal("version", candidate.version)
        beats = expr.n("beats")
        expr.require(
            f"{beats} = {expr.v(candidate.beats)}"
            + (f" OR attribute_not_exists({beats})" if candidate.beats == 0 else "")
        )
        lease_at = expr.n("lease_expires_at")
        expr.require(f"attribute_not_exists({lease_at}) OR {lease_at} < {expr.v(epoch(now))}")
        # The token the sweep saw, so the history entry below can name the token this claim makes.
        token = expr.n("fencing_token")
        seen = candidate.fencing_token
        expr.require(
            f"{token} = {expr.v(seen)}" + (f" OR attribute_not_exists({token})" if seen == 0 else "")
        )
        expr.set_many({"lease_owner": owner, "lease_expires_at": epoch(now + lease)})
        expr.increment("fencing_token").increment("resume_attempts")
        _log(expr, "claimed", now, seen + 1, owner)
        item = self._writer.apply(
            RowWrite(
                candidate.session_id,
                expr.action(self._table, {"session_id": candidate.session_id}),
                refused=lambda _: None,  # someone was faster, or the run moved: not ours to take
                applied=lambda new: new,
                returns=True,
            )
        )
        if item is None:
            return None
        claim = Claim(
            session_id=candidate.session_id,
            worker_id=owner,
            fencing_token=int(item["fencing_token"]),
            status=candidate.status,
            lease_expires_at=now + lease,
            attempt=int(item["resume_attempts"]),
            resume_count=int(item.get("resume_count", 0)),
            last_updated=candidate.last_updated,
            last_error=item.get("last_resume_error"),
            progress=int(item.get("progress", 0)),
            failed_agents=tuple(sorted(item.get("failed_agents") or ())),
            forked=item.get("parent_id") is not None,
        )
        log.info(
            "claim.taken",
            session_id=claim.session_id,
            fencing_token=claim.fencing_token,
            attempt=claim.attempt,
        )
        return claim

    def extend(self, claim: Claim, *, lease: timedelta) -> Claim:
        """Heartbeat the lease; ClaimLostError if another worker holds the run now. A run that reached a
        final status under this claim (a resumer ran it to its end) is not lost: the claim comes back with
        `ended` set, and there is nothing left to extend."""
        if claim.ended:
            return claim
        expires = self._clock() + lease
        try:
            self._fenced(claim, self._expr("extend").set("lease_expires_at", epoch(expires)))
        except _RunEnded:  # the run ended, or the hand-over raced this heartbeat: nothing was lost
            log.info("claim.ended", session_id=claim.session_id, fencing_token=claim.fencing_token)
            return replace(claim, ended=True)
        return replace(claim, lease_expires_at=expires)

    def next_attempt(self, claim: Claim, *, error: str) -> Claim:
        """Count one more attempt under the same claim, after a failure, with its reason."""
        reason = check.error_text(error)
        expr = self._expr("next_attempt").increment("resume_attempts").set("last_resume_error", reason)
        now = self._clock()
        _log(expr, "attempt_failed", now, claim.fencing_token, claim.worker_id, claim.attempt, reason)
        self._fenced(claim, expr)
        return replace(claim, attempt=claim.attempt + 1, last_error=reason)

    def handed_over(self, claim: Claim, *, cooldown: timedelta = timedelta(seconds=120)) -> None:
        """The pipeline accepted the resume: count it, reset attempts, refresh liveness, drop the lease.

        The hand-over is the run's latest sign of life and declares the resume's cool-down as its window
        (`live_for`, `stalled_at`): under the one rule (`RecoveryPolicy`) nobody — worker, console, a second
        click — takes the run again before the resumed pipeline has had that long to write.

        A resumer that ran the rest of the run before returning may find it COMPLETED (or ABANDONED), which
        removed the lease: while the fencing token is still this claim's, that is this resume's success, and
        it is recorded as one (count and history), never as a lost claim.
        """
        moment = self._clock()
        now = epoch(moment)
        expr = self._expr("hand_over").increment("resume_count")
        expr.set_many(
            {
                "resume_attempts": 0,
                "last_resumed_at": now,
                "last_updated": now,
                "live_for": cooldown.total_seconds(),
                "stalled_at": epoch(moment + cooldown),
            }
        )
        expr.remove("lease_owner", "lease_expires_at", "last_resume_error")
        _log(expr, "resumed", moment, claim.fencing_token, claim.worker_id, claim.attempt)
        try:
            self._fenced(claim, expr)
        except _RunEnded as ended:
            if ended.status not in _FINAL:
                return  # this very hand-over landed already (a retried call): counted once
            self._handed_over_ended(claim, moment)
        self._emit(claim, "run_resumed")

    def _handed_over_ended(self, claim: Claim, moment: datetime) -> None:
        """The hand-over of a run that ended under this claim: the count and the history only."""
        expr = Expr().require_in("status", list(_FINAL)).require_equal("fencing_token", claim.fencing_token)
        expr.increment("resume_count").set_many({"resume_attempts": 0, "last_resumed_at": epoch(moment)})
        expr.remove("last_resume_error")
        # Not versioned (no event): the run ended under this claim; its end was the event.
        _log(expr, "resumed", moment, claim.fencing_token, claim.worker_id, claim.attempt, event=False)

        self._apply_claimed(claim, expr, lambda old: _lost(claim, old))
        log.info("claim.handed_over_after_end", session_id=claim.session_id, token=claim.fencing_token)

    def release(self, claim: Claim) -> None:
        """Give the run back untouched (shutdown): another worker may take it at once."""
        try:
            expr = self._expr("release").remove("lease_owner", "lease_expires_at")
            _log(expr, "released", self._clock(), claim.fencing_token, claim.worker_id, claim.attempt)
            self._fenced(claim, expr)
        except ClaimLostError:
            return  # already someone else's: nothing to give back

    def abandon(self, claim: Claim, *, reason: str) -> None:
        """Final: ABANDONED with the reason and the retention TTL; the run leaves the recovery index."""
        why = check.error_text(reason)
        moment = self._clock()
        expr = self._expr("abandon").set_many(
            {"abandon_reason": why, "error_message": why, "last_updated": epoch(moment)}
        )
        status_effects(
            expr,
            claim.session_id,
            SessionStatus.ABANDONED,
            now=moment,
            retention_days=self._layer.config.retention_days,
        )
        _log(expr, "abandoned", moment, claim.fencing_token, claim.worker_id, claim.attempt, why)
        self._fenced(claim, expr)
        log.warning("run.abandoned", session_id=claim.session_id, reason=why)
        self._emit(claim, "run_abandoned")

    def _emit(self, claim: Claim, kind: UsageKind) -> None:
        """A usage event for an applied claim write; the run's type is read once (consistent) for it."""
        usage = self._layer.usage
        if not usage.on:
            return
        try:
            item = self._layer.get(self._table, {"session_id": claim.session_id}) or {}
            kind_of_run = str(item.get("pipeline_type", "UNKNOWN"))
        except StateError as exc:  # counted anyway, by type "UNKNOWN": totals stay exact
            log.warning("usage.session_unreadable", session_id=claim.session_id, error=str(exc))
            kind_of_run = "UNKNOWN"
        usage.emit(UsageEvent(kind, self._clock(), session_id=claim.session_id, pipeline_type=kind_of_run))

    # --- helpers --------------------------------------------------------------------------------------

    @staticmethod
    def _expr(kind: SessionKind) -> Expr:
        return session_expr(kind)

    def _fenced(self, claim: Claim, expr: Expr) -> None:
        """Apply a claim's write, fenced by its token. Exactly once: the write carries a request id, so when
        botocore's retry after a lost response is refused (the first attempt applied, the run moved on), the
        refusal's old item shows it was ours and the step counts once — not as a lost claim, not twice."""
        require_claim(expr, claim.fencing_token, claim.worker_id)
        request = uuid.uuid4().hex
        alias = expr.n("claim_request")
        # A retry of an applied write must not apply again (next_attempt would count twice): refused here.
        expr.require(f"attribute_not_exists({alias}) OR {alias} <> {expr.v(request)}")
        expr.set("claim_request", request)

        def refused(old: Item | None) -> None:
            if old is not None and old.get("claim_request") == request:
                log.info("claim.retry_applied", session_id=claim.session_id, token=claim.fencing_token)
                return
            newer = old.get("fencing_token") if old else None
            # Only a final status or this claim's own hand-over removes the lease without a new token.
            if old is not None and newer == claim.fencing_token and old.get("lease_owner") is None:
                raise _RunEnded(
                    f"{claim.session_id} is {old.get('status')}, unleased, at this claim's token {newer}",
                    status=str(old.get("status")),
                )
            _lost(claim, old)

        self._apply_claimed(claim, expr, refused)

    def _apply_claimed(self, claim: Claim, expr: Expr, refused: Callable[[Item | None], None]) -> None:
        """Write `expr` to the claimed run's session; a refusal goes to `refused`, which accepts it (returns)
        or explains it (raises)."""
        self._writer.apply(
            RowWrite(
                claim.session_id,
                expr.action(self._table, {"session_id": claim.session_id}),
                refused=refused,
                applied=lambda _: None,
            )
        )


def _lost(claim: Claim, old: Item | None) -> NoReturn:
    """The claim was taken over (a newer token) or the run moved on without it."""
    newer = old.get("fencing_token") if old else None
    raise ClaimLostError(f"lost the claim on {claim.session_id} (token {claim.fencing_token}; now {newer})")


#: The claim steps that are versioned writes, hence events of the run (release and extend are not).
RUN_EVENTS = frozenset({"claimed", "attempt_failed", "resumed", "abandoned"})

#: Characters of an error or reason kept in a history entry (the full last error stays in its own field).
HISTORY_DETAIL_CHARS = 300


def _log(  # noqa: PLR0917 - one entry's fields, in the order the history shows them
    expr: Expr,
    kind: str,
    moment: datetime,
    token: int,
    worker: str,
    attempt: int | None = None,
    detail: str | None = None,
    *,
    event: bool = True,
) -> None:
    """Append one step to the run's `recovery_log`, in the same conditional write that makes the step (and,
    when the write bumps the version — `event` — to its `run_log`, the event log's session half).

    Short keys keep each entry near 100 bytes: a run is claimed a handful of times at most (attempts and
    resumes are capped), so the list stays small, and it adds write units only to recovered runs.
    """
    if kind in RUN_EVENTS and event:  # the run's event log too (runs.eventlog): a versioned claim write
        log_run_event(expr, kind, moment, token=token, attempt=attempt, error=detail)
    entry: dict[str, object] = {"k": kind, "at": epoch(moment), "t": token, "w": worker}
    if attempt is not None:
        entry["n"] = attempt
    if detail is not None:
        entry["d"] = detail[:HISTORY_DETAIL_CHARS]
    expr.append("recovery_log", [entry])
