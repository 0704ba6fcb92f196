"""The fork's one transaction (`forks.ForkStore.fork`): the child's session, its copied agent items, the
fork point's PENDING item and the parent's `children` entry, and what a refusal of it means."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from tdev_state.exceptions import (
    ConflictError,
    ForkPointError,
    InvalidTransitionError,
    RefTakenError,
    RunActiveError,
    SessionExistsError,
)
from tdev_state.models import AGENT_STEP, AGENTS, AgentStatus, Session, SessionStatus, epoch
from tdev_state.payloads import describe_payload
from tdev_state.runs.agents import input_sealed
from tdev_state.runs.eventlog import AGENT_LOG
from tdev_state.runs.records import session_from_item
from tdev_state.runs.refs import REF_PREFIX, ref_puts
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
from tdev_state.usage import UsageEmitter, UsageEvent

if TYPE_CHECKING:
    from tdev_state.runs.forks import ForkStore

#: Children a run lists at most (each entry ~100 bytes of the parent's item, which every later write of
#: the parent pays for): past it, fork one of its forks.
MAX_CHILDREN = 500

#: Agent-item attributes a copy does not carry: the parent's event entries (their seqs are the parent's)
#: and fingerprint (sealed under the parent's id; a copy is final and never repeats a transition).
_NOT_COPIED = frozenset({AGENT_LOG, "fingerprint", "expires_at", "execution_id"})


#: An item's moments, epoch seconds: the earliest bounds the age of the S3 objects it names (a chunk may be
#: a day older). `payloads_since` is the fork's own: a payload copied as stored into the child's fork point
#: or session keeps naming objects written when its parent's item was, whatever the child stamps later.
PAYLOAD_MOMENTS = ("start_time", "end_time", "created_at", "payloads_since")


def earliest_moment(item: Item) -> Decimal | int | float | None:
    """The earliest of an item's `PAYLOAD_MOMENTS` (None: it has none)."""
    found = [item.get(name) for name in PAYLOAD_MOMENTS]
    return min((m for m in found if isinstance(m, int | float | Decimal)), default=None)


def _since(item: Item) -> Decimal | int | float:
    """`payloads_since` for a payload copied as stored from `item` (unknown: 0, so always looked at)."""
    since = earliest_moment(item)
    return since if since is not None else 0


def sealed(stored: Any) -> bool:
    """Is a stored payload attribute sealed (bound to the item it was written for)?"""
    return stored is not None and "sealed" in describe_payload(stored)


class ForkWrite(Transition[Session]):
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
        listed = expr.n("children")  # the parent item stays small: forks of forks past the cap
        expr.require(f"attribute_not_exists({listed}) OR size({listed}) < {expr.v(MAX_CHILDREN)}")
        expr.require(f"{expr.n('status')} <> {expr.v(SessionStatus.ACTIVE.value)}")
        lease = expr.n("lease_expires_at")
        expr.require(f"attribute_not_exists({lease}) OR {lease} < {expr.v(epoch(now))}")
        parent_update = expr.action(layer.tables.sessions, {"session_id": self._parent_id})
        refs = ref_puts(layer.tables.sessions, child, self._refs, created_at=epoch(now),
                        expires_at=self._session.get("expires_at"))  # fmt: skip
        self._actions = [session_put, parent_update, *actions, *refs]
        # Last, once everything the fork checks has passed: only a raced transaction can still refuse it.
        shared = [self._items[a] for a in AGENTS[:k] if a in self._items]
        self._store.keep_shared(parent, shared, now)

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
        if self._merge or sealed(stored):
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
            item["payloads_since"] = _since(stored_item)
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
        if sealed(metadata):
            metadata = self._store.reencode(
                metadata,
                field="metadata",
                origin=(self._parent_id, None),
                target=(child, None),
                merge={},
                seal=True,
            ).value
        elif metadata is not None:  # copied as stored: it names objects as old as the parent's item
            item["payloads_since"] = _since(parent)
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
            if parent is not None and len(parent.get("children") or ()) >= MAX_CHILDREN:
                raise InvalidTransitionError(
                    f"run {self._parent_id!r} has {MAX_CHILDREN} forks already, the most a run lists: fork "
                    "one of its forks instead; nothing was written",
                    current={"children": len(parent.get("children") or ())},
                )
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

    def usage(self, item: Item | None, usage: UsageEmitter) -> Iterable[UsageEvent]:
        """A fork is a run started, like any created run (its user active too)."""
        session, moment = self._session, self._now
        user = session.get("user_id")
        kind = str(session.get("pipeline_type", "SIMPLE"))
        events = [UsageEvent("run_started", moment, session_id=self.session_id, pipeline_type=kind,
                             user_id=user)]  # fmt: skip
        if user is not None:
            events.append(UsageEvent("user_active", moment, user_id=user))
        return events

    def applied(self, item: Item | None) -> Session:
        return session_from_item(self._session, self._store._layer, strict=False)
