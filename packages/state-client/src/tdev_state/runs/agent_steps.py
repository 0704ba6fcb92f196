"""An agent transition — one row of `rules.AGENT_RULES` — as the writer applies it.

One TransactWriteItems of the agent item and the session item (and, for the move-on variant, a
ConditionCheck that the agent moved past is FAILED), so an agent is never COMPLETED while its session still
points at it, or the reverse. A refusal is classified from the row: the move-on or over-budget variant that
holds (written again), a duplicate of an earlier identical call (its fingerprint matches), or the typed error
that explains it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from tdev_state.exceptions import (
    ClaimLostError,
    ConflictError,
    InvalidTransitionError,
    SessionNotFoundError,
    StateError,
)
from tdev_state.log import get_logger
from tdev_state.models import AGENT_STEP, AGENTS, AgentStatus, AgentTransition, SessionStatus
from tdev_state.payloads import EncodedPayload
from tdev_state.runs.eventlog import AGENT_LOG, agent_entry
from tdev_state.runs.expressions import agent_item_update, agent_session_update
from tdev_state.runs.policy import declared_silence
from tdev_state.runs.records import execution_reader, session_reader
from tdev_state.runs.rules import (
    AGENT_RULES,
    AgentKind,
    SessionEffect,
    agent_session_effect,
    agent_sort_key,
    may_move_past,
)
from tdev_state.runs.writer import (
    AGAIN,
    CONDITION_FAILED,
    Again,
    Duplicate,
    Transition,
    TransitionWriter,
    Write,
    refusal_of,
    run_end_events,
)
from tdev_state.storage import CancellationReason, Item, TransactAction
from tdev_state.usage import UsageEmitter, UsageEvent, UsageKind

if TYPE_CHECKING:
    from tdev_state.runs.agents import ExecutionStore

log = get_logger(__name__)

#: Attempts an agent step makes on a run another writer keeps moving (each a refused transaction) before it
#: gives up with ConflictError.
MAX_OVERTAKEN = 16

#: Lossy-mode warnings kept on the agent item (all of them are returned to the caller).
_STORED_WARNINGS = 20

#: A payload to store, encoded inside the call's payload scope.
PayloadThunk = Callable[[], EncodedPayload]


class AgentStep(Transition[AgentTransition]):
    """One agent transition of one run: the row, the agent, what it stores, and the variant tried now."""

    def __init__(
        self,
        store: ExecutionStore,
        kind: AgentKind,
        sid: str,
        agent: str,
        *,
        sets: dict[str, Any],
        payloads: dict[str, PayloadThunk],
        extra: tuple[str, ...] = (),
        error: str | None = None,
        claim: tuple[int, str] | None = None,
    ) -> None:
        self._store = store
        self.rule = AGENT_RULES[kind]
        self.kind = kind
        self.session_id = sid
        self.agent = agent
        self._sets = sets
        self._thunks = payloads
        self._extra = extra
        self._error = error
        self._claim = claim
        self._policy = store._policy
        self.effect = agent_session_effect(self.rule, agent, self._policy)
        self._payloads: dict[str, EncodedPayload] = {}
        self._warnings: tuple[str, ...] = ()
        self._refresh = False
        self._stalled_at = self._now = datetime.min
        self._overtaken = 0  # refusals because another writer moved the run's version first

    def prepare(self, writer: TransitionWriter) -> None:
        """Encode the payloads (inside the scope), then fix the moment and the fingerprint."""
        self._payloads = {name: thunk() for name, thunk in self._thunks.items()}
        self._now = self._store._clock()
        self._fingerprint = self._store._fingerprint(
            self.kind, self.session_id, self.agent, *self._payloads.values(), *self._extra
        )
        self._warnings = tuple(line for payload in self._payloads.values() for line in payload.warnings)
        for name, payload in self._payloads.items():
            self._sets[name] = payload.value
            self._sets[name.replace("_data", "_bytes")] = payload.json_bytes
        if self._warnings:  # the record says what is stored in marked lossy form (bounded: an item is 400 KB)
            self._sets["payload_warnings"] = [line[:300] for line in self._warnings[:_STORED_WARNINGS]]

    def write(self) -> Write:
        rule, sid, agent, effect = self.rule, self.session_id, self.agent, self.effect
        layer = self._store._layer
        retention = layer.config.retention_days
        live_for = self._silence()
        self._stalled_at = self._now + timedelta(seconds=live_for)
        self._refresh = self._store._liveness.due(sid, self._now, self._stalled_at)
        agent_expr = agent_item_update(
            rule,
            agent,
            now=self._now,
            sets=self._sets,
            fingerprint=self._fingerprint.stored,
            retention_days=retention,
        )
        # The run's event log (runs.eventlog): this transition makes the version after the one known here;
        # the session half is conditioned on it, so the stamp is exact or the write is refused.
        before = self._store._writer.known_version(sid)
        self.makes_version = before + 1
        agent_expr.append(AGENT_LOG, [self._event_entry(before + 1)])
        session_expr = agent_session_update(
            rule,
            sid,
            agent,
            effect,
            now=self._now,
            policy=self._policy,
            retention_days=retention,
            refresh_liveness=self._refresh,
            error_message=self._error,
            claim=self._claim,
            live_for=live_for,
        )
        session_expr.require_equal("version", before)
        actions = [
            agent_expr.action(
                layer.tables.executions, {"execution_id": sid, "agent_name": agent_sort_key(agent)}
            ),
            session_expr.action(layer.tables.sessions, {"session_id": sid}),
        ]
        if effect.moved_past is not None:
            actions.append(self._still_failed(effect.moved_past))
        return Write(actions)

    def refused(
        self, reasons: list[CancellationReason]
    ) -> AgentTransition | Again | Duplicate[AgentTransition]:
        old = refusal_of(reasons, 1)
        expected = (self.makes_version or 1) - 1
        if old is not None and "version" in old and int(old["version"]) != expected:
            # Another writer moved the run (a claim, a second process): the refusal shows the version to
            # write on; whether the transition itself still holds is the next attempt's answer. Bounded: a run
            # moved before every attempt is a conflict to report, not a loop of transactions.
            self._store._writer.versions.remember(self.session_id, int(old["version"]))
            self._overtaken += 1
            if self._overtaken > MAX_OVERTAKEN:
                raise ConflictError(
                    f"{self.kind} {self.agent} of {self.session_id!r}: another writer moved the run before "
                    f"each of {self._overtaken} attempts (now version {int(old['version'])}); nothing was "
                    "written. One process should drive a run; try again once it is quiet"
                )
            return AGAIN
        variant = self._next_variant(reasons)
        if variant is not None:
            self.effect = variant
            return AGAIN
        return self._classify(reasons)

    def stamp(self) -> tuple[datetime, datetime] | None:
        if self.kind != "interrupt" and (self._refresh or self.effect.status is not SessionStatus.ACTIVE):
            return self._now, self._stalled_at
        return None

    def applied(self, item: Item | None) -> AgentTransition:
        kind, sid, agent, effect = self.kind, self.session_id, self.agent, self.effect
        if kind == "complete" and "output_data" in self._payloads:  # final: later inputs may refer to it
            self._store._known.remember(sid, agent, self._payloads["output_data"].digest)
        log.info(
            f"agent.{kind}",
            session_id=sid,
            agent_name=agent,
            progress=effect.progress,
            session_status=effect.status.value,
            moved_past=effect.moved_past,
        )
        return AgentTransition(
            execution_id=sid,
            agent_name=agent,
            status=self.rule.agent_to,
            session_status=effect.status,
            progress=effect.progress,
            at=self._now,
            tolerated=kind == "fail" and may_move_past(self._policy, agent),
            warnings=self._warnings,
        )

    def usage(self, item: Item | None, usage: UsageEmitter) -> Iterable[UsageEvent]:
        """The usage events of an applied (never a duplicate) agent transition."""
        kind, sid, agent, effect, now = self.kind, self.session_id, self.agent, self.effect, self._now
        events = []
        if kind in ("start", "retry"):
            usage.attempt_began(sid, agent, now)
            event: UsageKind = "agent_started" if kind == "start" else "agent_retried"
            events.append(UsageEvent(event, now, session_id=sid, agent=agent))
        elif kind == "complete":
            seconds = usage.attempt_seconds(sid, agent, now)
            events.append(UsageEvent("agent_completed", now, session_id=sid, agent=agent, seconds=seconds))
        else:  # fail, interrupt: a failed attempt
            usage.attempt_seconds(sid, agent, now)
            events.append(UsageEvent("agent_failed", now, session_id=sid, agent=agent))
        if effect.moved_past is not None:
            events.append(UsageEvent("agent_tolerated", now, session_id=sid, agent=effect.moved_past))
        if kind != "interrupt" and effect.status is not SessionStatus.ACTIVE:
            # The run ended (or FAILED): its type, start and resumes come from the session, read once.
            layer = self._store._layer
            try:
                session = layer.get(layer.tables.sessions, {"session_id": sid})
            except StateError as exc:  # counted anyway, by type "UNKNOWN": totals stay exact
                log.warning("usage.session_unreadable", session_id=sid, error=str(exc))
                session = {"pipeline_type": "UNKNOWN"}
            events += run_end_events(effect.status, sid, now, session)
        return events

    def _event_entry(self, seq: int) -> str:
        """This transition's entry in the agent's event log: what, when, the run's status after it, the
        error, the output's size, and the tolerance (never a payload)."""
        kind, effect = self.kind, self.effect
        output = self._payloads.get("output_data")
        if kind == "fail":
            tolerated = self.agent if may_move_past(self._policy, self.agent) else None
        else:
            tolerated = effect.moved_past
        return agent_entry(
            seq,
            kind,
            self._now,
            effect.status,
            error=self._error or self._sets.get("error_message"),
            output_bytes=output.json_bytes if output is not None else None,
            tolerated=tolerated,
        )

    # --- the variants and the refusal -----------------------------------------------------------------

    def _silence(self) -> float:
        """The window the run declares after this transition (`policy.declared_silence`)."""
        effect = self.effect
        step = AGENT_STEP[self.agent]
        current = AGENTS[step] if self.kind == "complete" and not effect.finished else self.agent
        return declared_silence(self._policy, effect.status, current, ended=effect.finished)

    def _still_failed(self, agent: str) -> TransactAction:
        """ConditionCheck: the agent being moved past is FAILED (not running, not completed)."""
        return TransactAction(
            "ConditionCheck",
            self._store._layer.tables.executions,
            key={"execution_id": self.session_id, "agent_name": agent_sort_key(agent)},
            condition="#s = :failed",
            names={"#s": "status"},
            values={":failed": AgentStatus.FAILED.value},
        )

    def _next_variant(self, reasons: list[CancellationReason]) -> SessionEffect | None:
        """The variant to try after a refusal, when the refusal shows which one holds: the move-on (the
        agent before this one failed and the pipeline moved past it), or the over-budget end of the run."""
        rule, agent, effect, policy = self.rule, self.agent, self.effect, self._policy
        step = AGENT_STEP[agent]
        check_failed = len(reasons) > 2 and reasons[2].code == CONDITION_FAILED
        old = reasons[1].old_item
        if reasons[0].code == CONDITION_FAILED or check_failed or old is None:
            return None
        if old.get("status") != SessionStatus.ACTIVE.value:
            return None
        progress = session_reader(old).whole("progress", -1)
        if rule.progress == "next" and effect.moved_past is None and step >= 2 and progress == step - 2:
            previous = AGENTS[step - 2]
            if old.get("current_agent") == previous and may_move_past(policy, previous):
                return agent_session_effect(rule, agent, policy, moved_past=previous)
        if effect.finished and effect.status is SessionStatus.COMPLETED:
            failures = len(old.get("failed_agents") or ()) + (1 if effect.moved_past else 0)
            expected = step - (2 if effect.moved_past else 1)
            if progress == expected and failures > policy.tolerated_failures:
                return agent_session_effect(
                    rule, agent, policy, moved_past=effect.moved_past, over_budget=True
                )
        return None

    def _classify(self, reasons: list[CancellationReason]) -> AgentTransition | Duplicate[AgentTransition]:
        """Turn a refused transition into a duplicate success or the error that explains it."""
        rule, kind, sid, agent = self.rule, self.kind, self.session_id, self.agent
        step = AGENT_STEP[agent]
        old_exec, old_session = refusal_of(reasons, 0), refusal_of(reasons, 1)
        session_refused = reasons[1].code == CONDITION_FAILED
        if old_exec is not None and self._store._same_fingerprint(
            old_exec.get("fingerprint"), self._fingerprint, sid, agent
        ):
            log.info(f"agent.{kind}.duplicate", session_id=sid, agent_name=agent)
            return Duplicate(self._duplicate(old_exec, old_session))
        if len(reasons) > 2 and reasons[2].code == CONDITION_FAILED:
            previous = AGENTS[step - 2]
            state = (reasons[2].old_item or {}).get("status", "not started")
            raise InvalidTransitionError(
                f"cannot {kind} {agent} of {sid!r}: the agent before it, {previous}, is {state}; it must "
                "complete, or fail, before the run moves on",
                current=reasons[2].old_item,
            )
        if session_refused and old_session is None:
            raise SessionNotFoundError(
                f"no pipeline session {sid!r}: create the session first (save_pipeline_session); an "
                "execution_id is the session_id of its run (see docs/data-model.md)"
            )
        if rule.fenced and old_session is not None:
            raise ClaimLostError(
                f"the claim on {sid!r} (fencing token {dict(old_session).get('fencing_token')}) is no "
                "longer this worker's; another worker owns the run now"
            )
        if old_exec is not None and old_exec.get("status") == rule.agent_to.value and kind != "retry":
            log.warning(f"agent.{kind}.conflict", session_id=sid, agent_name=agent)
            raise ConflictError(
                f"{agent} of session {sid!r} is already {rule.agent_to.value} by another writer; "
                "re-read the run before acting on it"
            )
        agent_refused = reasons[0].code == CONDITION_FAILED and (
            old_exec is None or old_exec.get("status") not in {s.value for s in rule.agent_from}
        )
        if old_session is not None and not agent_refused:
            raise self._session_refusal(old_session)
        if agent_refused:
            allowed = " or ".join(
                "not started" if s is AgentStatus.PENDING else s.value for s in rule.agent_from
            )
            state = old_exec["status"] if old_exec else "not started"
            raise InvalidTransitionError(
                f"cannot {kind} {agent} of {sid!r}: it is {state}, and {kind} is legal only when it is "
                f"{allowed}",
                current=old_exec,
            )
        codes = ", ".join(r.code for r in reasons)  # pragma: no cover - every refusal is classified above
        raise ConflictError(f"{kind} {agent} of {sid!r} was refused: {codes}")  # pragma: no cover

    def _duplicate(self, old_exec: Item, old_session: Item | None) -> AgentTransition:
        """The result of the earlier identical call, as the refusal shows it."""
        return AgentTransition(
            execution_id=self.session_id,
            agent_name=self.agent,
            status=execution_reader(old_exec).enum(AgentStatus, "status"),
            session_status=session_reader(old_session).enum(SessionStatus, "status")
            if old_session
            else SessionStatus.ACTIVE,
            progress=session_reader(old_session).whole("progress")
            if old_session
            else AGENT_STEP[self.agent] - 1,
            at=self._store._clock(),
            duplicate=True,
        )

    def _session_refusal(self, old: Item) -> InvalidTransitionError:
        rule, kind, sid, agent = self.rule, self.kind, self.session_id, self.agent
        step = AGENT_STEP[agent]
        read = session_reader(old)
        status, progress = read.text("status"), read.whole("progress")
        allowed = " or ".join(s.value for s in rule.session_from)
        if status not in {s.value for s in rule.session_from}:
            hint = " (send RUNNING again to retry the failed agent)" if status == "FAILED" else ""
            return InvalidTransitionError(
                f"cannot {kind} {agent}: session {sid!r} is {status}, not {allowed}{hint}", current=old
            )
        if kind == "retry":
            return InvalidTransitionError(
                f"cannot retry {agent} (step {step}) of {sid!r}: the run has moved on to "
                f"{old.get('current_agent')}; a failed agent is retried before the next one starts",
                current=old,
            )
        expected = AGENTS[progress] if progress < len(AGENTS) else "none (all finished)"
        return InvalidTransitionError(
            f"cannot {kind} {agent} (step {step}) of {sid!r}: {progress} agent(s) have finished; agents "
            f"run in order and the next one is {expected}",
            current=old,
        )
