"""The one writer of the run lifecycle: it applies a transition — one row of `rules` — to the stored run.

Every write of a session or agent item goes through `TransitionWriter.apply`, in the same steps:

1. **payload scope**: the call's payload objects are kept when its write is acknowledged and taken back when
   it is refused (`PayloadStore.scope`; a run's own items are the reference check);
2. **expression**: the transition renders its current variant as one write (`Write`): one Update or Put
   alone, or a TransactWriteItems of several actions;
3. **transaction**: sent with a fresh ClientRequestToken, so botocore's own retries are no-ops;
4. **refusal**: a false condition comes back as one `CancellationReason` per action, which the transition
   classifies from its rule — another variant to try (`AGAIN`), a duplicate of an earlier identical call
   (`Duplicate`: its payload objects are unused), a result, or the typed error that explains it;
5. **liveness**: the run's index key written is remembered (`LivenessStamps`);
6. **usage**: the transition's usage events, when the usage bus is on.

The stores (sessions, agents, claims) only validate their arguments, build a transition and call `apply`.
The calls into the payload layer (`PayloadStore.scope`, `current_write`, encoding) live here, in one place.
"""

from __future__ import annotations

import threading
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from tdev_state.exceptions import MalformedItemError
from tdev_state.layer import DynamoLayer
from tdev_state.log import get_logger
from tdev_state.models import SessionStatus, epoch_float
from tdev_state.payloads import EncodedPayload, PayloadContext, current_write
from tdev_state.runs.policy import LivenessStamps
from tdev_state.runs.records import session_reader
from tdev_state.storage import (
    CancellationReason,
    ConditionFailed,
    Item,
    TransactAction,
    TransactionCancelled,
)
from tdev_state.usage import UsageEmitter, UsageEvent, UsageKind

R = TypeVar("R")

log = get_logger(__name__)

#: The code of an action whose condition was false (a single write's refusal is given this code too).
CONDITION_FAILED = "ConditionalCheckFailed"


@dataclass(frozen=True)
class Write:
    """One variant of a transition, rendered: what is sent to the store.

    One action alone is an UpdateItem (returning the new item when `returns`) or a PutItem; several are one
    TransactWriteItems, after which `read_back` (table, key) is read consistently when the caller needs it.
    """

    actions: Sequence[TransactAction]
    returns: bool = False
    read_back: tuple[str, dict[str, Any]] | None = None


class Again:
    """What `Transition.refused` returns when the refusal showed which other variant holds: write again."""


AGAIN = Again()


class Landed:
    """What `Transition.refused` returns when the refusal shows this very call's write landed already (a
    retry after a timeout whose first attempt was applied): go on as if it had just been applied."""


LANDED = Landed()


@dataclass(frozen=True)
class Duplicate(Generic[R]):
    """An earlier identical call applied this transition already: `value` is its result, and nothing this
    call stored is referred to (its payload objects are taken back)."""

    value: R


class Transition(ABC, Generic[R]):
    """One application of a lifecycle rule to one run. Subclasses say what to write and what a refusal
    means; `TransitionWriter.apply` does the rest, in the same order for every transition."""

    #: The run the transition writes (the payload scope's reference check reads its items).
    session_id: str
    #: Runs in a payload scope (it stores payloads); claims store none.
    stores_payloads: bool = True
    #: The session version this transition makes, when it knows it (an agent step conditions its session
    #: half on the version before it): the writer remembers it for the run's next transition.
    makes_version: int | None = None

    def prepare(self, writer: TransitionWriter) -> None:
        """Inside the payload scope, before the first write: encode the payloads."""

    @abstractmethod
    def write(self) -> Write:
        """The current variant, rendered."""

    @abstractmethod
    def refused(self, reasons: list[CancellationReason]) -> R | Again | Landed | Duplicate[R]:
        """Classify a refusal (one reason per action) from the rule; raise the typed error explaining it."""

    @abstractmethod
    def applied(self, item: Item | None) -> R:
        """The result of the applied write (`item`: the new item, when the write returns or reads one)."""

    def stamp(self) -> tuple[datetime, datetime] | None:
        """(moment, stalled_at) to remember as this process's last index-key write, when it wrote one."""
        return None

    def usage(self, item: Item | None, usage: UsageEmitter) -> Iterable[UsageEvent]:
        """The usage events of the applied write (only asked when the usage bus is on)."""
        return ()


