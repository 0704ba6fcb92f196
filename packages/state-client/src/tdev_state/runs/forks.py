"""Forks: a new run whose agents before the fork point are its parent's finished results (issue #27).

`fork` reads the parent (one GetItem, one Query) and writes ONE TransactWriteItems of at most k + 2 items
for a fork at agent k:

- the child's session item: ACTIVE at progress k - 1, its current agent the fork point, declared silent for
  0 seconds — so it is due for the recovery worker's sweep at once and started through the same resume path
  as any stalled run (claim, fencing token, `build_request`, the pipeline's `accept_resume`). It records
  `parent_id`, `fork_point`, `replay` and `fork_overrides`, and copies the parent's user, project, pipeline
  type and metadata (the A/B arm with it); its own `created_at` and expiry;
- one Put per agent before the fork point: the parent's item as stored, under the child's id. Payload
  attributes are not decoded and no S3 byte is written: inline values are copied, offloaded and chunked ones
  still name the parent's objects, and sealed ones stay bound to the run that sealed them (`payload_origin`,
  read by `records.execution_from_item`). The parent's event entries and fingerprint are not copied (the
  child's event log starts at its creation);
- the fork point's item, PENDING with the input the pipeline resumes with: the parent's stored input, or,
  with overrides, that input decoded and merged with them (top level). That is the `next_input` the worker
  hands the pipeline; the pipeline's first start moves it to RUNNING (`rules`: PENDING may be stored);
- an Update of the parent appending the child to `children`, conditioned on the parent's version as read,
  its status not ACTIVE and no live lease: a resume of the parent racing the fork refuses the whole
  transaction (`RunActiveError`, a ConflictError), and nothing is written.

Expiry (docs/data-model.md, "Fork and lineage"): the copied items expire with the child. S3 objects the
copies name stay the parent's: a child never deletes an object it did not create (a refused call takes
back only the objects named with its own write id), and `refresh_shared` restarts the age of a shared
object whose lifecycle would end it before the child's items.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from tdev_state import validate as check
from tdev_state.exceptions import (
    ConflictError,
    ForkPointError,
    RefTakenError,
    RunActiveError,
    SessionExistsError,
    SessionNotFoundError,
    ValidationError,
)
from tdev_state.lineage import Lineage
from tdev_state.log import get_logger
from tdev_state.models import AGENT_STEP, AGENTS, AgentStatus, Session, SessionStatus, epoch
from tdev_state.payloads import EncodedPayload, describe_payload, with_references
from tdev_state.runs.agents import input_sealed
from tdev_state.runs.eventlog import AGENT_LOG
from tdev_state.runs.records import execution_context, session_context, session_from_item, session_reader
from tdev_state.runs.refs import REF_PREFIX, checked_refs, is_ref_item, ref_puts, resolve
from tdev_state.runs.rules import AGENT_RETENTION_GRACE, agent_sort_key, recovery_shard, run_expiry
from tdev_state.runs.writer import (
    CONDITION_FAILED,
    Again,
    Duplicate,
    Landed,
    Transition,
    TransitionWriter,
    Write,
    refusal_of,
)
from tdev_state.storage import CancellationReason, Expr, Item, TransactAction

log = get_logger(__name__)

#: The largest overrides accepted, as JSON text (they are stored on the child's session item).
MAX_OVERRIDES_BYTES = 16 * 1024
#: Agent-item attributes a copy does not carry: the parent's event entries (their seqs are the parent's)
#: and fingerprint (sealed under the parent's id; a copy is final and never repeats a transition).
_NOT_COPIED = frozenset({AGENT_LOG, "fingerprint", "expires_at", "execution_id"})


def checked_overrides(overrides: Mapping[str, Any] | None) -> tuple[dict[str, Any], str | None]:
    """The overrides as a dict and as canonical JSON text (None when there are none: a replay).

    ValidationError unless they are a JSON object: a mapping of non-empty string keys to JSON values."""
    if overrides is None:
        return {}, None
    if not isinstance(overrides, Mapping):
        raise ValidationError(
            f"overrides must be a JSON object (a mapping of input keys to JSON values), got "
            f"{type(overrides).__name__}; e.g. {{'framework': 'vue'}}"
        )
    for key in overrides:
        if not isinstance(key, str) or not key or key.startswith("\x00"):
            raise ValidationError(f"override keys must be non-empty strings, got {key!r:.60}")
    try:
        text = json.dumps(dict(overrides), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"overrides must hold JSON values only: {exc}"[:300]) from None
    if len(text.encode("utf-8")) > MAX_OVERRIDES_BYTES:
        raise ValidationError(
            f"overrides are {len(text.encode('utf-8')):,} bytes of JSON, over the {MAX_OVERRIDES_BYTES:,} "
            "a fork may carry; put large values in the run's input instead"
        )
    return (dict(overrides), text) if overrides else ({}, None)


def _sealed(stored: Any) -> bool:
    return stored is not None and "sealed" in describe_payload(stored)


class ForkStore:
    """Forks and lineage of runs; the sessions store's `fork` and `lineage` call it."""

    def __init__(self, writer: TransitionWriter, clock: Callable[[], datetime]) -> None:
        self._writer = writer
        self._layer = writer.layer
        self._clock = clock

    def fork(
        self,
        id_or_ref: str,
        *,
        from_agent: str,
        overrides: Mapping[str, Any] | None = None,
        refs: Sequence[str] = (),
    ) -> Session:
        """Create the child run of `id_or_ref` from `from_agent` (see the module's docstring)."""
        point = check.agent(from_agent)
        merge, text = checked_overrides(overrides)
        wanted = checked_refs(refs)
        key = check.identifier("id_or_ref", id_or_ref, existing=True)
        parent_id = resolve(self._layer, key)
        parent = self._layer.get(self._layer.tables.sessions, {"session_id": parent_id})
        if parent is None or is_ref_item(parent):
            raise SessionNotFoundError(f"no pipeline run {key!r} in env {self._layer.config.env!r}")
        now = self._clock()
        self._require_stopped(parent_id, parent, now)
        items = {
            str(item.get("agent")): item
            for item in self._layer.query_all(
                self._layer.tables.executions,
                key_condition="execution_id = :id",
                values={":id": parent_id},
                consistent=True,
            )
        }
        tolerated = set(session_reader(parent).texts("failed_agents"))
        _require_reached(parent_id, point, items, tolerated)
        child = str(uuid.uuid4())
        step = _ForkWrite(self, parent_id, parent, child, point, items, tolerated, merge, text, wanted, now)
        session = self._writer.apply(step)
        log.info(
            "session.forked",
            session_id=child,
            parent_id=parent_id,
            fork_point=point,
            replay=text is None,
            items=len(step.write().actions),
        )
        return session

    def lineage(self, id_or_ref: str) -> Lineage:
        """The run's parent, fork point and children (one read of the run; a ref costs one more)."""
        key = check.identifier("id_or_ref", id_or_ref, existing=True)
        run_id = resolve(self._layer, key)
        item = self._layer.get(self._layer.tables.sessions, {"session_id": run_id})
        if item is None or is_ref_item(item):
            raise SessionNotFoundError(f"no pipeline run {key!r} in env {self._layer.config.env!r}")
        session = session_from_item(item, self._layer, strict=False, metadata=None)
        return Lineage(
            run_id=run_id,
            parent_id=session.parent_id,
            fork_point=session.fork_point,
            replay=session.replay,
            children=session.children,
        )

    def _require_stopped(self, parent_id: str, parent: Item, now: datetime) -> None:
        read = session_reader(parent)
        status = read.enum(SessionStatus, "status")
        if status is SessionStatus.ACTIVE:
            raise RunActiveError(
                f"run {parent_id!r} is ACTIVE: fork it once it has stopped (COMPLETED, FAILED or ABANDONED); "
                "nothing was written"
            )
        lease = read.moment("lease_expires_at", None)
        if lease is not None and lease > now:
            raise RunActiveError(
                f"run {parent_id!r} is held by worker {read.text('lease_owner', '?')} until "
                f"{lease:%H:%M:%S} (a resume under way): fork it once that ends; nothing was written"
            )

    # --- the pieces of the fork's transaction ---------------------------------------------------------

    def reencode(
        self,
        stored: Any,
        *,
        field: str,
        origin: tuple[str, str | None],
        target: tuple[str, str | None],
        merge: Mapping[str, Any],
        seal: bool,
    ) -> EncodedPayload:
        """A stored payload decoded under its `origin` (run, agent), merged with `merge` at the top level
        when given, and encoded for `target` — for what cannot be copied as stored (a sealed value is bound
        to its run; overrides make a new value)."""
        payloads = self._layer.payloads
        source = _context(*origin)
        value = payloads.decode(stored, field=field, context=source)
        if merge:
            if not isinstance(value, dict):
                raise ValidationError(
                    f"the stored {field} of {origin[1]} is a {type(value).__name__}, not a JSON object: "
                    "overrides merge into an object's top-level keys, so this agent cannot take them"
                )
            value = {**value, **merge}
        raw = with_references(value, field=field, encoders=self._layer.config.encoders)
        return self._writer.encode_json(
            raw,
            field=field,
            object_key=f"{target[0]}/{target[1]}" if target[1] else target[0],
            context=_context(*target),
            warnings=(),
            seal=seal,
        )


