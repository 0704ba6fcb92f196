"""Pipeline sessions: create, read, list, optimistic updates, heartbeats, and the recovery index."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar, cast

from tdev_state import validate as check
from tdev_state._expr import Expr
from tdev_state.dynamo import ConditionFailed, Item, TransactAction, TransactionCancelled
from tdev_state.exceptions import (
    ConflictError,
    InvalidTransitionError,
    MalformedItemError,
    SessionExistsError,
    SessionNotFoundError,
    ValidationError,
)
from tdev_state.log import get_logger
from tdev_state.models import (
    AGENTS,
    AgentStatus,
    Page,
    PipelineType,
    RecoveryCandidate,
    RecoveryHistory,
    Session,
    SessionStatus,
    epoch,
)
from tdev_state.runs.items import readable
from tdev_state.runs.policy import RecoveryPolicy, declared_silence
from tdev_state.runs.records import (
    candidate_from_item,
    history_from_item,
    session_context,
    session_from_item,
    session_reader,
)
from tdev_state.runs.rules import (
    SESSION_RULES,
    SESSION_TRANSITIONS,
    agent_sort_key,
    predecessors,
    recovery_shard,
    require_within_budget,
    run_expiry,
    status_effects,
)
from tdev_state.runs.writer import TransitionWriter, run_end_events
from tdev_state.schema import RECOVERY_INDEX_SHARDS
from tdev_state.usage import UsageEvent

log = get_logger(__name__)

_UNSET: Any = object()


_Method = TypeVar("_Method", bound=Callable[..., Any])


def payload_scoped(method: _Method) -> _Method:
    """Run a store method (its first argument the session id) in the writer's payload scope."""

    @functools.wraps(method)
    def scoped(self: Any, session_id: str, *args: Any, **kwargs: Any) -> Any:
        with self._writer.scope(session_id):
            return method(self, session_id, *args, **kwargs)

    return cast(_Method, scoped)


