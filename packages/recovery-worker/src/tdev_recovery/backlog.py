"""The recovery backlog as an operator sees it: FAILED runs and stalled ones, each with the rule's verdict.

Why here and not in the CLI: "stalled" and "may be acted on" are decided once, by `tdev_state.RecoveryPolicy`
shaped by the worker's own settings (`tdev_recovery.config.recovery_policy`). This module only asks that
rule — through `sessions.recovery_candidates` (the sparse recovery index, never a Scan) and
`RecoveryPolicy.judge` — and never compares idle times with a threshold of its own. The verdict shown is the
one `resume_pipeline` / `abandon_pipeline` reach when they claim the run now (an operator waits no retry
delay and watches no signature), so a listing and the action that follows it agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from tdev_recovery.config import WorkerConfig
from tdev_recovery.exceptions import NotRecoverableError
from tdev_recovery.plan import abandon_pipeline, resume_pipeline
from tdev_recovery.resumers import Resumer
from tdev_state import (
    AGENTS,
    RecoveryPolicy,
    SessionStatus,
    StateClient,
    StateError,
    StorageUnavailableError,
    ValidationError,
    Verdict,
)
from tdev_state.models import RecoveryCandidate, epoch_float


class BacklogKind(StrEnum):
    """Why a run is in the backlog."""

    FAILED = "FAILED"  # the pipeline gave up on it (a critical agent failed for good)
    STALLED = "stalled"  # ACTIVE, but silent past the window the rule gives it


@dataclass(frozen=True)
class BacklogEntry:
    """One run of the backlog, as read now."""

    run: RecoveryCandidate
    #: FAILED, stalled (ACTIVE past its window), or — for a run named by id — ACTIVE, COMPLETED, ABANDONED.
    state: str
    #: Silence since the run's last write (read with the caller's clock).
    idle: timedelta
    #: Whether an action now would be taken: the rule's verdict, with its reason when it would be refused.
    verdict: Verdict
    #: The owner of a lease that still holds (an action is refused until it expires), else None.
    lease_holder: str | None

    @property
    def session_id(self) -> str:
        """The run's full id."""
        return self.run.session_id

    def to_json(self) -> dict[str, Any]:
        """A flat dict for `--json`: full ids, epoch seconds (as `tdev sessions list --json` gives them)."""
        run = self.run
        until = run.lease_expires_at if self.lease_holder else None
        return {
            "session_id": run.session_id,
            "state": self.state,
            "status": run.status.value,
            "project_name": run.project_name,
            "pipeline_type": run.pipeline_type,
            "current_agent": run.current_agent,
            "progress": run.progress,
            "idle_seconds": round(self.idle.total_seconds(), 3),
            "last_updated": epoch_float(run.last_updated),
            "resume_attempts": run.resume_attempts,
            "resume_count": run.resume_count,
            "lease_owner": self.lease_holder,
            "lease_expires_at": epoch_float(until) if until is not None else None,
            "actionable": self.verdict.claimable,
            "refusal": None if self.verdict.claimable else self.verdict.reason,
        }


def judge_now(run: RecoveryCandidate, policy: RecoveryPolicy, now: datetime) -> Verdict:
    """The verdict an operator's action reaches on `run` now: not open → refused; otherwise the rule as
    `resume_pipeline` applies it (no retry delay, no own-clock observation)."""
    if run.status not in (SessionStatus.ACTIVE, SessionStatus.FAILED):
        return Verdict(False, f"the run is {run.status.value}: nothing to recover")
    return policy.judge(run, now=now)


def entry(run: RecoveryCandidate, policy: RecoveryPolicy, now: datetime) -> BacklogEntry:
    """A backlog entry for one run read now (also for a run named by id, whatever its state)."""
    held = run.lease_expires_at is not None and run.lease_expires_at > now
    if run.status is SessionStatus.ACTIVE and now >= policy.stalled_at(run):
        state = BacklogKind.STALLED.value
    else:
        state = run.status.value  # FAILED (BacklogKind.FAILED), or a live or final run named by id
    return BacklogEntry(
        run=run,
        state=state,
        idle=max(timedelta(0), now - run.last_updated),
        verdict=judge_now(run, policy, now),
        lease_holder=(run.lease_owner or "?") if held else None,
    )


def list_backlog(
    client: StateClient,
    policy: RecoveryPolicy,
    *,
    kinds: Iterable[BacklogKind] = (BacklogKind.FAILED, BacklogKind.STALLED),
    agent: str | None = None,
    older_than: timedelta = timedelta(0),
    limit: int = 100,
    now: datetime | None = None,
) -> list[BacklogEntry]:
    """FAILED runs (any age: an operator sees them before the worker's retry delay) and stalled ones (the
    rule's window has passed), idle at least `older_than`, at `agent` if given; oldest first, at most
    `limit`. Reads the recovery index (one Query per shard and kind) and one BatchGetItem per kind."""
    wanted = set(kinds)
    if not wanted or not wanted <= set(BacklogKind):
        raise ValidationError(f"kinds must be some of {[k.value for k in BacklogKind]}, got {sorted(wanted)}")
    if agent is not None and agent not in AGENTS:
        raise ValidationError(f"agent {agent!r:.40} is not one of the pipeline's: {', '.join(AGENTS)}")
    moment = now or client.clock()
    # The one definition of the backlog (the worker's gauge and the console count the same runs).
    runs = client.sessions.backlog(
        policy=policy,
        now=moment,
        limit=limit,
        failed=BacklogKind.FAILED in wanted,
        stalled=BacklogKind.STALLED in wanted,
        older_than=older_than,
    )
    if agent is not None:
        runs = [r for r in runs if r.current_agent == agent]
    return [entry(r, policy, moment) for r in runs]


