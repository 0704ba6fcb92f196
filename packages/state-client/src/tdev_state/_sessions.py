"""Pipeline sessions: create, read, list, optimistic updates, heartbeats, and the recovery index."""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import structlog

from tdev_state import _codec
from tdev_state import _validate as check
from tdev_state._liveness import LivenessStamps
from tdev_state.dynamo import ConditionFailed, DynamoLayer, Item
from tdev_state.exceptions import (
    ConflictError,
    InvalidTransitionError,
    SessionExistsError,
    SessionNotFoundError,
    ValidationError,
)
from tdev_state.models import (
    AGENTS,
    OPEN_STATUSES,
    SESSION_TRANSITIONS,
    Page,
    PipelineType,
    RecoveryCandidate,
    Session,
    SessionStatus,
    format_ts,
    parse_ts,
    predecessors,
)
from tdev_state.schema import PIPELINE_SESSIONS, RECOVERY_INDEX_SHARDS

log = structlog.get_logger("tdev_state.sessions")

_UNSET: Any = object()


def recovery_shard(session_id: str, status: SessionStatus) -> str:
    """The sparse recovery index's partition value for an open session (absent once it is final)."""
    return f"{status.value}#{zlib.crc32(session_id.encode()) % RECOVERY_INDEX_SHARDS}"


def session_context(session_id: str) -> _codec.PayloadContext:
    """Where a session's metadata lives (the associated data of sealed metadata)."""
    return _codec.PayloadContext(PIPELINE_SESSIONS.logical_name, session_id)


def session_from_item(item: Item, layer: DynamoLayer) -> Session:
    """Build a Session from its stored item, decoding metadata."""
    return Session(
        session_id=item["session_id"],
        user_id=item["user_id"],
        project_name=item["project_name"],
        pipeline_type=PipelineType(item["pipeline_type"]),
        status=SessionStatus(item["status"]),
        current_agent=item.get("current_agent"),
        progress=int(item["progress"]),
        created_at=parse_ts(item["created_at"]),
        last_updated=parse_ts(item["last_updated"]),
        version=int(item["version"]),
        metadata=_codec.decode(
            item.get("metadata"), field="metadata", context=session_context(item["session_id"]), layer=layer
        ),
        error_message=item.get("error_message"),
        resume_count=int(item.get("resume_count", 0)),
    )


