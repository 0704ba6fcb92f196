"""Agent executions: start, complete, fail, retry and interrupt an agent, each together with its session.

Each transition is one row of `rules.AGENT_RULES`, applied as one TransactWriteItems of two actions — the
agent's item and the session item — so an agent is never COMPLETED while its session still points at it, or
the reverse. Conditions are on the state each transition changes (agent status; session status and
progress), which makes concurrent callers serialize: exactly one wins, the others get ConflictError, and no
read is needed before the write.

Idempotency, two layers deep:
- the ClientRequestToken (fixed for the call, so botocore's own retries after a timeout are no-ops);
- a `fingerprint` stored on the agent item (the transition and a hash of its payload): when a repeated
  call is refused because its transition already happened, a matching fingerprint turns the refusal into
  a duplicate success (`AgentTransition.duplicate`) — at any distance in time, unlike the token's 10 min.
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tdev_state import _codec, _inputs
from tdev_state import validate as check
from tdev_state.dynamo import DynamoLayer, Item, TransactAction, TransactionCancelled, current_write
from tdev_state.exceptions import (
    ClaimLostError,
    ConflictError,
    ExecutionNotFoundError,
    InvalidTransitionError,
    PayloadIntegrityError,
    SessionNotFoundError,
    StateError,
)
from tdev_state.log import get_logger
from tdev_state.models import (
    AGENT_STEP,
    AGENTS,
    AgentExecution,
    AgentStatus,
    AgentTransition,
    SessionStatus,
)
from tdev_state.runs.items import ItemReader
from tdev_state.runs.policy import LivenessStamps, declared_silence
from tdev_state.runs.rules import (
    AGENT_RULES,
    AgentKind,
    SessionEffect,
    agent_item_update,
    agent_session_effect,
    agent_session_update,
    agent_sort_key,
)
from tdev_state.runs.sessions import emit_run_end, payload_scoped, session_reader
from tdev_state.schema import AGENT_EXECUTIONS
from tdev_state.usage import UsageEvent, UsageKind

log = get_logger(__name__)

_UNSET: Any = object()
#: Lossy-mode warnings kept on the agent item (all of them are returned to the caller).
_STORED_WARNINGS = 20


class ExecutionStore:
    """Agent items in `t-developer-{env}-agent-executions` (execution_id = the run's session_id)."""

    def __init__(self, layer: DynamoLayer, clock: Callable[[], datetime], liveness: LivenessStamps) -> None:
        self._layer = layer
        self._table = layer.tables.executions
        self._sessions = layer.tables.sessions
        self._clock = clock
        self._liveness = liveness
        self._policy = layer.config.run_policy
        self._known = _inputs.KnownOutputs()

    # --- transitions ----------------------------------------------------------------------------------

    @payload_scoped
    def start(
        self,
        session_id: str,
        agent_name: str,
        *,
        input_data: Any = None,
        project_id: str | None = None,
        lossy: bool = False,
    ) -> AgentTransition:
        """Mark the next agent RUNNING with its input and point the session at it.

        `lossy` (for every transition that stores a payload): a value with no exact stored form (NaN, an
        object without a JSON form, two keys that would merge…) is stored in its marked lossy form and
        listed in the returned `warnings`, instead of refusing the call (ValidationError, nothing written).
        """
        sid, agent = self._address(session_id, agent_name)
        sets: dict[str, Any] = {}
        if project_id is not None:
            sets["project_id"] = check.identifier("project_id", project_id)
        payloads = {"input_data": self._encode_input(input_data, sid, agent, lossy=lossy)}
        return self._apply("start", sid, agent, sets=sets, payloads=payloads)

    @payload_scoped
    def complete(
        self,
        session_id: str,
        agent_name: str,
        *,
        output_data: Any = None,
        input_data: Any = _UNSET,
        retry_count: int | None = None,
        project_id: str | None = None,
        lossy: bool = False,
    ) -> AgentTransition:
        """Mark the agent COMPLETED with its output and advance the session's progress to its step.

        The agent need not have been started: a first record that is already COMPLETED (the plan records an
        agent when it finishes) stores what is known. Completing the last agent ends the run.
        """
        sid, agent = self._address(session_id, agent_name)
        sets = self._extras(retry_count=retry_count, project_id=project_id)
        payloads = {"output_data": self._encode(output_data, "output_data", sid, agent, lossy=lossy)}
        if input_data is not _UNSET:
            payloads["input_data"] = self._encode_input(input_data, sid, agent, lossy=lossy)
        return self._apply("complete", sid, agent, sets=sets, payloads=payloads)

    @payload_scoped
    def fail(
        self,
        session_id: str,
        agent_name: str,
        *,
        error_message: str,
        output_data: Any = None,
        input_data: Any = _UNSET,
        retry_count: int | None = None,
        project_id: str | None = None,
        lossy: bool = False,
    ) -> AgentTransition:
        """Record that the agent failed (for now: a retry may follow).

        Under the run policy, a critical agent's failure makes the session FAILED (open for recovery); any
        other agent's failure is tolerated: the run goes on to the next agent and the session lists it.
        """
        sid, agent = self._address(session_id, agent_name)
        message = check.error_text(error_message)
        sets = self._extras(retry_count=retry_count, project_id=project_id)
        sets.update(error_message=message, last_error=message)
        payloads: dict[str, _codec.EncodedPayload] = {}
        if output_data is not None:
            payloads["output_data"] = self._encode(output_data, "output_data", sid, agent, lossy=lossy)
        if input_data is not _UNSET:
            payloads["input_data"] = self._encode_input(input_data, sid, agent, lossy=lossy)
        return self._apply("fail", sid, agent, sets=sets, payloads=payloads, extra=(message,), error=message)

    @payload_scoped
    def retry(
        self, session_id: str, agent_name: str, *, input_data: Any = _UNSET, lossy: bool = False
    ) -> AgentTransition:
        """Run a FAILED agent again: RUNNING, retry_count + 1, the session ACTIVE at this agent again.

        Legal while no later agent has started (the orchestrator retries at once, in process).
        """
        sid, agent = self._address(session_id, agent_name)
        payloads = {}
        if input_data is not _UNSET:
            payloads["input_data"] = self._encode_input(input_data, sid, agent, lossy=lossy)
        # Every retry is a new attempt, so its fingerprint is unique: a repeat is a second retry.
        return self._apply("retry", sid, agent, sets={}, payloads=payloads, extra=(str(uuid.uuid4()),))

    def interrupt(
        self, session_id: str, agent_name: str, *, reason: str, fencing_token: int, worker_id: str
    ) -> AgentTransition:
        """Close an agent a dead pipeline left RUNNING, as FAILED, under a recovery claim (fenced).

        ClaimLostError if the claim has moved on. The run's status and progress stay: the resume retries it.
        """
        sid, agent = self._address(session_id, agent_name)
        message = check.error_text(reason)
        sets = {"error_message": message, "last_error": message}
        return self._apply(
            "interrupt",
            sid,
            agent,
            sets=sets,
            payloads={},
            extra=(message,),
            claim=(check.whole("fencing_token", fencing_token, low=1), worker_id),
        )

    # --- reads ----------------------------------------------------------------------------------------

    def list(self, execution_id: str, *, load_payloads: bool = True) -> builtins.list[AgentExecution]:
        """Every started agent of a run, in pipeline order — one (paged) consistent Query."""
        sid = check.identifier("execution_id", execution_id, existing=True)
        run = [self._from_item(i, load_payloads=load_payloads) for i in self._run_items(sid)]
        if not any(_inputs.references(e.input_data) for e in run):
            return run
        outputs = {e.agent_name: e for e in run}
        return [self._with_inputs(e, outputs.get) for e in run]

    def get(self, execution_id: str, agent_name: str, *, load_payloads: bool = True) -> AgentExecution:
        """One agent's execution, or ExecutionNotFoundError if it never started."""
        sid, agent = self._address(execution_id, agent_name, existing=True)
        item = self._layer.get(self._table, {"execution_id": sid, "agent_name": agent_sort_key(agent)})
        if item is None:
            raise ExecutionNotFoundError(f"agent {agent!r} of execution {sid!r} has not started")
        execution = self._from_item(item, load_payloads=load_payloads)
        wanted = set(_inputs.references(execution.input_data))
        if not wanted:
            return execution
        items = {i.get("agent"): i for i in self._run_items(sid) if i.get("agent") in wanted}
        return self._with_inputs(
            execution,
            lambda name: self._from_item(items[name], load_payloads=True) if name in items else None,
        )

    def _run_items(self, sid: str) -> builtins.list[Item]:
        return builtins.list(
            self._layer.query_all(
                self._table, key_condition="execution_id = :id", values={":id": sid}, consistent=True
            )
        )

    def _with_inputs(
        self, execution: AgentExecution, lookup: Callable[[str], AgentExecution | None]
    ) -> AgentExecution:
        """The execution with its input's references to earlier outputs resolved."""

        def output_of(agent: str) -> Any:
            found = lookup(agent)
            if found is None or found.status is not AgentStatus.COMPLETED:
                raise PayloadIntegrityError(
                    f"input_data of {execution.agent_name} refers to the output of {agent}, which is not "
                    "stored as COMPLETED in this run"
                )
            return found.output_data

        return dataclasses.replace(execution, input_data=_inputs.resolve(execution.input_data, output_of))

    # --- the one executor ------------------------------------------------------------------------------

    def _apply(
        self,
        kind: AgentKind,
        sid: str,
        agent: str,
        *,
        sets: dict[str, Any],
        payloads: dict[str, _codec.EncodedPayload],
        extra: tuple[str, ...] = (),
        error: str | None = None,
        claim: tuple[int, str] | None = None,
    ) -> AgentTransition:
        """Apply one row of AGENT_RULES to the agent item and its session, in one transaction."""
        rule = AGENT_RULES[kind]
        now = self._clock()
        fingerprint = self._fingerprint(kind, sid, agent, *payloads.values(), *extra)
        warnings = tuple(line for payload in payloads.values() for line in payload.warnings)
        for name, payload in payloads.items():
            sets[name] = payload.value
            sets[name.replace("_data", "_bytes")] = payload.json_bytes
        if warnings:  # the record says what is stored in marked lossy form (bounded: an item is 400 KB)
            sets["payload_warnings"] = [line[:300] for line in warnings[:_STORED_WARNINGS]]
        retention = self._layer.config.retention_days
        effect = agent_session_effect(rule, agent, self._policy)
        key = {"execution_id": sid, "agent_name": agent_sort_key(agent)}
        while True:
            live_for = self._silence(kind, agent, effect)
            stalled_at = now + timedelta(seconds=live_for)
            refresh = self._liveness.due(sid, now, stalled_at)
            agent_expr = agent_item_update(
                rule, agent, now=now, sets=sets, fingerprint=fingerprint.stored, retention_days=retention
            )
            session_expr = agent_session_update(
                rule,
                sid,
                agent,
                effect,
                now=now,
                policy=self._policy,
                retention_days=retention,
                refresh_liveness=refresh,
                error_message=error,
                claim=claim,
                live_for=live_for,
            )
            actions = [
                agent_expr.action(self._table, key),
                session_expr.action(self._sessions, {"session_id": sid}),
            ]
            if effect.moved_past is not None:
                actions.append(self._still_failed(sid, effect.moved_past))
            try:
                self._layer.transact_write(actions, token=str(uuid.uuid4()))
            except TransactionCancelled as exc:
                retry_as = self._next_variant(rule.kind, agent, effect, exc)
                if retry_as is None:
                    return self._classify(kind, sid=sid, agent=agent, fingerprint=fingerprint, exc=exc)
                effect = retry_as
                continue
            break
        if kind != "interrupt" and (refresh or effect.status is not SessionStatus.ACTIVE):
            self._liveness.mark(sid, now, stalled_at)
        if kind == "complete" and "output_data" in payloads:  # final: later inputs may refer to it
            self._known.remember(sid, agent, payloads["output_data"].digest)
        if self._layer.usage.on:
            self._emit_usage(kind, sid, agent, effect, now)
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
            status=rule.agent_to,
            session_status=effect.status,
            progress=effect.progress,
            at=now,
            tolerated=kind == "fail" and not self._policy.is_critical(agent),
            warnings=warnings,
        )

    def _silence(self, kind: AgentKind, agent: str, effect: SessionEffect) -> float:
        """The window the run declares after this transition (`policy.declared_silence`)."""
        step = AGENT_STEP[agent]
        current = AGENTS[step] if kind == "complete" and not effect.finished else agent
        return declared_silence(self._policy, effect.status, current, ended=effect.finished)

    def _emit_usage(
        self, kind: AgentKind, sid: str, agent: str, effect: SessionEffect, now: datetime
    ) -> None:
        """The usage events of an applied (never a duplicate) agent transition."""
        usage = self._layer.usage
        if kind in ("start", "retry"):
            usage.attempt_began(sid, agent, now)
            event: UsageKind = "agent_started" if kind == "start" else "agent_retried"
            usage.emit(UsageEvent(event, now, session_id=sid, agent=agent))
        elif kind == "complete":
            seconds = usage.attempt_seconds(sid, agent, now)
            usage.emit(UsageEvent("agent_completed", now, session_id=sid, agent=agent, seconds=seconds))
        else:  # fail, interrupt: a failed attempt
            usage.attempt_seconds(sid, agent, now)
            usage.emit(UsageEvent("agent_failed", now, session_id=sid, agent=agent))
        if effect.moved_past is not None:
            usage.emit(UsageEvent("agent_tolerated", now, session_id=sid, agent=effect.moved_past))
        if kind != "interrupt" and effect.status is not SessionStatus.ACTIVE:
            # The run ended (or FAILED): its type, start and resumes come from the session, read once.
            try:
                item = self._layer.get(self._sessions, {"session_id": sid})
            except StateError as exc:  # counted anyway, by type "UNKNOWN": totals stay exact
                log.warning("usage.session_unreadable", session_id=sid, error=str(exc))
                item = {"pipeline_type": "UNKNOWN"}
            emit_run_end(usage, effect.status, sid, now, item)

    def _still_failed(self, sid: str, agent: str) -> TransactAction:
        """ConditionCheck: the agent being moved past is FAILED (not running, not completed)."""
        return TransactAction(
            "ConditionCheck",
            self._table,
            key={"execution_id": sid, "agent_name": agent_sort_key(agent)},
            condition="#s = :failed",
            names={"#s": "status"},
            values={":failed": AgentStatus.FAILED.value},
        )

    def _next_variant(
        self, kind: AgentKind, agent: str, effect: SessionEffect, exc: TransactionCancelled
    ) -> SessionEffect | None:
        """The variant to try after a refusal, when the refusal shows which one holds: the move-on (the
        agent before this one failed and the pipeline moved past it), or the over-budget end of the run."""
        rule = AGENT_RULES[kind]
        step = AGENT_STEP[agent]
        failed = "ConditionalCheckFailed"
        agent_reason, session_reason = exc.reasons[0], exc.reasons[1]
        check_failed = len(exc.reasons) > 2 and exc.reasons[2].code == failed
        old = session_reason.old_item
        if agent_reason.code == failed or check_failed or old is None:
            return None
        if old.get("status") != SessionStatus.ACTIVE.value:
            return None
        progress = session_reader(old).whole("progress", -1)
        if rule.progress == "next" and effect.moved_past is None and step >= 2 and progress == step - 2:
            previous = AGENTS[step - 2]
            if old.get("current_agent") == previous and not self._policy.is_critical(previous):
                return agent_session_effect(rule, agent, self._policy, moved_past=previous)
        if effect.finished and effect.status is SessionStatus.COMPLETED:
            failures = len(old.get("failed_agents") or ()) + (1 if effect.moved_past else 0)
            expected = step - (2 if effect.moved_past else 1)
            if progress == expected and failures > self._policy.tolerated_failures:
                return agent_session_effect(
                    rule, agent, self._policy, moved_past=effect.moved_past, over_budget=True
                )
        return None

    def _classify(
        self,
        kind: AgentKind,
        /,
        *,
        sid: str,
        agent: str,
        fingerprint: Fingerprint,
        exc: TransactionCancelled,
    ) -> AgentTransition:
        """Turn a refused transition into a duplicate success or the error that explains it."""
        rule = AGENT_RULES[kind]
        step = AGENT_STEP[agent]
        exec_reason, session_reason = exc.reasons[0], exc.reasons[1]
        failed = "ConditionalCheckFailed"
        old_exec: Item | None = exec_reason.old_item if exec_reason.code == failed else None
        old_session: Item | None = session_reason.old_item if session_reason.code == failed else None
        if old_exec is not None and self._same_fingerprint(
            old_exec.get("fingerprint"), fingerprint, sid, agent
        ):
            log.info(f"agent.{kind}.duplicate", session_id=sid, agent_name=agent)
            write = current_write()
            if write is not None:  # the earlier call's item stands; nothing refers to this call's objects
                write.mark_unused()
            return AgentTransition(
                execution_id=sid,
                agent_name=agent,
                status=execution_reader(old_exec).enum(AgentStatus, "status"),
                session_status=session_reader(old_session).enum(SessionStatus, "status")
                if old_session
                else SessionStatus.ACTIVE,
                progress=session_reader(old_session).whole("progress") if old_session else step - 1,
                at=self._clock(),
                duplicate=True,
            )
        if len(exc.reasons) > 2 and exc.reasons[2].code == failed:
            previous = AGENTS[step - 2]
            state = (exc.reasons[2].old_item or {}).get("status", "not started")
            raise InvalidTransitionError(
                f"cannot {kind} {agent} of {sid!r}: the agent before it, {previous}, is {state}; it must "
                "complete, or fail, before the run moves on",
                current=exc.reasons[2].old_item,
            )
        if session_reason.code == failed and old_session is None:
            raise SessionNotFoundError(
                f"no pipeline session {sid!r}: create the session first (save_pipeline_session); an "
                "execution_id is the session_id of its run (see docs/data-model.md)"
            )
        if rule.fenced and old_session is not None and session_reason.code == failed:
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
        agent_refused = exec_reason.code == failed and (
            old_exec is None or old_exec.get("status") not in {s.value for s in rule.agent_from}
        )
        if old_session is not None and not agent_refused:
            raise self._session_refusal(rule.kind, agent, sid, old_session)
        if agent_refused:
            allowed = " or ".join(
                "not started" if s is AgentStatus.PENDING else s.value for s in rule.agent_from
            )
            state = old_exec["status"] if old_exec else "not started"
            raise InvalidTransitionError(
                f"cannot {kind} {agent} of {sid!r}: it is {state}, and {kind} is legal only when it "
                f"is {allowed}",
                current=old_exec,
            )
        raise ConflictError(f"{kind} {agent} of {sid!r} was refused: {exc}")  # pragma: no cover

    def _session_refusal(self, kind: AgentKind, agent: str, sid: str, old: Item) -> InvalidTransitionError:
        rule = AGENT_RULES[kind]
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

    # --- helpers --------------------------------------------------------------------------------------

    def _address(self, session_id: str, agent_name: str, *, existing: bool = False) -> tuple[str, str]:
        return check.identifier("session_id", session_id, existing=existing), check.agent(agent_name)

    def _encode_input(
        self, value: Any, sid: str, agent: str, *, lossy: bool = False
    ) -> _codec.EncodedPayload:
        """An input with earlier COMPLETED outputs of the run stored as references (`_inputs`), sealed when
        any sealed payload of an earlier agent can be inside it (`_seals_input`)."""
        raw, original, warnings = _inputs.substitute(
            value,
            self._known.of(sid),
            field="input_data",
            lossy=lossy,
            encoders=self._layer.config.encoders,
        )
        encoded = _codec.store_json(
            raw,
            field="input_data",
            object_key=f"{sid}/{agent}",
            context=execution_context(sid, agent),
            layer=self._layer,
            warnings=warnings,
            seal=self._seals_input(agent),
        )
        return dataclasses.replace(encoded, digest=original) if original else encoded

    def _seals_input(self, agent: str) -> bool:
        """An accumulated input carries the request and every earlier output, in any shape the orchestrator
        gives it (whole, promoted keys, reworded): so it is sealed when its own field is configured sealed
        or when any earlier agent's input or output is — a sealed value is sealed wherever it is stored."""
        config = self._layer.config
        return any(
            config.should_encrypt(name, earlier)
            for earlier in AGENTS[: AGENT_STEP[agent]]
            for name in ("input_data", "output_data")
            if earlier != agent or name == "input_data"
        )

    def _encode(
        self, value: Any, field: str, sid: str, agent: str, *, lossy: bool = False
    ) -> _codec.EncodedPayload:
        return _codec.encode(
            value,
            field=field,
            object_key=f"{sid}/{agent}",
            context=execution_context(sid, agent),
            layer=self._layer,
            lossy=lossy,
        )

    @staticmethod
    def _extras(*, retry_count: int | None, project_id: str | None) -> dict[str, Any]:
        sets: dict[str, Any] = {}
        if retry_count is not None:
            sets["retry_count"] = check.whole("retry_count", retry_count, low=0, high=1000)
        if project_id is not None:
            sets["project_id"] = check.identifier("project_id", project_id)
        return sets

    def _fingerprint(
        self, kind: str, sid: str, agent: str, *parts: _codec.EncodedPayload | str
    ) -> Fingerprint:
        """Digest of a transition and its payloads' JSON. Sealed when a payload is: a digest of a sealed
        payload stored in clear would let anyone who can read the table confirm a guess of its content."""
        digest = hashlib.sha256(f"{kind}|{agent}|".encode())
        sealed = False
        for part in parts:
            if isinstance(part, _codec.EncodedPayload):
                digest.update(part.digest.encode())
                sealed = sealed or part.sealed
            else:
                digest.update(part.encode())
        clear = digest.hexdigest()[:32]
        if not sealed:
            return Fingerprint(clear, clear)
        aad = execution_context(sid, agent).aad("fingerprint")
        return Fingerprint(self._layer.cipher.seal(clear.encode(), aad, field="fingerprint"), clear)

    def _same_fingerprint(self, stored: Any, new: Fingerprint, sid: str, agent: str) -> bool:
        if isinstance(stored, str):
            return stored == new.clear
        if isinstance(stored, bytes | bytearray):
            aad = execution_context(sid, agent).aad("fingerprint")
            try:
                return self._layer.cipher.open(bytes(stored), aad, field="fingerprint").decode() == new.clear
            except PayloadIntegrityError:
                return False
        return False

    def _from_item(self, item: Item, *, load_payloads: bool) -> AgentExecution:
        """The one mapping of an agent item to its model (MalformedItemError if the item is unreadable)."""
        read = execution_reader(item)
        sid = read.text("execution_id")
        agent = read.text("agent")
        if agent not in AGENT_STEP:
            raise read.malformed("agent", f"is {agent[:40]!r}, which is not an agent")

        def payload(name: str) -> Any:
            if not load_payloads:
                return None
            context = execution_context(sid, agent)
            return _codec.decode(item.get(name), field=name, context=context, layer=self._layer)

        return AgentExecution(
            execution_id=sid,
            agent_name=agent,
            step=read.whole("step"),
            status=read.enum(AgentStatus, "status"),
            project_id=read.text("project_id", None),
            start_time=read.moment("start_time", None),
            end_time=read.moment("end_time", None),
            input_data=payload("input_data"),
            output_data=payload("output_data"),
            error_message=read.text("error_message", None),
            retry_count=read.whole("retry_count", 0),
            input_bytes=read.whole("input_bytes", 0),
            output_bytes=read.whole("output_bytes", 0),
            last_error=read.text("last_error", None),
            input_location=_codec.describe(item.get("input_data")),
            output_location=_codec.describe(item.get("output_data")),
        )


def execution_reader(item: Item) -> ItemReader:
    """Typed reads of an agent item (its errors name the run and the agent's sort key)."""
    return ItemReader(item, AGENT_EXECUTIONS.logical_name, ("execution_id", "agent_name"))


def execution_context(session_id: str, agent: str) -> _codec.PayloadContext:
    """Where an agent's payloads live (the associated data of sealed input/output)."""
    return _codec.PayloadContext(AGENT_EXECUTIONS.logical_name, session_id, agent)


@dataclass(frozen=True)
class Fingerprint:
    """A transition's digest: `stored` on the item (sealed when its payload is), `clear` to compare."""

    stored: str | bytes
    clear: str