class RowWrite(Transition[R]):
    """A transition that is one conditional write of the session item, rendered by its row's expression
    (`rules.session_expr`): a claim, a lease heartbeat, a pipeline heartbeat, the orchestrator's verdict.
    `refused(old_item)` classifies a refusal (None: the item is absent); `applied(item)` makes the result."""

    def __init__(
        self,
        session_id: str,
        action: TransactAction,
        *,
        refused: Callable[[Item | None], R | Again | Landed | Duplicate[R]],
        applied: Callable[[Item | None], R],
        returns: bool = False,
        stamp: tuple[datetime, datetime] | None = None,
        usage: Callable[[Item | None], Iterable[UsageEvent]] | None = None,
    ) -> None:
        self.session_id = session_id
        self.stores_payloads = False
        self._action = action
        self._refused = refused
        self._applied = applied
        self._returns = returns
        self._stamp = stamp
        self._usage = usage

    def write(self) -> Write:
        return Write([self._action], returns=self._returns)

    def refused(self, reasons: list[CancellationReason]) -> R | Again | Landed | Duplicate[R]:
        return self._refused(reasons[0].old_item)

    def applied(self, item: Item | None) -> R:
        return self._applied(item)

    def stamp(self) -> tuple[datetime, datetime] | None:
        return self._stamp

    def usage(self, item: Item | None, usage: UsageEmitter) -> Iterable[UsageEvent]:
        return self._usage(item) if self._usage is not None else ()


class KnownVersions:
    """The last session `version` this process wrote or read for each run it writes (bounded, thread-safe).

    An agent transition stamps its event entry with the version it makes (`runs.eventlog`), so it must know
    the version before it writes: it conditions the session half on this one, which is right on the common
    path (the process that drives a run makes its versioned writes in order). A wrong one is refused, and the
    refusal's old item gives the right one: written again, never a read first.
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session_id: str) -> int | None:
        with self._lock:
            return self._seen.get(session_id)

    def remember(self, session_id: str, version: int) -> None:
        with self._lock:
            self._seen[session_id] = version
            self._seen.move_to_end(session_id)
            while len(self._seen) > self._size:
                self._seen.popitem(last=False)

    def forget(self, session_id: str) -> None:
        with self._lock:
            self._seen.pop(session_id, None)


class TransitionWriter:
    """Applies transitions to one layer's tables; shared by the sessions, agents and claims stores."""

    def __init__(self, layer: DynamoLayer, liveness: LivenessStamps) -> None:
        self.layer = layer
        self.liveness = liveness
        self.versions = KnownVersions()
        #: Told the run id after each transition applied (the event hub of this process wakes its poller).
        self.listeners: list[Callable[[str], None]] = []

    def known_version(self, session_id: str) -> int:
        """The run's session version as this process last saw it; read once (consistent) when it has not seen
        it (0 when the run does not exist: the write is then refused as the rule explains)."""
        known = self.versions.get(session_id)
        if known is None:
            item = self.layer.get(self.layer.tables.sessions, {"session_id": session_id})
            known = int(item.get("version", 0)) if item is not None else 0
            self.versions.remember(session_id, known)
        return known

    def apply(self, transition: Transition[R]) -> R:
        """Scope, write, classify a refusal, remember liveness, emit usage: see the module's docstring."""
        with self.scope(transition.session_id, transition.stores_payloads):
            transition.prepare(self)
            while True:
                write = transition.write()
                try:
                    item = self._send(write)
                except ConditionFailed as exc:
                    reasons = [CancellationReason(CONDITION_FAILED, exc.old_item)]
                except TransactionCancelled as exc:
                    reasons = exc.reasons
                else:
                    break
                # Classified outside the except block: the typed error raised stands alone.
                outcome = transition.refused(reasons)
                if isinstance(outcome, Again):
                    continue
                if isinstance(outcome, Landed):
                    item = None
                    break
                if isinstance(outcome, Duplicate):
                    self.versions.forget(transition.session_id)
                    unused = current_write()
                    if unused is not None:  # the earlier call's item stands; nothing refers to these objects
                        unused.mark_unused()
                    return outcome.value
                return outcome
            self._remember_version(transition, write, item)
            self._tell(transition.session_id)
            stamp = transition.stamp()
            if stamp is not None:
                self.liveness.mark(transition.session_id, *stamp)
            usage = self.layer.usage
            if usage.on:
                for event in transition.usage(item, usage):
                    usage.emit(event)
            return transition.applied(item)

    def _tell(self, session_id: str) -> None:
        """Tell each listener that `session_id` moved; one that fails is logged, never fails the write."""
        for listener in list(self.listeners):
            try:
                listener(session_id)
            except Exception as exc:  # a listener is someone else's code: the transition stands
                log.warning("writer.listener_failed", session_id=session_id, error=repr(exc)[:300])

    def _remember_version(self, transition: Transition[Any], write: Write, item: Item | None) -> None:
        """Keep the run's version known after an applied write: the one the transition made, or the one the
        returned session item shows; forget it when a write bumped it unseen (a claim's fenced write)."""
        sid = transition.session_id
        if transition.makes_version is not None:
            self.versions.remember(sid, transition.makes_version)
        elif item is not None and item.get("session_id") == sid and "version" in item:
            self.versions.remember(sid, int(item["version"]))
        elif any(
            action.table == self.layer.tables.sessions and "version" in (action.names or {}).values()
            for action in write.actions
        ):
            self.versions.forget(sid)

    def scope(self, session_id: str, stores_payloads: bool = True) -> AbstractContextManager[Any]:
        """The payload scope of one call on `session_id` (nothing to scope when it stores no payload)."""
        if not stores_payloads:
            return nullcontext()
        return self.layer.payloads.scope(lambda: run_items(self.layer, session_id))

    def _send(self, write: Write) -> Item | None:
        layer = self.layer
        if len(write.actions) > 1:
            layer.transact_write(write.actions, token=str(uuid.uuid4()))
            return layer.get(write.read_back[0], write.read_back[1]) if write.read_back else None
        action = write.actions[0]
        if action.kind == "Put":
            assert action.item is not None
            layer.put(
                action.table,
                action.item,
                condition=action.condition,
                names=action.names,
                values=action.values,
            )
            return dict(action.item)
        assert action.update is not None
        assert action.key is not None
        return layer.update(
            action.table,
            action.key,
            update=action.update,
            condition=action.condition,
            names=action.names,
            values=action.values,
            return_values="ALL_NEW" if write.returns else "NONE",
        )

    # --- the payload layer's calls, in one place -----------------------------------------------------------

    def encode(
        self, value: Any, *, field: str, object_key: str, context: PayloadContext, lossy: bool = False
    ) -> EncodedPayload:
        """A payload's stored form (inline, offloaded or sealed, as the config says)."""
        return self.layer.payloads.encode(
            value, field=field, object_key=object_key, context=context, lossy=lossy
        )

    def encode_json(
        self,
        raw: Any,
        *,
        field: str,
        object_key: str,
        context: PayloadContext,
        warnings: tuple[str, ...],
        seal: bool,
    ) -> EncodedPayload:
        """A payload already in its JSON form (an accumulated input with references substituted)."""
        return self.layer.payloads.store_json(
            raw,
            field=field,
            object_key=object_key,
            context=context,
            warnings=warnings,
            seal=seal,
        )