class SessionStore:
    """Sessions in `t-developer-{env}-pipeline-sessions`.

    Every write bumps `version`. Updates from callers are conditioned on the version they read
    (optimistic locking); agent transitions (in ExecutionStore) are conditioned on the state they change.
    """

    def __init__(self, layer: DynamoLayer, clock: Callable[[], datetime], liveness: LivenessStamps) -> None:
        self._layer = layer
        self._table = layer.tables.sessions
        self._clock = clock
        self._liveness = liveness

    def create(
        self,
        *,
        user_id: str,
        project_name: str,
        pipeline_type: PipelineType | str = PipelineType.SIMPLE,
        metadata: Any = None,
        session_id: str | None = None,
    ) -> Session:
        """Create an ACTIVE session at progress 0; never overwrites (SessionExistsError)."""
        sid = check.identifier("session_id", session_id) if session_id is not None else str(uuid.uuid4())
        user = check.identifier("user_id", user_id)
        name = check.text("project_name", project_name, allow_empty=False, max_chars=256)
        kind = check.enum(PipelineType, "pipeline_type", pipeline_type)
        encoded = _codec.encode(
            metadata, field="metadata", object_key=sid, context=session_context(sid), layer=self._layer
        )
        moment = self._clock()
        now = format_ts(moment)
        token = str(uuid.uuid4())
        item: dict[str, Any] = {
            "session_id": sid,
            "user_id": user,
            "project_name": name,
            "pipeline_type": kind.value,
            "status": SessionStatus.ACTIVE.value,
            "current_agent": AGENTS[0],
            "progress": 0,
            "created_at": now,
            "last_updated": now,
            "version": 1,
            "resume_count": 0,
            "metadata": encoded.value,
            "recovery_shard": recovery_shard(sid, SessionStatus.ACTIVE),
            "alive_at": now,
            "last_request": token,
        }
        try:
            self._layer.put(self._table, item, condition="attribute_not_exists(session_id)")
        except ConditionFailed as exc:
            if not (exc.old_item and exc.old_item.get("last_request") == token):
                raise SessionExistsError(
                    f"session {sid!r} already exists; pick another session_id or update it instead"
                ) from None
        self._liveness.mark(sid, moment)
        log.info("session.created", session_id=sid, user_id=user, pipeline_type=kind.value)
        return session_from_item(item, self._layer)

    def get(self, session_id: str, *, consistent: bool = True) -> Session:
        """The session, or SessionNotFoundError."""
        sid = check.identifier("session_id", session_id)
        item = self._layer.get(self._table, {"session_id": sid}, consistent=consistent)
        if item is None:
            raise SessionNotFoundError(f"no pipeline session {sid!r} in env {self._layer.config.env!r}")
        return session_from_item(item, self._layer)

    def list_for_user(self, user_id: str, *, limit: int = 20, cursor: str | None = None) -> Page[Session]:
        """A user's sessions, newest first: the by-user index (keys only), then one BatchGetItem."""
        user = check.identifier("user_id", user_id)
        size = check.limit(limit)
        start = check.decode_cursor(cursor, expected_keys=("session_id", "user_id", "created_at"))
        page = self._layer.query(
            self._table,
            index="by-user",
            key_condition="user_id = :u",
            values={":u": user},
            forward=False,
            limit=size,
            start_key=start,
        )
        keys = [{"session_id": i["session_id"]} for i in page.items]
        items = self._layer.batch_get(self._table, keys) if keys else []
        return Page(
            items=[session_from_item(i, self._layer) for i in items],
            next_cursor=check.encode_cursor(page.last_key),
        )

    def update(
        self,
        session_id: str,
        *,
        expected_version: int,
        status: SessionStatus | str | None = None,
        current_agent: str | None = None,
        progress: int | None = None,
        metadata: Any = _UNSET,
        error_message: str | None = None,
    ) -> Session:
        """Change status/current_agent/progress/metadata if the session is still at `expected_version`.

        Raises ConflictError when another writer got there first, InvalidTransitionError when the status
        change is illegal or progress would go backwards.
        """
        sid = check.identifier("session_id", session_id)
        version = check.whole("expected_version", expected_version, low=1)
        sets = ["version = version + :one", "last_updated = :now", "last_request = :token"]
        removes: list[str] = []
        conditions = ["version = :v"]
        names: dict[str, str] = {}
        token = str(uuid.uuid4())
        moment = self._clock()
        values: dict[str, Any] = {
            ":one": 1,
            ":v": version,
            ":now": format_ts(moment),
            ":token": token,
        }
        target: SessionStatus | None = None
        if status is not None:
            target = check.enum(SessionStatus, "status", status)
            names["#s"] = "status"
            sets.append("#s = :status")
            values[":status"] = target.value
            allowed = predecessors(target)
            if not allowed:
                raise InvalidTransitionError(f"no session may move to {target.value}")
            conditions.append("#s IN (" + ", ".join(f":from{i}" for i in range(len(allowed))) + ")")
            values.update({f":from{i}": s.value for i, s in enumerate(allowed)})
            if target in OPEN_STATUSES:
                sets.append("recovery_shard = :shard")
                values[":shard"] = recovery_shard(sid, target)
            else:
                removes.append("recovery_shard")
                self._set_expiry(sets, values)
            if target is SessionStatus.COMPLETED and progress is None:
                conditions.append("progress = :all")
                values[":all"] = len(AGENTS)
        if progress is not None:
            step = check.whole("progress", progress, low=0, high=len(AGENTS))
            if target is SessionStatus.COMPLETED and step != len(AGENTS):
                raise InvalidTransitionError(
                    f"a session completes only after all {len(AGENTS)} agents; progress {step}"
                )
            sets.append("progress = :p")
            conditions.append("progress <= :p")
            values[":p"] = step
        if current_agent is not None:
            sets.append("current_agent = :agent")
            values[":agent"] = check.agent(current_agent)
        if metadata is not _UNSET:
            sets.append("metadata = :meta")
            values[":meta"] = _codec.encode(
                metadata, field="metadata", object_key=sid, context=session_context(sid), layer=self._layer
            ).value
        if error_message is not None:
            sets.append("error_message = :err")
            values[":err"] = check.error_text(error_message)
        elif target is SessionStatus.ACTIVE:
            removes.append("error_message")
        refresh = target is not None or self._liveness.due(sid, moment)
        if refresh:
            sets.append("alive_at = :now")
        expression = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        try:
            item = self._layer.update(
                self._table,
                {"session_id": sid},
                update=expression,
                condition=" AND ".join(conditions),
                names=names or None,
                values=values,
                return_values="ALL_NEW",
            )
        except ConditionFailed as exc:
            old = exc.old_item
            if old is not None and old.get("last_request") == token:
                return self.get(sid)  # our own earlier attempt was applied (retried after a timeout)
            raise self._refusal(sid, version, target, progress, old) from None
        assert item is not None
        if refresh:
            self._liveness.mark(sid, moment)
        log.info(
            "session.updated",
            session_id=sid,
            status=item["status"],
            progress=int(item["progress"]),
            version=int(item["version"]),
        )
        return session_from_item(item, self._layer)

    def heartbeat(self, session_id: str) -> datetime:
        """Refresh `last_updated` of an ACTIVE run so recovery tells a slow agent from a dead pipeline.

        Heartbeats deliberately do not bump `version`: they change no state anyone reads-to-write, and
        bumping it would make the pipeline's own next update fail with a spurious conflict.
        """
        sid = check.identifier("session_id", session_id)
        now = self._clock()
        try:
            self._layer.update(
                self._table,
                {"session_id": sid},
                update="SET last_updated = :now, alive_at = :now",
                condition="#s = :active",
                names={"#s": "status"},
                values={":now": format_ts(now), ":active": SessionStatus.ACTIVE.value},
            )
        except ConditionFailed as exc:
            if exc.old_item is None:
                raise SessionNotFoundError(f"no pipeline session {sid!r}") from None
            raise InvalidTransitionError(
                f"session {sid!r} is {exc.old_item.get('status')}; only ACTIVE runs heartbeat",
                current=exc.old_item,
            ) from None
        self._liveness.mark(sid, now)
        return now

    def recovery_candidates(
        self,
        *,
        failed_idle: timedelta | None,
        stalled_idle: timedelta | None,
        limit: int = 100,
        now: datetime | None = None,
    ) -> list[RecoveryCandidate]:
        """FAILED runs idle longer than `failed_idle` and ACTIVE runs whose heartbeat is older than
        `stalled_idle`, oldest first — from the sparse recovery index, never a Scan. Pass None to skip
        one kind. Hits are confirmed on the base table; claim them with a conditional write all the same,
        since another worker may act between this read and yours.
        """
        size = check.limit(limit)
        moment = now or self._clock()
        cutoffs: dict[SessionStatus, str] = {}
        keys: list[dict[str, Any]] = []
        for status, idle in ((SessionStatus.FAILED, failed_idle), (SessionStatus.ACTIVE, stalled_idle)):
            if idle is None:
                continue
            if not isinstance(idle, timedelta) or idle < timedelta(0):
                raise ValidationError(f"idle thresholds must be non-negative timedeltas, got {idle!r}")
            cutoffs[status] = format_ts(moment - idle)
            for shard in range(RECOVERY_INDEX_SHARDS):
                page = self._layer.query(
                    self._table,
                    index="by-recovery",
                    key_condition="recovery_shard = :shard AND alive_at < :cutoff",
                    values={":shard": f"{status.value}#{shard}", ":cutoff": cutoffs[status]},
                    limit=size,
                )
                keys += [{"session_id": i["session_id"]} for i in page.items]
        # The index is eventually consistent and alive_at may lag last_updated by up to the liveness
        # interval: confirm each hit on the base table, with one strongly consistent BatchGetItem.
        found = []
        for item in self._layer.batch_get(self._table, keys) if keys else []:
            status = SessionStatus(item["status"])
            if status in cutoffs and item["last_updated"] < cutoffs[status]:
                found.append(
                    RecoveryCandidate(
                        session_id=item["session_id"],
                        status=status,
                        last_updated=parse_ts(item["last_updated"]),
                        progress=int(item["progress"]),
                        current_agent=item.get("current_agent"),
                        version=int(item["version"]),
                        lease_expires_at=(
                            parse_ts(item["lease_expires_at"]) if item.get("lease_expires_at") else None
                        ),
                        fencing_token=int(item.get("fencing_token", 0)),
                    )
                )
        found.sort(key=lambda c: c.last_updated)
        return found[:size]

    def failed_sessions(
        self, *, older_than: timedelta = timedelta(hours=1), limit: int = 100
    ) -> list[Session]:
        """FAILED sessions idle for longer than `older_than` (the plan's phase-2 rule: one hour)."""
        candidates = self.recovery_candidates(failed_idle=older_than, stalled_idle=None, limit=limit)
        keys = [{"session_id": c.session_id} for c in candidates if c.status is SessionStatus.FAILED]
        items = self._layer.batch_get(self._table, keys) if keys else []
        # The index lags the table: keep only what the table itself still says is FAILED.
        return [
            session_from_item(i, self._layer) for i in items if i.get("status") == SessionStatus.FAILED.value
        ]

    # --- helpers --------------------------------------------------------------------------------------

    def _set_expiry(self, sets: list[str], values: dict[str, Any]) -> None:
        days = self._layer.config.retention_days
        if days:
            sets.append("expires_at = :exp")
            values[":exp"] = int((self._clock() + timedelta(days=days)).timestamp())

    def _refusal(
        self,
        sid: str,
        version: int,
        target: SessionStatus | None,
        progress: int | None,
        old: Item | None,
    ) -> Exception:
        if old is None:
            return SessionNotFoundError(f"no pipeline session {sid!r}; create it first")
        current = SessionStatus(old["status"])
        if int(old["version"]) != version:
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
        return InvalidTransitionError(
            f"session {sid!r} has progress {old['progress']}; progress never goes backwards "
            f"(asked for {progress}) and COMPLETED needs all {len(AGENTS)} agents",
            current=old,
        )
