"""Pipeline sessions: create, read, list, the pipeline's updates, its verdict and heartbeats; the recovery
reads are mixed in (`recovery.RecoveryReads`). Every write is a row of `rules.SESSION_RULES` applied by the
one writer (`writer.TransitionWriter`); the multi-variant ones are `session_steps`."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from tdev_state import validate as check
from tdev_state.exceptions import (
    InvalidTransitionError,
    MalformedItemError,
    SessionExistsError,
    SessionNotFoundError,
    ValidationError,
)
from tdev_state.lineage import Lineage
from tdev_state.log import get_logger
from tdev_state.models import (
    AGENTS,
    Page,
    PipelineType,
    RunEvents,
    Session,
    SessionStatus,
    epoch,
)
from tdev_state.runs.eventlog import read_events
from tdev_state.runs.forks import ForkStore
from tdev_state.runs.items import readable
from tdev_state.runs.policy import declared_silence
from tdev_state.runs.records import UNSET, session_context, session_from_item
from tdev_state.runs.recovery import RecoveryReads
from tdev_state.runs.refs import REF_PREFIX, CreateWithRefs, checked_refs, is_ref_item, ref_puts, resolve
from tdev_state.runs.rules import (
    SESSION_RULES,
    predecessors,
    recovery_shard,
    run_expiry,
)
from tdev_state.runs.session_steps import StatusUpdate, VerdictStep, heartbeat_expr
from tdev_state.runs.writer import LANDED, Landed, RowWrite, TransitionWriter
from tdev_state.storage import Item, TransactAction
from tdev_state.usage import UsageEvent

log = get_logger(__name__)


class SessionStore(RecoveryReads):
    """Sessions in `t-developer-{env}-pipeline-sessions`.

    Every versioned row bumps `version` (heartbeats and lease writes do not: they change nothing anyone reads
    to write). Updates from callers may be conditioned on the version they read (optimistic locking); agent
    transitions (in ExecutionStore) are conditioned on the state they change.
    """

    def __init__(self, writer: TransitionWriter, clock: Callable[[], datetime]) -> None:
        self._writer = writer
        self._layer = writer.layer
        self._table = writer.layer.tables.sessions
        self._clock = clock
        self._liveness = writer.liveness
        self._forks = ForkStore(writer, clock)

    def create(
        self,
        *,
        user_id: str | None = None,
        project_name: str | None = None,
        pipeline_type: PipelineType | str = PipelineType.SIMPLE,
        metadata: Any = None,
        session_id: str | None = None,
        request_token: str | None = None,
        refs: Sequence[str] | None = None,
    ) -> Session:
        """Create an ACTIVE session at progress 0; never overwrites (SessionExistsError).

        `refs`: the caller's own ids for this run (T-Developer's `project_…` id), unique per env, stored in
        the same transaction as the run (`runs.refs`); `resolve` finds the run by any of them. A ref that
        another run holds refuses the create (`RefTakenError`) and nothing is written.

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
        wanted = checked_refs(refs)
        with self._writer.scope(sid):
            return self._create(sid, user, name, kind, metadata, token, wanted)

    def fork(
        self,
        id_or_ref: str,
        *,
        from_agent: str,
        overrides: Mapping[str, Any] | None = None,
        refs: Sequence[str] = (),
    ) -> Session:
        """A new run from `from_agent` of the stopped run `id_or_ref`, returned as its Session: the agents
        before it are the parent's finished results (copied as stored: no payload decoded, no S3 byte
        written), the fork point's input is the parent's with `overrides` merged at its top level, and the
        child is ACTIVE and due at once, so the recovery worker's resume path starts it. One transaction of
        at most k + 2 items for a fork at agent k, which also lists the child on the parent
        (`lineage`). Nothing is written when it raises: RunActiveError (the parent is ACTIVE or leased, or
        was resumed meanwhile; a ConflictError), ForkPointError (an agent before `from_agent` is not stored
        as finished, or overrides without a stored input to merge into), ValidationError (not an agent,
        overrides not a JSON object or the stored input not one), SessionNotFoundError, RefTakenError."""
        return self._forks.fork(id_or_ref, from_agent=from_agent, overrides=overrides, refs=refs)

    def lineage(self, id_or_ref: str) -> Lineage:
        """The run's parent and fork point (when it is a fork) and the runs forked from it."""
        return self._forks.lineage(id_or_ref)

    def resolve(self, id_or_ref: str) -> str:
        """The run id that `id_or_ref` names (the run's id or one of its refs), in one read;
        SessionNotFoundError when neither exists."""
        return resolve(self._layer, id_or_ref)

    def events(self, id_or_ref: str, *, after: int = 0) -> RunEvents:
        """The run's events after seq `after` (`runs.eventlog`): one GetItem of the session, and one Query of
        its agent items when the run moved past `after`. `id_or_ref` that is not a run's id is looked up as
        a ref (one more read). SessionNotFoundError when neither names a run."""
        key = check.identifier("id_or_ref", id_or_ref, existing=True)
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise ValidationError(f"after must be a whole number >= 0 (a seq already seen), got {after!r}")
        found = read_events(self._layer, key, after)
        if found is None and not key.startswith(REF_PREFIX):
            found = read_events(self._layer, resolve(self._layer, key), after)
        if found is None:
            raise SessionNotFoundError(f"no pipeline run {key!r} in env {self._layer.config.env!r}")
        return found

    def _create(  # noqa: PLR0917 - private; the validated arguments of create
        self,
        sid: str,
        user: str | None,
        name: str | None,
        kind: PipelineType,
        metadata: Any,
        token: str,
        refs: tuple[str, ...] = (),
    ) -> Session:
        encoded = self._writer.encode(
            metadata, field="metadata", object_key=sid, context=session_context(sid)
        )
        moment = self._clock()
        now = epoch(moment)
        policy = self._layer.config.run_policy
        status = SESSION_RULES["create"].session_to  # the row: a new run is ACTIVE at progress 0
        assert status is not None
        live_for = declared_silence(policy, status, AGENTS[0], ended=False)
        stalled_at = moment + timedelta(seconds=live_for)
        item: dict[str, Any] = {
            "session_id": sid,
            "pipeline_type": kind.value,
            "status": status.value,
            "current_agent": AGENTS[0],
            "progress": 0,
            "created_at": now,
            "created_day": moment.astimezone(UTC).date().isoformat(),
            "last_updated": now,
            "version": 1,
            "resume_count": 0,
            "metadata": encoded.value,
            "recovery_shard": recovery_shard(sid, status),
            "live_for": live_for,
            "stalled_at": epoch(stalled_at),
            "last_request": token,
        }
        if user is not None:
            item["user_id"] = user
        if name is not None:
            item["project_name"] = name
        if refs:
            item["refs"] = list(refs)
        expiry = run_expiry(moment, self._layer.config.retention_days)
        if expiry is not None:  # one retention rule per run: fixed now, open or not (docs/data-model.md)
            item["expires_at"] = expiry

        def refused(old: Item | None) -> Session | Landed:
            if not (old and old.get("last_request") == token):
                raise SessionExistsError(
                    f"session {sid!r} already exists; pick another session_id or update it instead"
                )
            if old.get("version") != 1:  # ours, and the run has moved on since: as it is now
                return session_from_item(old, self._layer, strict=False)
            return LANDED  # ours, as written: created (a retry after a timeout)

        def usage(_: Item | None) -> list[UsageEvent]:
            events = [
                UsageEvent("run_started", moment, session_id=sid, pipeline_type=kind.value, user_id=user)
            ]
            if user is not None:
                events.append(UsageEvent("user_active", moment, user_id=user))
            return events

        put = TransactAction("Put", self._table, item=item, condition="attribute_not_exists(session_id)")
        common: dict[str, Any] = {
            "refused": refused,
            "applied": lambda _: session_from_item(item, self._layer),
            "stamp": (moment, stalled_at),
            "usage": usage,
        }
        created: RowWrite[Session] = RowWrite(sid, put, **common)
        if refs:  # the refs' Puts join the session's: one transaction, all or nothing
            actions = ref_puts(self._table, sid, refs, created_at=now, expires_at=expiry)
            created = CreateWithRefs(sid, put, refs, actions, **common)
        session = self._writer.apply(created)
        if session.version == 1:
            log.info("session.created", session_id=sid, user_id=user, pipeline_type=kind.value)
        return session

    def get(self, session_id: str, *, consistent: bool = True, strict: bool = True) -> Session:
        """The session, or SessionNotFoundError. `strict=False` reads a run whose metadata cannot be read
        (vanished object, no kms:Decrypt) with `metadata` None and the reason in `metadata_error`, as
        listings do, instead of raising the typed error."""
        sid = check.identifier("session_id", session_id, existing=True)
        item = self._layer.get(self._table, {"session_id": sid}, consistent=consistent)
        if item is None or is_ref_item(item):  # a ref's own item is not a run (resolve() follows a ref)
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

    def update(
        self,
        session_id: str,
        *,
        expected_version: int | None = None,
        status: SessionStatus | str | None = None,
        current_agent: str | None = None,
        progress: int | None = None,
        metadata: Any = UNSET,
        error_message: str | None = None,
    ) -> Session:
        """Apply what the pipeline says about its run: a status change, metadata, an error message.

        Progress and current_agent follow the agents' transitions only: given here, they are checked
        against the stored run (and refused with InvalidTransitionError when they disagree), never written.
        A status change is checked against the lifecycle and the run policy (COMPLETED only once every agent
        finished within the failure budget). With `expected_version`, the write is also conditioned on it
        (ConflictError when another writer got there first). Applied as a `session_steps.StatusUpdate`.
        """
        sid = check.identifier("session_id", session_id)
        version = (
            check.whole("expected_version", expected_version, low=1) if expected_version is not None else None
        )
        target = check.enum(SessionStatus, "status", status) if status is not None else None
        if target is not None and not predecessors(target):
            raise InvalidTransitionError(f"no session may move to {target.value}")
        sent_progress = (
            check.whole("progress", progress, low=0, high=len(AGENTS)) if progress is not None else None
        )
        sent_agent = check.agent(current_agent) if current_agent is not None else None
        error = check.error_text(error_message) if error_message is not None else None
        step = StatusUpdate(
            self,
            sid,
            version=version,
            target=target,
            progress=sent_progress,
            current_agent=sent_agent,
            metadata=metadata,
            error=error,
            token=str(uuid.uuid4()),
        )
        return self._writer.apply(step)

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
        step = VerdictStep(self, sid, success=success, failed=failed, error=error, token=str(uuid.uuid4()))
        return self._writer.apply(step)

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

        def refused(old: Item | None) -> datetime:
            if old is None:
                raise SessionNotFoundError(f"no pipeline session {sid!r}")
            raise InvalidTransitionError(
                f"session {sid!r} is {old.get('status')}; only ACTIVE runs heartbeat", current=old
            )

        expr = heartbeat_expr(now, live_for, stalled_at)
        return self._writer.apply(
            RowWrite(
                sid,
                expr.action(self._table, {"session_id": sid}),
                refused=refused,
                applied=lambda _: now,
                stamp=(now, stalled_at),
            )
        )