def _context(run: str, agent: str | None) -> Any:
    return execution_context(run, agent) if agent is not None else session_context(run)


def _require_reached(parent_id: str, point: str, items: Mapping[str, Item], tolerated: set[str]) -> None:
    """ForkPointError unless every agent before `point` is stored as finished: COMPLETED, or FAILED and
    tolerated (the same rule as the worker's before a resume)."""
    problems = []
    for agent in AGENTS[: AGENT_STEP[point] - 1]:
        item = items.get(agent)
        status = str(item.get("status")) if item is not None else None
        if status is None:
            problems.append(f"{agent} is missing (not run, expired or deleted)")
        elif status == AgentStatus.FAILED.value and agent not in tolerated:
            problems.append(f"{agent} FAILED and the run did not move past it")
        elif status not in (AgentStatus.COMPLETED.value, AgentStatus.FAILED.value):
            problems.append(f"{agent} is {status}, not finished")
    if problems:
        raise ForkPointError(
            f"run {parent_id!r} has not reached {point}: "
            + "; ".join(problems)[:600]
            + "; fork it from an agent every earlier agent of which finished. Nothing was written"
        )


class _ForkWrite(Transition[Session]):
    """The fork's one transaction (see the module's docstring)."""

    def __init__(  # noqa: PLR0917 - private; the validated pieces of one fork
        self,
        store: ForkStore,
        parent_id: str,
        parent: Item,
        child: str,
        point: str,
        items: Mapping[str, Item],
        tolerated: set[str],
        merge: dict[str, Any],
        overrides_text: str | None,
        refs: tuple[str, ...],
        now: datetime,
    ) -> None:
        self.session_id = child
        self._store = store
        self._parent_id = parent_id
        self._parent = parent
        self._point = point
        self._items = items
        self._tolerated = tolerated
        self._merge = merge
        self._text = overrides_text
        self._refs = refs
        self._now = now
        self._actions: list[TransactAction] = []
        self._session: Item = {}

    def prepare(self, writer: TransitionWriter) -> None:
        layer = writer.layer
        config = layer.config
        child, point, now, parent = self.session_id, self._point, self._now, self._parent
        k = AGENT_STEP[point]
        agent_expiry = run_expiry(now + AGENT_RETENTION_GRACE, config.retention_days)
        origin = str(parent.get("session_id"))
        before = AGENTS[: k - 1]
        actions: list[TransactAction] = []
        for agent in before:
            copy = {name: value for name, value in self._items[agent].items() if name not in _NOT_COPIED}
            copy["execution_id"] = child
            copy["payload_origin"] = self._items[agent].get("payload_origin") or origin
            if agent_expiry is not None:
                copy["expires_at"] = agent_expiry
            actions.append(TransactAction("Put", layer.tables.executions, item=copy))
        pending = self._pending_item(agent_expiry)
        if pending is not None:
            actions.append(TransactAction("Put", layer.tables.executions, item=pending,
                                          condition="attribute_not_exists(execution_id)"))  # fmt: skip
        self._session = self._session_item(k, before)
        session_put = TransactAction(
            "Put", layer.tables.sessions, item=self._session, condition="attribute_not_exists(session_id)"
        )
        expr = Expr()
        expr.append("children", [{"run_id": child, "fork_point": point, "created_at": epoch(now)}])
        expr.require_equal("version", parent.get("version"))
        expr.require(f"{expr.n('status')} <> {expr.v(SessionStatus.ACTIVE.value)}")
        lease = expr.n("lease_expires_at")
        expr.require(f"attribute_not_exists({lease}) OR {lease} < {expr.v(epoch(now))}")
        parent_update = expr.action(layer.tables.sessions, {"session_id": self._parent_id})
        refs = ref_puts(layer.tables.sessions, child, self._refs, created_at=epoch(now),
                        expires_at=self._session.get("expires_at"))  # fmt: skip
        self._actions = [session_put, parent_update, *actions, *refs]

    def _pending_item(self, expiry: int | None) -> Item | None:
        """The fork point's item: the input the pipeline resumes with (None: the parent never stored one,
        and there are no overrides to merge — the resume then starts from the run's request)."""
        point, child = self._point, self.session_id
        stored_item = self._items.get(point)
        stored = stored_item.get("input_data") if stored_item is not None else None
        if stored is None:
            if self._merge:
                raise ForkPointError(
                    f"run {self._parent_id!r} never stored an input for {point}: there is nothing to merge "
                    "the overrides into; fork without overrides (the fork then starts from the run's "
                    "request), or from an agent the run started. Nothing was written"
                )
            return None
        assert stored_item is not None
        origin = (str(stored_item.get("payload_origin") or self._parent_id), point)
        item: Item = {
            "execution_id": child,
            "agent_name": agent_sort_key(point),
            "agent": point,
            "step": AGENT_STEP[point],
            "status": AgentStatus.PENDING.value,
            "retry_count": 0,
        }
        if self._merge or _sealed(stored):
            encoded = self._store.reencode(
                stored,
                field="input_data",
                origin=origin,
                target=(child, point),
                merge=self._merge,
                seal=input_sealed(self._store._layer.config, point),
            )
            item["input_data"], item["input_bytes"] = encoded.value, encoded.json_bytes
        else:  # copied as stored: no decode, no S3 write (an unsealed payload is bound to no run)
            item["input_data"] = stored
            item["input_bytes"] = stored_item.get("input_bytes", 0)
        if expiry is not None:
            item["expires_at"] = expiry
        return item

    def _session_item(self, k: int, before: Sequence[str]) -> Item:
        parent, child, now = self._parent, self.session_id, self._now
        config = self._store._layer.config
        status = SessionStatus.ACTIVE
        item: Item = {
            "session_id": child,
            "pipeline_type": parent.get("pipeline_type", "SIMPLE"),
            "status": status.value,
            "current_agent": self._point,
            "progress": k - 1,
            "created_at": epoch(now),
            "created_day": now.astimezone(UTC).date().isoformat(),
            "last_updated": epoch(now),
            "version": 1,
            "resume_count": 0,
            "recovery_shard": recovery_shard(child, status),
            # Due at once: the recovery worker's sweep (or resume_now) starts it through the resume path.
            "live_for": 0,
            "stalled_at": epoch(now),
            "last_request": str(uuid.uuid4()),
            "parent_id": self._parent_id,
            "fork_point": self._point,
            "replay": self._text is None,
        }
        for name in ("user_id", "project_name"):
            if parent.get(name) is not None:
                item[name] = parent[name]
        metadata = parent.get("metadata")
        if _sealed(metadata):
            metadata = self._store.reencode(
                metadata,
                field="metadata",
                origin=(self._parent_id, None),
                target=(child, None),
                merge={},
                seal=True,
            ).value
        item["metadata"] = metadata
        failed = {a for a in before if a in self._tolerated}
        if failed:
            item["failed_agents"] = failed
        if self._text is not None:
            item["fork_overrides"] = self._text
        if self._refs:
            item["refs"] = list(self._refs)
        expiry = run_expiry(now, config.retention_days)
        if expiry is not None:
            item["expires_at"] = expiry
        return item

    def write(self) -> Write:
        return Write(self._actions)

    def refused(self, reasons: list[CancellationReason]) -> Session | Again | Landed | Duplicate[Session]:
        parent = refusal_of(reasons, 1)
        if reasons and reasons[0].code == CONDITION_FAILED:
            raise SessionExistsError(f"a run {self.session_id!r} exists already; fork again")
        if len(reasons) > 1 and reasons[1].code == CONDITION_FAILED:
            if parent is not None and parent.get("status") == SessionStatus.ACTIVE.value:
                raise RunActiveError(
                    f"run {self._parent_id!r} became ACTIVE while it was forked (resumed): nothing was "
                    "written; fork it once it has stopped"
                )
            raise ConflictError(
                f"run {self._parent_id!r} changed while it was forked (resumed, claimed or updated): "
                "nothing was written; fork it again"
            )
        for action, reason in zip(self._actions[2:], reasons[2:], strict=False):
            if reason.code != CONDITION_FAILED:
                continue
            if action.table == self._store._layer.tables.sessions:  # a ref's Put
                ref = str((action.item or {}).get("session_id", ""))[len(REF_PREFIX) :]
                owner = reason.old_item.get("run_id") if reason.old_item else None
                raise RefTakenError(
                    f"ref {ref!r} already belongs to run {owner!r} (refs are unique per env); nothing was "
                    "written: fork without that ref, or with another",
                    ref=ref,
                    run_id=str(owner) if owner is not None else None,
                )
            raise ConflictError(f"the fork point's item of {self.session_id!r} exists already; fork again")
        raise ConflictError(
            f"the fork of {self._parent_id!r} was refused ({', '.join(r.code for r in reasons)[:200]}); "
            "nothing was written: fork it again"
        )

    def applied(self, item: Item | None) -> Session:
        return session_from_item(self._session, self._store._layer, strict=False)