def run_items(layer: DynamoLayer, session_id: str) -> list[Item]:
    """Every stored item of a run — its agents and its session, consistent — for reference checks."""
    items = list(
        layer.query_all(
            layer.tables.executions, key_condition="execution_id = :id", values={":id": session_id},
            consistent=True,
        )
    )  # fmt: skip
    session = layer.get(layer.tables.sessions, {"session_id": session_id})
    return items + ([session] if session is not None else [])


def refusal_of(reasons: list[CancellationReason], index: int) -> Item | None:
    """The item as it was when action `index` was refused (None when that action held, or the item is
    absent)."""
    reason = reasons[index] if index < len(reasons) else None
    return reason.old_item if reason is not None and reason.code == CONDITION_FAILED else None


_RUN_END: dict[SessionStatus, UsageKind] = {
    SessionStatus.COMPLETED: "run_completed",
    SessionStatus.FAILED: "run_failed",
    SessionStatus.ABANDONED: "run_abandoned",
}


def run_end_events(status: SessionStatus, sid: str, moment: datetime, item: Item | None) -> list[UsageEvent]:
    """The usage event of a run reaching `status` (nothing for ACTIVE), from the session item as stored."""
    kind = _RUN_END.get(status)
    if kind is None or item is None:
        return []
    read = session_reader(item)
    try:
        created: datetime | None = read.moment("created_at", None)
        # A fork's first resume is how it starts (`Session.recoveries`), not a recovery.
        resumed = read.whole("resume_count", 0) > (1 if item.get("parent_id") is not None else 0)
    except MalformedItemError:  # counted all the same (the transition happened), without the details
        created, resumed = None, False
    return [
        UsageEvent(
            kind,
            moment,
            session_id=sid,
            pipeline_type=str(item.get("pipeline_type", "SIMPLE")),
            seconds=max(0.0, epoch_float(moment) - epoch_float(created))
            if kind == "run_completed" and created is not None
            else None,
            recovered=kind == "run_completed" and resumed,
        )
    ]
