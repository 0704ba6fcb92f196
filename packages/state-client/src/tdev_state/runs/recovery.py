"""What recovery reads of the sessions table: the runs it may take (the sparse recovery index, never a
Scan), one run as a candidate now, and its recovery history. Mixed into `SessionStore`; every decision about
a run (stalled, due, the index cutoff, eligible) is `RecoveryPolicy`'s."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from tdev_state import validate as check
from tdev_state.exceptions import MalformedItemError, SessionNotFoundError, ValidationError
from tdev_state.models import RecoveryCandidate, RecoveryHistory, Session, SessionStatus, epoch
from tdev_state.runs.items import readable
from tdev_state.runs.policy import RecoveryPolicy
from tdev_state.runs.records import candidate_from_item, history_from_item, session_from_item
from tdev_state.schema import RECOVERY_INDEX_SHARDS

if TYPE_CHECKING:
    from tdev_state.layer import DynamoLayer


class RecoveryReads:
    """The recovery reads of `SessionStore` (its `_layer`, `_table` and `_clock`)."""

    _layer: DynamoLayer
    _table: str
    _clock: Callable[[], datetime]

    def recovery_candidates(
        self,
        *,
        failed_idle: timedelta | None,
        stalled_idle: timedelta | None,
        limit: int = 100,
        now: datetime | None = None,
        policy: RecoveryPolicy | None = None,
        live: bool = False,
        on_malformed: Callable[[MalformedItemError], None] | None = None,
    ) -> list[RecoveryCandidate]:
        """Open runs recovery may take, oldest first — from the sparse recovery index, never a Scan.

        FAILED runs (unless `failed_idle` is None) and ACTIVE runs (unless `stalled_idle` is None) that are
        stalled under `policy` (their declared window, or its stall threshold, has passed: `RecoveryPolicy`)
        and silent for at least the given idle time. `live=True` lists every open run of those kinds silent
        that long, stalled or not (what an operator's listing shows). Hits are confirmed on the base table,
        but a claim must still be a conditional write: another worker may act between this read and yours.
        The decision to claim is `RecoveryPolicy.judge` (with the caller's own observation of the run).

        An unreadable session item (MalformedItemError) is left out, logged, and passed to `on_malformed`
        (the worker counts it): one bad item never stops the sweep of the others.
        """
        size = check.limit(limit)
        moment = now or self._clock()
        rule = policy or RecoveryPolicy(run_policy=self._layer.config.run_policy)
        if not isinstance(rule, RecoveryPolicy):
            raise ValidationError(f"policy must be a RecoveryPolicy, got {type(rule).__name__}")
        if not isinstance(live, bool):
            raise ValidationError(f"live must be True or False, got {live!r:.40}")
        floors: dict[SessionStatus, timedelta] = {}
        keys: list[dict[str, Any]] = []
        for status, idle in ((SessionStatus.FAILED, failed_idle), (SessionStatus.ACTIVE, stalled_idle)):
            if idle is None:
                continue
            if not isinstance(idle, timedelta) or not timedelta(0) <= idle <= timedelta(days=3650):
                raise ValidationError(
                    f"idle thresholds must be timedeltas from 0 to 3650 days, got {idle!r:.60}"
                )
            floors[status] = idle
            condition, values = "recovery_shard = :shard", {}
            if not live:
                condition += " AND stalled_at < :cutoff"
                values[":cutoff"] = epoch(rule.index_cutoff(moment, idle))
            for shard in range(RECOVERY_INDEX_SHARDS):
                page = self._layer.query(
                    self._table,
                    index="by-recovery",
                    key_condition=condition,
                    values={":shard": f"{status.value}#{shard}", **values},
                    limit=size,
                )
                keys += [{"session_id": i["session_id"]} for i in page.items]
        # The index is eventually consistent and its key may lie before the exact moment: confirm each hit
        # on the base table, with one strongly consistent BatchGetItem, under the one rule.
        items = self._layer.batch_get(self._table, keys) if keys else []
        found = [
            run
            for run in readable(items, candidate_from_item, on_malformed=on_malformed)
            if run.status in floors and rule.listed(run, now=moment, idle=floors[run.status], live=live)
        ]
        found.sort(key=lambda c: c.last_updated)
        return found[:size]

    def backlog(
        self,
        *,
        policy: RecoveryPolicy | None = None,
        now: datetime | None = None,
        limit: int = 100,
        failed: bool = True,
        stalled: bool = True,
        older_than: timedelta = timedelta(0),
        on_malformed: Callable[[MalformedItemError], None] | None = None,
    ) -> list[RecoveryCandidate]:
        """The recovery backlog — the one definition that the worker's `tdev_recovery_backlog` gauge, the
        console's backlog page and `tdev backlog list` all count: every FAILED run (any age: an operator
        sees it before the worker's retry delay) and every ACTIVE run stalled under `policy`, silent for at
        least `older_than`, oldest first, at most `limit`. `failed=False` / `stalled=False` leave a kind out
        (the CLI's filters). Two index reads per kind and shard, one BatchGetItem per kind."""
        size = check.limit(limit)
        for name, flag in (("failed", failed), ("stalled", stalled)):
            if not isinstance(flag, bool):
                raise ValidationError(f"{name} must be True or False, got {flag!r:.40}")
        moment = now or self._clock()
        runs: list[RecoveryCandidate] = []
        for kind, wanted in ((SessionStatus.FAILED, failed), (SessionStatus.ACTIVE, stalled)):
            if wanted:  # FAILED: every one (live); ACTIVE: those stalled under the policy
                runs += self.recovery_candidates(
                    failed_idle=older_than if kind is SessionStatus.FAILED else None,
                    stalled_idle=older_than if kind is SessionStatus.ACTIVE else None,
                    live=kind is SessionStatus.FAILED,
                    limit=size,
                    now=moment,
                    policy=policy,
                    on_malformed=on_malformed,
                )
        runs.sort(key=lambda c: c.last_updated)
        return runs[:size]

    def candidate(self, session_id: str) -> RecoveryCandidate:
        """The run as a recovery candidate now, whatever its age or status (one consistent read): what an
        operator's "resume now" or "abandon" claims, through the same `claims.claim` as the sweep."""
        sid = check.identifier("session_id", session_id, existing=True)
        item = self._layer.get(self._table, {"session_id": sid})
        if item is None:
            raise SessionNotFoundError(f"no pipeline session {sid!r} in env {self._layer.config.env!r}")
        return candidate_from_item(item)

    def recovery_history(self, session_id: str) -> RecoveryHistory:
        """What recovery did to the run: its claim counters and lease now, and each step in order (claimed,
        attempt failed, resumed, released, abandoned), as the claims recorded them. One consistent read."""
        sid = check.identifier("session_id", session_id, existing=True)
        item = self._layer.get(self._table, {"session_id": sid})
        if item is None:
            raise SessionNotFoundError(f"no pipeline session {sid!r} in env {self._layer.config.env!r}")
        return history_from_item(item)

    def failed_sessions(
        self, *, older_than: timedelta = timedelta(hours=1), limit: int = 100
    ) -> list[Session]:
        """FAILED sessions idle for longer than `older_than` (the plan's phase-2 rule: one hour)."""
        # A listing, as the plan reads it (idle since the last write): whether a run may be taken over is
        # resume_pipeline's decision, under the one rule (RecoveryPolicy).
        candidates = self.recovery_candidates(
            failed_idle=older_than, stalled_idle=None, limit=limit, live=True
        )
        keys = [{"session_id": c.session_id} for c in candidates if c.status is SessionStatus.FAILED]
        items = self._layer.batch_get(self._table, keys) if keys else []
        # The index lags the table: keep only what the table itself still says is FAILED.
        return [
            s
            for s in readable(items, lambda i: session_from_item(i, self._layer, strict=False))
            if s.status is SessionStatus.FAILED
        ]
