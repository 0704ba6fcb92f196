"""The pipeline's own session transitions — rows `set_status` and `verdict` of `rules.SESSION_RULES` — as
the writer applies them.

`StatusUpdate` is what the pipeline says about its run (`sessions.update`): a status change checked against
the lifecycle and the run policy, metadata, an error message; progress and current_agent only checked. Its
variants: the change itself; FAILED saved again (a write, not a transition: no failure counted); and the end
of a run whose last agent failed (moved past, with a ConditionCheck that it is FAILED). `VerdictStep` is the
orchestrator's own verdict (`sessions.record_verdict`). A refusal becomes the variant that holds, the run as
it is (a retried call that landed), or the typed error that explains it (`refusal`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from tdev_state.exceptions import (
    ConflictError,
    InvalidTransitionError,
    MalformedItemError,
    SessionNotFoundError,
)
from tdev_state.log import get_logger
from tdev_state.models import AGENTS, AgentStatus, RunPolicy, Session, SessionStatus, epoch
from tdev_state.payloads import EncodedPayload
from tdev_state.runs.eventlog import log_run_event
from tdev_state.runs.policy import declared_silence
from tdev_state.runs.records import UNSET, session_context, session_from_item, session_reader
from tdev_state.runs.rules import (
    SESSION_RULES,
    SESSION_TRANSITIONS,
    agent_sort_key,
    may_move_past,
    predecessors,
    require_within_budget,
    session_expr,
    status_effects,
)
from tdev_state.runs.writer import AGAIN, Again, Landed, Transition, TransitionWriter, Write, run_end_events
from tdev_state.storage import CancellationReason, Expr, Item, TransactAction
from tdev_state.usage import UsageEmitter, UsageEvent

if TYPE_CHECKING:
    from tdev_state.runs.sessions import SessionStore

log = get_logger(__name__)


class StatusUpdate(Transition[Session]):
    """One `sessions.update` of one run (the arguments validated by the store)."""

    def __init__(
        self,
        store: SessionStore,
        sid: str,
        *,
        version: int | None,
        target: SessionStatus | None,
        progress: int | None,
        current_agent: str | None,
        metadata: Any,
        error: str | None,
        token: str,
    ) -> None:
        self._store = store
        self._layer = store._layer
        self.session_id = sid
        self._version, self._target, self._error, self._token = version, target, error, token
        self._progress, self._agent, self._metadata = progress, current_agent, metadata
        self._encoded: EncodedPayload | None = None
        self._policy: RunPolicy = self._layer.config.run_policy
        self._moment = moment = store._clock()
        # A status the pipeline sets itself ends its driving of the run (only its verdict may follow): the
        # deadline grace. Other updates keep the window of the last transition; the index key, if due, is
        # set no later than the shortest window this policy declares (never after the exact one).
        ended = target is not None and target is not SessionStatus.ACTIVE
        self._live_for = (
            declared_silence(self._policy, SessionStatus.FAILED, None, ended=True) if ended else None
        )
        silence = self._live_for if self._live_for is not None else self._policy.shortest_silence_seconds
        self._stalled_at = moment + timedelta(seconds=silence)
        self._refresh = target is not None or store._liveness.due(sid, moment, self._stalled_at)
        self._variant = "first"  # then "repeat" (FAILED again) or "last" (ends after a failed last agent)
        self._first_old: Item | None = None

    def prepare(self, writer: TransitionWriter) -> None:
        if self._metadata is not UNSET:
            context = session_context(self.session_id)
            self._encoded = writer.encode(
                self._metadata, field="metadata", object_key=self.session_id, context=context
            )

    def write(self) -> Write:
        key = {"session_id": self.session_id}
        table = self._layer.tables.sessions
        if self._variant == "last":
            last = AGENTS[-1]
            check_last = TransactAction(
                "ConditionCheck",
                self._layer.tables.executions,
                key={"execution_id": self.session_id, "agent_name": agent_sort_key(last)},
                condition="#s = :failed",
                names={"#s": "status"},
                values={":failed": AgentStatus.FAILED.value},
            )
            return Write([self._build(last).action(table, key), check_last], read_back=(table, key))
        return Write([self._build(None).action(table, key)], returns=True)

    def _build(self, moved_past: str | None) -> Expr:
        """The update. `repeat`: the run already has the target status (FAILED saved again): a write, not a
        transition, so it counts no failure; the first attempt excludes that case by its condition."""
        target, repeat, moment = self._target, self._variant == "repeat", self._moment
        expr = Expr().require_exists("session_id")
        expr.set_many({"last_updated": epoch(moment), "last_request": self._token}).increment("version")
        log_run_event(expr, "status", moment, status=target.value if target is not None else None)
        if self._version is not None:
            expr.require_equal("version", self._version)
        if target is not None:
            allowed = [target] if repeat else predecessors(target)
            if target is SessionStatus.FAILED and not repeat:
                allowed = [s for s in allowed if s is not SessionStatus.FAILED]
            expr.require_in("status", [s.value for s in allowed])
            retention = self._layer.config.retention_days
            status_effects(expr, self.session_id, target, now=moment, retention_days=retention, repeat=repeat)
            if target is SessionStatus.COMPLETED and moved_past is None:
                expr.require_equal("progress", len(AGENTS))
            elif target is SessionStatus.COMPLETED and moved_past is not None:
                # The pipeline ends the run with its last agent failed: that failure is moved past.
                expr.require_equal("progress", len(AGENTS) - 1).require_equal("current_agent", moved_past)
                expr.set("progress", len(AGENTS)).add_to_set("failed_agents", {moved_past})
            if target is SessionStatus.COMPLETED:
                require_within_budget(expr, self._policy, adding=1 if moved_past else 0)
            if target is SessionStatus.ACTIVE and self._error is None:
                expr.remove("error_message")
        if self._progress is not None:
            expr.require_equal("progress", self._progress)
        if self._agent is not None:
            expr.require_equal("current_agent", self._agent)
        if self._encoded is not None:
            expr.set("metadata", self._encoded.value)
        if self._error is not None:
            expr.set("error_message", self._error)
        if self._live_for is not None:
            expr.set("live_for", self._live_for)
        if self._refresh:
            expr.set("stalled_at", epoch(self._stalled_at))
        return expr

    def refused(self, reasons: list[CancellationReason]) -> Session | Again | Landed:
        old = reasons[0].old_item
        if self._variant == "last":
            raise self._refusal(old or self._first_old)
        if old is not None and old.get("last_request") == self._token:
            return self._store.get(self.session_id)  # our own earlier attempt was applied (a retry)
        if self._variant == "repeat":
            raise self._refusal(old)
        self._first_old = old
        if self._target is SessionStatus.FAILED and old is not None and old.get("status") == "FAILED":
            self._variant = "repeat"
            return AGAIN
        if self._ends_after_failed_last(old):
            self._variant = "last"
            return AGAIN
        raise self._refusal(old)

    def _ends_after_failed_last(self, old: Item | None) -> bool:
        """The pipeline ends a run whose last agent failed (not critical): the "last" variant may hold."""
        last = AGENTS[-1]
        return (
            self._target is SessionStatus.COMPLETED
            and old is not None
            and old.get("status") == SessionStatus.ACTIVE.value
            and int(old.get("progress", -1)) == len(AGENTS) - 1
            and old.get("current_agent") == last
            and may_move_past(self._policy, last)
        )

    def _refusal(self, old: Item | None) -> Exception:
        return refusal(
            self.session_id,
            old,
            version=self._version,
            target=self._target,
            progress=self._progress,
            current_agent=self._agent,
            policy=self._policy,
        )

    def stamp(self) -> tuple[datetime, datetime] | None:
        return (self._moment, self._stalled_at) if self._refresh else None

    def usage(self, item: Item | None, usage: UsageEmitter) -> Iterable[UsageEvent]:
        """The usage events of a status *change* (not of FAILED saved again)."""
        target = None if self._variant == "repeat" else self._target
        if target is None:
            return []
        events = []
        if self._variant == "last":
            events.append(
                UsageEvent("agent_tolerated", self._moment, session_id=self.session_id, agent=AGENTS[-1])
            )
        return events + run_end_events(target, self.session_id, self._moment, item)

    def applied(self, item: Item | None) -> Session:
        return updated_session(self._store, self.session_id, item, self._metadata)


class VerdictStep(Transition[Session]):
    """The orchestrator's own verdict on an open run (`SESSION_RULES["verdict"]`), validated by the store."""

    def __init__(
        self, store: SessionStore, sid: str, *, success: bool, failed: set[str], error: str | None, token: str
    ) -> None:
        self._store = store
        self._layer = store._layer
        self.session_id = sid
        self.stores_payloads = False
        self._success, self._failed, self._error, self._token = success, failed, error, token
        self._target = SessionStatus.COMPLETED if success else SessionStatus.FAILED
        self._moment = store._clock()
        # The pipeline is done driving the run: only the grace remains as its window (an open FAILED run).
        self._live_for = declared_silence(self._layer.config.run_policy, self._target, None, ended=True)
        self._stalled_at = self._moment + timedelta(seconds=self._live_for)
        self._repeat = False

    def write(self) -> Write:
        rule = SESSION_RULES["verdict"]
        if self._repeat:
            sources = [SessionStatus.FAILED]
        else:
            sources = [s for s in rule.session_from if not (s is SessionStatus.FAILED and not self._success)]
        expr = Expr().require_exists("session_id")
        expr.require_in("status", [s.value for s in sources])
        values = {
            "last_updated": epoch(self._moment),
            "last_request": self._token,
            "verdict": self._target.value,
        }
        expr.set_many(values).increment("version")
        log_run_event(expr, "verdict", self._moment, status=self._target.value, error=self._error)
        expr.set("live_for", self._live_for).set("stalled_at", epoch(self._stalled_at))
        retention = self._layer.config.retention_days
        status_effects(
            expr,
            self.session_id,
            self._target,
            now=self._moment,
            retention_days=retention,
            repeat=self._repeat,
        )
        if self._success:
            if self._failed:  # a failed run's list stays the lifecycle's: agents it moved past (tolerated)
                expr.add_to_set("failed_agents", self._failed)
            expr.remove("error_message")
        else:
            expr.set("error_message", self._error or "the orchestrator declared the run failed")
        return Write(
            [expr.action(self._layer.tables.sessions, {"session_id": self.session_id})], returns=True
        )

    def refused(self, reasons: list[CancellationReason]) -> Session | Again:
        sid, old = self.session_id, reasons[0].old_item
        if self._repeat:
            return self._store.get(sid)  # moved on meanwhile (a claim's resume, an abandon): theirs stands
        if old is None:
            raise SessionNotFoundError(f"no pipeline session {sid!r}; create it first")
        if old.get("last_request") == self._token:
            return self._store.get(sid)  # applied already (our retried write)
        if old.get("status") != SessionStatus.FAILED.value or self._success:
            if old.get("status") == self._target.value:
                return self._store.get(sid)  # the run is there already
            raise InvalidTransitionError(
                f"session {sid!r} is {old.get('status')}; the orchestrator's verdict "
                f"{'success' if self._success else 'failure'} cannot change a final run",
                current=old,
            )
        # FAILED already (its critical agent failed for good): the verdict still ends the pipeline's window —
        # the agent's deadline no longer applies, only the grace — and stores the reason, without counting
        # the run as failed a second time (fail_count, the usage report).
        self._repeat = True
        return AGAIN

    def stamp(self) -> tuple[datetime, datetime] | None:
        return self._moment, self._stalled_at

    def usage(self, item: Item | None, usage: UsageEmitter) -> Iterable[UsageEvent]:
        return [] if self._repeat else run_end_events(self._target, self.session_id, self._moment, item)

    def applied(self, item: Item | None) -> Session:
        return updated_session(self._store, self.session_id, item, UNSET)


def updated_session(store: SessionStore, sid: str, item: Item | None, metadata: Any) -> Session:
    """The Session after an applied update (its write stands: returning it must not fail on a payload it
    did not touch)."""
    assert item is not None
    log.info(
        "session.updated",
        session_id=sid,
        status=item["status"],
        progress=int(item["progress"]),
        version=int(item["version"]),
    )
    return session_from_item(item, store._layer, strict=False, metadata=metadata)


def heartbeat_expr(now: datetime, live_for: float, stalled_at: datetime) -> Expr:
    """Row `heartbeat`: an ACTIVE run is alive; `version` is not bumped (the row is not versioned)."""
    expr = session_expr("heartbeat")
    expr.set_many({"last_updated": epoch(now), "live_for": live_for, "stalled_at": epoch(stalled_at)})
    return expr.increment("beats")


def refusal(  # noqa: PLR0911 - one return per thing refused
    sid: str,
    old: Item | None,
    *,
    version: int | None,
    target: SessionStatus | None,
    progress: int | None,
    current_agent: str | None,
    policy: RunPolicy,
) -> Exception:
    """The typed error that explains why an update of session `sid` was refused, from the item as it was."""
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
        f"{policy.tolerated_failures} tolerated failure(s)",
        current=old,
    )