class SessionStore:
    """Sessions in `t-developer-{env}-pipeline-sessions`.

    Every write bumps `version`. Updates from callers are conditioned on the version they read
    (optimistic locking); agent transitions (in ExecutionStore) are conditioned on the state they change.
    """

    def __init__(self, writer: TransitionWriter, clock: Callable[[], datetime]) -> None:
        self._writer = writer
        self._layer = writer.layer
        self._table = writer.layer.tables.sessions
        self._clock = clock
        self._liveness = writer.liveness

    def create(
        self,
        *,
        user_id: str | None = None,
        project_name: str | None = None,
        pipeline_type: PipelineType | str = PipelineType.SIMPLE,
        metadata: Any = None,
        session_id: str | None = None,
        request_token: str | None = None,
    ) -> Session:
        """Create an ACTIVE session at progress 0; never overwrites (SessionExistsError).

        `user_id` and `project_name` may be left out (T-Developer's orchestrator has no user id): the run is
        then simply not in the by-user index. `request_token`: the caller's own idempotency token — a create
        sent again with the same token (after a timeout whose write did land) returns the run it created
        instead of SessionExistsError, so a retried create never mistakes its own run for another's.
        """
        token = (
            check.text("request_token", request_token, allow_empty=False, max_chars=128)
            if request_token is not None
            else str(uuid.uuid4())
        )
        sid = check.identifier("session_id", session_id) if session_id is not None else str(uuid.uuid4())
        user = check.identifier("user_id", user_id) if user_id is not None else None
        name = (
            check.text("project_name", project_name, allow_empty=False, max_chars=256)
            if project_name is not None
            else None
        )
        kind = check.enum(PipelineType, "pipeline_type", pipeline_type)
        with self._writer.scope(sid):
            return self._create(sid, user, name, kind, metadata, token)

    def _create(  # noqa: PLR0917 - private; the validated arguments of create
        self, sid: str, user: str | None, name: str | None, kind: PipelineType, metadata: Any, token: str
    ) -> Session:
        encoded = self._writer.encode(
            metadata, field="metadata", object_key=sid, context=session_context(sid)
        )
        moment = self._clock()
        now = epoch(moment)
        policy = self._layer.config.run_policy
        live_for = declared_silence(policy, SessionStatus.ACTIVE, AGENTS[0], ended=False)
        stalled_at = moment + timedelta(seconds=live_for)
        item: dict[str, Any] = {
            "session_id": sid,
            "pipeline_type": kind.value,
            "status": SessionStatus.ACTIVE.value,
            "current_agent": AGENTS[0],
            "progress": 0,
            "created_at": now,
            "created_day": moment.astimezone(UTC).date().isoformat(),
            "last_updated": now,
            "version": 1,
            "resume_count": 0,
            "metadata": encoded.value,
            "recovery_shard": recovery_shard(sid, SessionStatus.ACTIVE),
            "live_for": live_for,
            "stalled_at": epoch(stalled_at),
            "last_request": token,
        }
        if user is not None:
            item["user_id"] = user
        if name is not None:
            item["project_name"] = name
        expiry = run_expiry(moment, self._layer.config.retention_days)
        if expiry is not None:  # one retention rule per run: fixed now, open or not (docs/data-model.md)
            item["expires_at"] = expiry
        try:
            self._layer.put(self._table, item, condition="attribute_not_exists(session_id)")
        except ConditionFailed as exc:
            if not (exc.old_item and exc.old_item.get("last_request") == token):
                raise SessionExistsError(
                    f"session {sid!r} already exists; pick another session_id or update it instead"
                ) from None
            if exc.old_item.get("version") != 1:  # ours, and the run has moved on since: as it is now
                return session_from_item(exc.old_item, self._layer, strict=False)
        self._liveness.mark(sid, moment, stalled_at)
        log.info("session.created", session_id=sid, user_id=user, pipeline_type=kind.value)
        usage = self._layer.usage
        if usage.on:
            started = UsageEvent(
                "run_started", moment, session_id=sid, pipeline_type=kind.value, user_id=user
            )
            usage.emit(started)
            if user is not None:
                usage.emit(UsageEvent("user_active", moment, user_id=user))
        return session_from_item(item, self._layer)

    def get(self, session_id: str, *, consistent: bool = True, strict: bool = True) -> Session:
        """The session, or SessionNotFoundError. `strict=False` reads a run whose metadata cannot be read
        (vanished object, no kms:Decrypt) with `metadata` None and the reason in `metadata_error`, as
        listings do, instead of raising the typed error."""
        sid = check.identifier("session_id", session_id, existing=True)
        item = self._layer.get(self._table, {"session_id": sid}, consistent=consistent)
        if item is None:
            raise SessionNotFoundError(f"no pipeline session {sid!r} in env {self._layer.config.env!r}")
        return session_from_item(item, self._layer, strict=strict)

    def list_for_user(
        self, user_id: str, *, limit: int = 20, cursor: str | None = None, load_metadata: bool = True
    ) -> Page[Session]:
        """A user's sessions, newest first: the by-user index (keys only), then one BatchGetItem.
        `load_metadata=False` skips reading offloaded or sealed metadata (an S3 GET or KMS call each)."""
        user = check.identifier("user_id", user_id, existing=True)
        return self._keys_only_page("by-user", "user_id", user, "created_at", limit, cursor, load_metadata)

    def list_by_day(
        self,
        day: date,
        *,
        status: SessionStatus | str | None = None,
        limit: int = 20,
        cursor: str | None = None,
        load_metadata: bool = True,
    ) -> Page[Session]:
        """Runs started on `day` (UTC), newest first, optionally of one status: the by-day index (keys only),
        then one BatchGetItem per page. The status is filtered after the read (it changes during a run, so
        it is not in the index key): a page may hold fewer than `limit` runs while `next_cursor` is set."""
        if not isinstance(day, date) or isinstance(day, datetime):
            raise ValidationError(f"day must be a datetime.date, got {type(day).__name__}")
        wanted = check.enum(SessionStatus, "status", status) if status is not None else None
        page = self._keys_only_page(
            "by-day", "created_day", day.isoformat(), "created_at", limit, cursor, load_metadata
        )
        if wanted is None:
            return page
        return Page(
            items=[s for s in page.items if s.status is wanted],
            next_cursor=page.next_cursor,
            skipped=page.skipped,
        )

    def _keys_only_page(  # noqa: PLR0917 - private; the index's name, keys and the page
        self,
        index: str,
        key: str,
        value: str,
        sort_key: str,
        limit: int,
        cursor: str | None,
        load_metadata: bool,
    ) -> Page[Session]:
        """One page of a keys-only index, newest first, then the sessions themselves (one BatchGetItem)."""
        size = check.limit(limit)
        start = check.decode_cursor(cursor, expected_keys=("session_id", key, sort_key), expect={key: value})
        page = self._layer.query(
            self._table,
            index=index,
            key_condition=f"{key} = :k",
            values={":k": value},
            forward=False,
            limit=size,
            start_key=start,
        )
        keys = [{"session_id": i["session_id"]} for i in page.items]
        items = self._layer.batch_get(self._table, keys) if keys else []
        skipped: list[MalformedItemError] = []
        sessions = readable(
            items,
            lambda i: session_from_item(i, self._layer, strict=False, load_metadata=load_metadata),
            skipped=skipped,
        )
        return Page(items=sessions, next_cursor=check.encode_cursor(page.last_key), skipped=tuple(skipped))

    @payload_scoped
    def update(
        self,
        session_id: str,
        *,
        expected_version: int | None = None,
        status: SessionStatus | str | None = None,
        current_agent: str | None = None,
        progress: int | None = None,
        metadata: Any = _UNSET,
        error_message: str | None = None,
    ) -> Session:
        """Apply what the pipeline says about its run: a status change, metadata, an error message.

        Progress and current_agent follow the agents' transitions only: given here, they are checked
        against the stored run (and refused with InvalidTransitionError when they disagree), never written.
        A status change is checked against the lifecycle and the run policy (COMPLETED only once every agent
        finished within the failure budget). With `expected_version`, the write is also conditioned on it
        (ConflictError when another writer got there first).
        """
        sid = check.identifier("session_id", session_id)
        version = (
            check.whole("expected_version", expected_version, low=1) if expected_version is not None else None
        )
        token = str(uuid.uuid4())
        moment = self._clock()
        target = check.enum(SessionStatus, "status", status) if status is not None else None
        if target is not None and not predecessors(target):
            raise InvalidTransitionError(f"no session may move to {target.value}")
        sent_progress = (
            check.whole("progress", progress, low=0, high=len(AGENTS)) if progress is not None else None
        )
        sent_agent = check.agent(current_agent) if current_agent is not None else None
        encoded = (
            self._writer.encode(metadata, field="metadata", object_key=sid, context=session_context(sid))
            if metadata is not _UNSET
            else None
        )
        error = check.error_text(error_message) if error_message is not None else None
        policy = self._layer.config.run_policy
        # A status the pipeline sets itself ends its driving of the run (only its verdict may follow): the
        # deadline grace. Other updates keep the window of the last transition; the index key, if due, is
        # set no later than the shortest window this policy declares (never after the exact one).
        ended = target is not None and target is not SessionStatus.ACTIVE
        live_for = declared_silence(policy, SessionStatus.FAILED, None, ended=True) if ended else None
        stalled_at = moment + timedelta(
            seconds=live_for if live_for is not None else policy.shortest_silence_seconds
        )
        refresh = target is not None or self._liveness.due(sid, moment, stalled_at)

        def build(moved_past: str | None, *, repeat: bool = False) -> Expr:
            """`repeat`: the run already has the target status (FAILED saved again): a write, not a
            transition, so it counts no failure; the first attempt excludes that case by its condition."""
            expr = Expr().require_exists("session_id")
            expr.set_many({"last_updated": epoch(moment), "last_request": token}).increment("version")
            if version is not None:
                expr.require_equal("version", version)
            if target is not None:
                allowed = [target] if repeat else predecessors(target)
                if target is SessionStatus.FAILED and not repeat:
                    allowed = [s for s in allowed if s is not SessionStatus.FAILED]
                expr.require_in("status", [s.value for s in allowed])
                status_effects(
                    expr,
                    sid,
                    target,
                    now=moment,
                    retention_days=self._layer.config.retention_days,
                    repeat=repeat,
                )
                if target is SessionStatus.COMPLETED and moved_past is None:
                    expr.require_equal("progress", len(AGENTS))
                elif target is SessionStatus.COMPLETED and moved_past is not None:
                    # The pipeline ends the run with its last agent failed: that failure is moved past.
                    expr.require_equal("progress", len(AGENTS) - 1).require_equal("current_agent", moved_past)
                    expr.set("progress", len(AGENTS)).add_to_set("failed_agents", {moved_past})
                if target is SessionStatus.COMPLETED:
                    require_within_budget(expr, policy, adding=1 if moved_past else 0)
                if target is SessionStatus.ACTIVE and error is None:
                    expr.remove("error_message")
            if sent_progress is not None:
                expr.require_equal("progress", sent_progress)
            if sent_agent is not None:
                expr.require_equal("current_agent", sent_agent)
            if encoded is not None:
                expr.set("metadata", encoded.value)
            if error is not None:
                expr.set("error_message", error)
            if live_for is not None:
                expr.set("live_for", live_for)
            if refresh:
                expr.set("stalled_at", epoch(stalled_at))
            return expr

        last = AGENTS[-1]
        moved_last: str | None = None
        repeat = False
        try:
            item = self._layer.update(
                self._table, {"session_id": sid}, **build(None).kwargs(), return_values="ALL_NEW"
            )
        except ConditionFailed as exc:
            old = exc.old_item
            if old is not None and old.get("last_request") == token:
                return self.get(sid)  # our own earlier attempt was applied (retried after a timeout)
            if target is SessionStatus.FAILED and old is not None and old.get("status") == target.value:
                repeat = True
                try:
                    item = self._layer.update(
                        self._table,
                        {"session_id": sid},
                        **build(None, repeat=True).kwargs(),
                        return_values="ALL_NEW",
                    )
                except ConditionFailed as again:
                    current = again.old_item
                    if current is not None and current.get("last_request") == token:
                        return self.get(sid)
                    raise self._refusal(sid, version, target, progress, current_agent, current) from None
                return self._updated(
                    sid, item, refresh, moment, metadata, target=None, moved_past=None, stalled_at=stalled_at
                )
            ends_after_failed_last = (
                target is SessionStatus.COMPLETED
                and old is not None
                and old.get("status") == SessionStatus.ACTIVE.value
                and int(old.get("progress", -1)) == len(AGENTS) - 1
                and old.get("current_agent") == last
                and not policy.is_critical(last)
            )
            if not ends_after_failed_last:
                raise self._refusal(sid, version, target, progress, current_agent, old) from None
            check_last = TransactAction(
                "ConditionCheck",
                self._layer.tables.executions,
                key={"execution_id": sid, "agent_name": agent_sort_key(last)},
                condition="#s = :failed",
                names={"#s": "status"},
                values={":failed": AgentStatus.FAILED.value},
            )
            try:
                self._layer.transact_write(
                    [build(last).action(self._table, {"session_id": sid}), check_last], token=token
                )
            except TransactionCancelled as cancelled:
                current = cancelled.reasons[0].old_item or old
                raise self._refusal(sid, version, target, progress, current_agent, current) from None
            item = self._layer.get(self._table, {"session_id": sid})
            moved_last = last
        assert not repeat
        return self._updated(
            sid, item, refresh, moment, metadata, target=target, moved_past=moved_last, stalled_at=stalled_at
        )

    def _updated(
        self,
        sid: str,
        item: Item | None,
        refresh: bool,
        moment: datetime,
        metadata: Any,
        *,
        target: SessionStatus | None,
        moved_past: str | None,
        stalled_at: datetime,
    ) -> Session:
        """After an applied update: liveness, log, usage events (a status *change* only), the Session."""
        assert item is not None
        if refresh:
            self._liveness.mark(sid, moment, stalled_at)
        log.info(
            "session.updated",
            session_id=sid,
            status=item["status"],
            progress=int(item["progress"]),
            version=int(item["version"]),
        )
        usage = self._layer.usage
        if usage.on and target is not None:
            if moved_past is not None:
                usage.emit(UsageEvent("agent_tolerated", moment, session_id=sid, agent=moved_past))
            for event in run_end_events(target, sid, moment, item):
                usage.emit(event)
        # The write is applied: returning it must not fail on a payload it did not touch.
        known = metadata if metadata is not _UNSET else _UNSET
        return session_from_item(item, self._layer, strict=False, metadata=known)

    def record_verdict(
        self,
        session_id: str,
        *,
        success: bool,
        failed_agents: Sequence[str] = (),
        reason: str | None = None,
    ) -> Session:
        """Store the orchestrator's own verdict on an open run (`SESSION_RULES["verdict"]`).

        The orchestrator decides success by its own rule (T-Developer: at least 7 agents succeeded and fewer
        than 3 errors), which can call a run successful that the stored policy stopped — assembly failing
        after seven successes is one. `success=True` stores it COMPLETED (from ACTIVE or FAILED: the only
        way out of FAILED into COMPLETED) with `failed_agents` added to the run's list, so the recovery
        worker never "recovers" it; `success=False` stores it FAILED with `reason`. A run already final is
        returned as it is (InvalidTransitionError only if the verdict contradicts a final status).
        """
        sid = check.identifier("session_id", session_id)
        if not isinstance(success, bool):
            raise ValidationError(f"success must be True or False, got {type(success).__name__}")
        failed = {check.agent(a) for a in failed_agents}
        error = check.error_text(reason) if reason else None
        rule = SESSION_RULES["verdict"]
        target = SessionStatus.COMPLETED if success else SessionStatus.FAILED
        moment = self._clock()
        token = str(uuid.uuid4())
        # The pipeline is done driving the run: only the grace remains as its window (an open FAILED run).
        live_for = declared_silence(self._layer.config.run_policy, target, None, ended=True)
        stalled_at = moment + timedelta(seconds=live_for)

        def build(sources: list[SessionStatus], *, repeat: bool) -> Expr:
            expr = Expr().require_exists("session_id")
            expr.require_in("status", [s.value for s in sources])
            expr.set_many({"last_updated": epoch(moment), "last_request": token, "verdict": target.value})
            expr.increment("version").set("live_for", live_for).set("stalled_at", epoch(stalled_at))
            status_effects(
                expr, sid, target, now=moment, retention_days=self._layer.config.retention_days, repeat=repeat
            )
            if success:
                if failed:  # a failed run's list stays the lifecycle's: agents it moved past (tolerated)
                    expr.add_to_set("failed_agents", failed)
                expr.remove("error_message")
            else:
                expr.set("error_message", error or "the orchestrator declared the run failed")
            return expr

        sources = [s for s in rule.session_from if not (s is SessionStatus.FAILED and not success)]
        try:
            item = self._layer.update(
                self._table,
                {"session_id": sid},
                **build(sources, repeat=False).kwargs(),
                return_values="ALL_NEW",
            )
        except ConditionFailed as exc:
            old = exc.old_item
            if old is None:
                raise SessionNotFoundError(f"no pipeline session {sid!r}; create it first") from None
            if old.get("last_request") == token:
                return self.get(sid)  # applied already (our retried write)
            if old.get("status") != SessionStatus.FAILED.value or success:
                if old.get("status") == target.value:
                    return self.get(sid)  # the run is there already
                raise InvalidTransitionError(
                    f"session {sid!r} is {old.get('status')}; the orchestrator's verdict "
                    f"{'success' if success else 'failure'} cannot change a final run",
                    current=old,
                ) from None
            # FAILED already (its critical agent failed for good): the verdict still ends the pipeline's
            # window — the agent's deadline no longer applies, only the grace — and stores the reason, without
            # counting the run as failed a second time (fail_count, the usage report).
            try:
                item = self._layer.update(
                    self._table,
                    {"session_id": sid},
                    **build([SessionStatus.FAILED], repeat=True).kwargs(),
                    return_values="ALL_NEW",
                )
            except ConditionFailed:
                return self.get(sid)  # moved on meanwhile (a claim's resume, an abandon): theirs stands
            return self._updated(
                sid, item, True, moment, _UNSET, target=None, moved_past=None, stalled_at=stalled_at
            )
        return self._updated(
            sid, item, True, moment, _UNSET, target=target, moved_past=None, stalled_at=stalled_at
        )

    def heartbeat(self, session_id: str) -> datetime:
        """Refresh `last_updated` of an ACTIVE run so recovery tells a slow agent from a dead pipeline.

        It declares the heartbeat timeout as the run's window (a heartbeating run is stalled once its last
        beat is older than that, not only after its agent's deadline) and counts the beat in `beats`, which
        claimers watch on their own clock (`LivenessObserver`).

        Heartbeats deliberately do not bump `version`: they change no state anyone reads-to-write, and
        bumping it would make the pipeline's own next update fail with a spurious conflict.
        """
        sid = check.identifier("session_id", session_id)
        now = self._clock()
        live_for = self._layer.config.run_policy.heartbeat_timeout_seconds
        stalled_at = now + timedelta(seconds=live_for)
        try:
            self._layer.update(
                self._table,
                {"session_id": sid},
                update="SET last_updated = :now, live_for = :live, stalled_at = :stalled ADD beats :one",
                condition="#s = :active",
                names={"#s": "status"},
                values={
                    ":now": epoch(now),
                    ":live": live_for,
                    ":stalled": epoch(stalled_at),
                    ":one": 1,
                    ":active": SessionStatus.ACTIVE.value,
                },
            )
        except ConditionFailed as exc:
            if exc.old_item is None:
                raise SessionNotFoundError(f"no pipeline session {sid!r}") from None
            raise InvalidTransitionError(
                f"session {sid!r} is {exc.old_item.get('status')}; only ACTIVE runs heartbeat",
                current=exc.old_item,
            ) from None
        self._liveness.mark(sid, now, stalled_at)
        return now

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

    # --- helpers --------------------------------------------------------------------------------------

    def _refusal(  # noqa: PLR0911, PLR0917 - private; one return (argument) per thing refused
        self,
        sid: str,
        version: int | None,
        target: SessionStatus | None,
        progress: int | None,
        current_agent: str | None,
        old: Item | None,
    ) -> Exception:
        if old is None:
            return SessionNotFoundError(f"no pipeline session {sid!r}; create it first")
        read = session_reader(old)
        try:
            current = read.enum(SessionStatus, "status")
            stored_version, stored = read.whole("version"), read.whole("progress")
        except MalformedItemError as exc:
            return exc
        if version is not None and stored_version != version:
            return ConflictError(
                f"session {sid!r} is at version {old['version']} but you expected {version}: another "
                "writer changed it; re-read the session and decide again"
            )
        if target is not None and target not in SESSION_TRANSITIONS[current]:
            return InvalidTransitionError(
                f"session {sid!r} cannot go from {current.value} to {target.value}; from "
                f"{current.value} it may go to: "
                + (", ".join(sorted(s.value for s in SESSION_TRANSITIONS[current])) or "nothing (final)"),
                current=old,
            )
        if progress is not None and progress != stored:
            return InvalidTransitionError(
                f"session {sid!r} has progress {stored}, not {progress}: progress follows the agents "
                "(it counts the agents that finished) and is never set directly; record the agent instead",
                current=old,
            )
        if current_agent is not None and current_agent != old.get("current_agent"):
            return InvalidTransitionError(
                f"session {sid!r} is at agent {old.get('current_agent')!r}, not {current_agent!r}: "
                "current_agent follows the agents' transitions; record the agent instead",
                current=old,
            )
        failures = sorted(old.get("failed_agents") or ())
        return InvalidTransitionError(
            f"session {sid!r} cannot be COMPLETED: {stored} of {len(AGENTS)} agents finished and "
            f"{len(failures)} failed ({', '.join(failures) or 'none'}); the run policy allows "
            f"{self._layer.config.run_policy.tolerated_failures} tolerated failure(s)",
            current=old,
        )