# --- actions -------------------------------------------------------------------------------------------

RESUME = "resume"
ABANDON = "abandon"
_DONE = {RESUME: "resumed", ABANDON: "abandoned"}


@dataclass(frozen=True)
class ActionResult:
    """What one action did to one run (or, in a dry run, would do)."""

    entry: BacklogEntry
    action: str
    #: The run went as asked (resumed / abandoned; in a dry run: the rule would let it go).
    ok: bool
    #: The claim's outcome (`tdev_recovery.Outcome` value) and fencing token, when a claim was made.
    outcome: str | None = None
    fencing_token: int | None = None
    #: Why not, when not ok: the rule's refusal, or what became of the claimed run.
    reason: str | None = None
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        """A flat dict for `--json`."""
        return {
            "session_id": self.entry.session_id,
            "action": self.action,
            "state": self.entry.state,
            "ok": self.ok,
            "outcome": self.outcome,
            "fencing_token": self.fencing_token,
            "reason": self.reason,
            "dry_run": self.dry_run,
        }


def preview(row: BacklogEntry, action: str, *, force: bool = False) -> ActionResult:
    """A dry run: the rule's verdict now (with `force`, as the plan's force reads it: an open run no lease
    holds); nothing is claimed or written."""
    _check_action(action)
    forced = force and row.run.status in (SessionStatus.ACTIVE, SessionStatus.FAILED) and not row.lease_holder
    if row.verdict.claimable or forced:
        return ActionResult(row, action, ok=True, dry_run=True)
    return ActionResult(row, action, ok=False, reason=row.verdict.reason, dry_run=True)


async def act(
    row: BacklogEntry,
    action: str,
    *,
    client: StateClient,
    config: WorkerConfig,
    resumer: Resumer | None = None,
    reason: str = "",
    force: bool = False,
) -> ActionResult:
    """One run through the plan's call (`resume_pipeline` / `abandon_pipeline`: the worker's claim path).
    A refusal by the rule or the claim (live, leased, final, changed meanwhile) is a result, not an error;
    any other error (the store, a vanished run) is raised. `force` is the plan's: it takes a run that is
    only live by its window or cool-down, never one a worker's lease holds."""
    _check_action(action)
    sid = row.session_id
    try:
        if action == RESUME:
            done = await resume_pipeline(sid, resumer=resumer, client=client, config=config, force=force)
        else:
            done = await abandon_pipeline(sid, reason=reason, client=client, config=config, force=force)
    except NotRecoverableError as exc:
        return ActionResult(row, action, ok=False, reason=str(exc))
    outcome, token = str(done["outcome"]), int(done["fencing_token"])
    if outcome == _DONE[action]:
        return ActionResult(row, action, ok=True, outcome=outcome, fencing_token=token)
    # Claimed, but the run did not go (the pipeline refused the resume for good, say): the run says why.
    why = client.sessions.get(sid, strict=False).error_message or "see `tdev sessions show`"
    return ActionResult(
        row, action, ok=False, outcome=outcome, fencing_token=token, reason=f"outcome {outcome}: {why}"
    )


async def act_on_all(
    rows: Sequence[BacklogEntry],
    action: str,
    *,
    client: StateClient,
    config: WorkerConfig,
    resumer: Resumer | None = None,
    reason: str = "",
    on_result: Callable[[ActionResult], None] | None = None,
) -> list[ActionResult]:
    """Each run in turn, in the order given. `on_result` sees each result as it happens (a batch may take
    a while).

    - A refusal, or any error of one run but the store's, is that run's result; the batch goes on.
    - A store outage stops the batch (StorageUnavailableError is raised: the next claims would fail too).
    - A resume the pipeline did not take (claimed, its attempts spent, the run ABANDONED by the worker's
      rule) stops the batch too: the next runs would go the same way — a wrong resumer URL or a pipeline
      that is down must cost one run, not the whole backlog. The runs left are results saying so.
    """
    results: list[ActionResult] = []
    stopped_by: str | None = None
    for row in rows:
        if stopped_by is not None:
            result = ActionResult(
                row,
                action,
                ok=False,
                reason=f"not tried: the pipeline did not take {stopped_by}, so the "
                "batch stopped (check the resumer, then run it again)",
            )
        else:
            try:
                result = await act(row, action, client=client, config=config, resumer=resumer, reason=reason)
            except StorageUnavailableError:
                raise
            except StateError as exc:
                result = ActionResult(row, action, ok=False, reason=f"{type(exc).__name__}: {exc}")
            if action == RESUME and result.outcome is not None and not result.ok:
                stopped_by = row.session_id
        if on_result is not None:
            on_result(result)
        results.append(result)
    return results


def _check_action(action: str) -> None:
    if action not in _DONE:
        raise ValidationError(f"action must be {RESUME!r} or {ABANDON!r}, got {action!r:.40}")
