"""Agent executions: start, complete, fail and retry an agent, each together with its session.

Each transition is one TransactWriteItems of two actions — the agent's item and the session item — so an
agent is never COMPLETED while its session still points at it, or the reverse. Conditions are on the state
each transition changes (agent status; session status and progress), which makes concurrent callers
serialize: exactly one wins, the others get ConflictError, and no read is needed before the write.

Idempotency, two layers deep:
- the ClientRequestToken (fixed for the call, so botocore's own retries after a timeout are no-ops);
- a `fingerprint` stored on the agent item (the transition and a hash of its payload): when a repeated
  call is refused because its transition already happened, a matching fingerprint turns the refusal into
  a duplicate success (`AgentTransition.duplicate`) — at any distance in time, unlike the token's 10 min.
"""

from __future__ import annotations

import builtins
import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import structlog

from tdev_state import _codec
from tdev_state import _validate as check
from tdev_state._liveness import LivenessStamps
from tdev_state.dynamo import DynamoLayer, Item, TransactAction, TransactionCancelled
from tdev_state.exceptions import (
    ConflictError,
    ExecutionNotFoundError,
    InvalidTransitionError,
    PayloadIntegrityError,
    SessionNotFoundError,
)
from tdev_state.models import (
    AGENT_STEP,
    AGENTS,
    AgentExecution,
    AgentStatus,
    AgentTransition,
    SessionStatus,
    format_ts,
    parse_ts,
)
from tdev_state.schema import AGENT_EXECUTIONS

from ._sessions import recovery_shard

log = structlog.get_logger("tdev_state.executions")

Kind = Literal["start", "complete", "fail", "retry"]
_TARGET: dict[Kind, AgentStatus] = {
    "start": AgentStatus.RUNNING,
    "complete": AgentStatus.COMPLETED,
    "fail": AgentStatus.FAILED,
    "retry": AgentStatus.RUNNING,
}
_FROM: dict[Kind, str] = {
    "start": "PENDING (never started)",
    "complete": "RUNNING",
    "fail": "RUNNING",
    "retry": "FAILED",
}


def agent_sort_key(agent_name: str) -> str:
    """The stored sort key: "NN#agent", so a Query returns a run's agents in pipeline order."""
    return f"{AGENT_STEP[agent_name]:02d}#{agent_name}"


class ExecutionStore:
    """Agent items in `t-developer-{env}-agent-executions` (execution_id = the run's session_id)."""

    def __init__(self, layer: DynamoLayer, clock: Callable[[], datetime], liveness: LivenessStamps) -> None:
        self._layer = layer
        self._table = layer.tables.executions
        self._sessions = layer.tables.sessions
        self._clock = clock
        self._liveness = liveness

    # --- transitions ----------------------------------------------------------------------------------

    def start(
        self,
        session_id: str,
        agent_name: str,
        *,
        input_data: Any = None,
        project_id: str | None = None,
    ) -> AgentTransition:
        """Mark `agent_name` RUNNING with its input and point the session at it (the next agent only)."""
        sid, agent, step = self._address(session_id, agent_name)
        project = check.identifier("project_id", project_id) if project_id is not None else None
        payload = _codec.encode(
            input_data,
            field="input_data",
            object_key=f"{sid}/{agent}",
            context=execution_context(sid, agent),
            layer=self._layer,
        )
        now = self._clock()
        fingerprint = self._fingerprint("start", sid, agent, payload)
        item: dict[str, Any] = {
            "execution_id": sid,
            "agent_name": agent_sort_key(agent),
            "agent": agent,
            "step": step,
            "status": AgentStatus.RUNNING.value,
            "start_time": format_ts(now),
            "input_data": payload.value,
            "input_bytes": payload.json_bytes,
            "retry_count": 0,
            "fingerprint": fingerprint.stored,
        }
        if project:
            item["project_id"] = project
        self._set_expiry(item, now)
        exec_action = TransactAction(
            "Put",
            self._table,
            item=item,
            condition="attribute_not_exists(execution_id) OR #s = :pending",
            names={"#s": "status"},
            values={":pending": AgentStatus.PENDING.value},
        )
        refresh = self._liveness.due(sid, now)
        session_action = self._session_action(
            sid,
            step,
            now,
            extra_set=["current_agent = :agent"],
            values={":agent": agent},
            refresh_liveness=refresh,
        )
        return self._transact(
            "start",
            refreshed=refresh,
            sid=sid,
            agent=agent,
            step=step,
            now=now,
            fingerprint=fingerprint,
            actions=[exec_action, session_action],
        )

    def complete(self, session_id: str, agent_name: str, *, output_data: Any = None) -> AgentTransition:
        """Mark a RUNNING agent COMPLETED with its output and advance the session's progress to its step.

        Completing the last agent completes the session, which leaves the recovery index.
        """
        sid, agent, step = self._address(session_id, agent_name)
        payload = _codec.encode(
            output_data,
            field="output_data",
            object_key=f"{sid}/{agent}",
            context=execution_context(sid, agent),
            layer=self._layer,
        )
        now = self._clock()
        fingerprint = self._fingerprint("complete", sid, agent, payload)
        exec_action = TransactAction(
            "Update",
            self._table,
            key={"execution_id": sid, "agent_name": agent_sort_key(agent)},
            update="SET #s = :done, end_time = :now, output_data = :out, output_bytes = :n, "
            "fingerprint = :fp REMOVE error_message",
            condition="#s = :running",
            names={"#s": "status"},
            values={
                ":done": AgentStatus.COMPLETED.value,
                ":running": AgentStatus.RUNNING.value,
                ":now": format_ts(now),
                ":out": payload.value,
                ":n": payload.json_bytes,
                ":fp": fingerprint.stored,
            },
        )
        last = step == len(AGENTS)
        extra_set = ["progress = :step", "current_agent = :next"]
        values: dict[str, Any] = {":step": step, ":next": AGENTS[step] if not last else agent}
        removes: list[str] = []
        if last:
            extra_set.append("#s = :completed")
            values[":completed"] = SessionStatus.COMPLETED.value
            removes.append("recovery_shard")
            days = self._layer.config.retention_days
            if days:
                extra_set.append("expires_at = :exp")
                values[":exp"] = int((now + timedelta(days=days)).timestamp())
        refresh = not last and self._liveness.due(sid, now)
        session_action = self._session_action(
            sid, step, now, extra_set=extra_set, values=values, removes=removes, refresh_liveness=refresh
        )
        return self._transact(
            "complete",
            refreshed=refresh,
            sid=sid,
            agent=agent,
            step=step,
            now=now,
            fingerprint=fingerprint,
            actions=[exec_action, session_action],
        )

    def fail(
        self, session_id: str, agent_name: str, *, error_message: str, output_data: Any = None
    ) -> AgentTransition:
        """Mark a RUNNING agent FAILED and the session FAILED (visible to recovery after its delay)."""
        sid, agent, step = self._address(session_id, agent_name)
        message = check.error_text(error_message)
        now = self._clock()
        sets = "SET #s = :failed, end_time = :now, error_message = :err, fingerprint = :fp"
        values: dict[str, Any] = {
            ":failed": AgentStatus.FAILED.value,
            ":running": AgentStatus.RUNNING.value,
            ":now": format_ts(now),
            ":err": message,
        }
        fp_parts: list[_codec.EncodedPayload | str] = [message]
        if output_data is not None:
            payload = _codec.encode(
                output_data,
                field="output_data",
                object_key=f"{sid}/{agent}",
                context=execution_context(sid, agent),
                layer=self._layer,
            )
            sets += ", output_data = :out, output_bytes = :n"
            values.update({":out": payload.value, ":n": payload.json_bytes})
            fp_parts.append(payload)
        fingerprint = self._fingerprint("fail", sid, agent, *fp_parts)
        values[":fp"] = fingerprint.stored
        exec_action = TransactAction(
            "Update",
            self._table,
            key={"execution_id": sid, "agent_name": agent_sort_key(agent)},
            update=sets,
            condition="#s = :running",
            names={"#s": "status"},
            values=values,
        )
        session_action = self._session_action(
            sid,
            step,
            now,
            extra_set=["#s = :sfailed", "recovery_shard = :shard", "error_message = :serr"],
            values={
                ":sfailed": SessionStatus.FAILED.value,
                ":shard": recovery_shard(sid, SessionStatus.FAILED),
                ":serr": check.error_text(f"{agent}: {message}"),
            },
            refresh_liveness=True,  # FAILED's idle time counts from the failure
        )
        return self._transact(
            "fail",
            refreshed=True,
            sid=sid,
            agent=agent,
            step=step,
            now=now,
            fingerprint=fingerprint,
            actions=[exec_action, session_action],
        )

    def retry(self, session_id: str, agent_name: str) -> AgentTransition:
        """Run a FAILED agent again: RUNNING, retry_count + 1 (atomic), and the session ACTIVE again."""
        sid, agent, step = self._address(session_id, agent_name)
        now = self._clock()
        fingerprint = self._fingerprint("retry", sid, agent, str(uuid.uuid4()))
        exec_action = TransactAction(
            "Update",
            self._table,
            key={"execution_id": sid, "agent_name": agent_sort_key(agent)},
            update="SET #s = :running, start_time = :now, fingerprint = :fp "
            "REMOVE end_time, error_message ADD retry_count :one",
            condition="#s = :failed",
            names={"#s": "status"},
            values={
                ":running": AgentStatus.RUNNING.value,
                ":failed": AgentStatus.FAILED.value,
                ":now": format_ts(now),
                ":fp": fingerprint.stored,
                ":one": 1,
            },
        )
        session_action = self._session_action(
            sid,
            step,
            now,
            extra_set=["#s = :sactive", "recovery_shard = :shard", "current_agent = :agent"],
            values={
                ":sactive": SessionStatus.ACTIVE.value,
                ":shard": recovery_shard(sid, SessionStatus.ACTIVE),
                ":agent": agent,
                ":sfailed": SessionStatus.FAILED.value,
            },
            removes=["error_message"],
            from_statuses="(#s = :active OR #s = :sfailed)",
            refresh_liveness=True,
        )
        return self._transact(
            "retry",
            refreshed=True,
            sid=sid,
            agent=agent,
            step=step,
            now=now,
            fingerprint=fingerprint,
            actions=[exec_action, session_action],
        )

    # --- reads ----------------------------------------------------------------------------------------

    def list(self, execution_id: str, *, load_payloads: bool = True) -> builtins.list[AgentExecution]:
        """Every started agent of a run, in pipeline order — one (paged) consistent Query."""
        sid = check.identifier("execution_id", execution_id)
        items = self._layer.query_all(
            self._table,
            key_condition="execution_id = :id",
            values={":id": sid},
            consistent=True,
        )
        return [self._from_item(i, load_payloads=load_payloads) for i in items]

    def get(self, execution_id: str, agent_name: str, *, load_payloads: bool = True) -> AgentExecution:
        """One agent's execution, or ExecutionNotFoundError if it never started."""
        sid, agent, _ = self._address(execution_id, agent_name)
        item = self._layer.get(self._table, {"execution_id": sid, "agent_name": agent_sort_key(agent)})
        if item is None:
            raise ExecutionNotFoundError(f"agent {agent!r} of execution {sid!r} has not started")
        return self._from_item(item, load_payloads=load_payloads)

    # --- helpers --------------------------------------------------------------------------------------

    def _address(self, session_id: str, agent_name: str) -> tuple[str, str, int]:
        sid = check.identifier("session_id", session_id)
        agent = check.agent(agent_name)
        return sid, agent, AGENT_STEP[agent]

    def _set_expiry(self, item: dict[str, Any], now: datetime) -> None:
        days = self._layer.config.retention_days
        if days:
            item["expires_at"] = int((now + timedelta(days=days)).timestamp())

    def _session_action(
        self,
        sid: str,
        step: int,
        now: datetime,
        *,
        extra_set: builtins.list[str],
        values: dict[str, Any],
        removes: builtins.list[str] | None = None,
        from_statuses: str = "#s = :active",
        refresh_liveness: bool,
    ) -> TransactAction:
        sets = ["last_updated = :now", "version = version + :one", *extra_set]
        if refresh_liveness:
            sets.append("alive_at = :now")
        update = "SET " + ", ".join(sets)
        if removes:
            update += " REMOVE " + ", ".join(removes)
        return TransactAction(
            "Update",
            self._sessions,
            key={"session_id": sid},
            update=update,
            # The agent must be the next one: progress counts the completed agents before it.
            condition=f"attribute_exists(session_id) AND {from_statuses} AND progress = :prev",
            names={"#s": "status"},
            values={
                ":now": format_ts(now),
                ":one": 1,
                ":active": SessionStatus.ACTIVE.value,
                ":prev": step - 1,
                **values,
            },
        )

    def _transact(
        self,
        kind: Kind,
        /,
        *,
        sid: str,
        agent: str,
        step: int,
        now: datetime,
        fingerprint: Fingerprint,
        actions: builtins.list[TransactAction],
        refreshed: bool,
    ) -> AgentTransition:
        target = _TARGET[kind]
        try:
            self._layer.transact_write(actions, token=str(uuid.uuid4()))
        except TransactionCancelled as exc:
            return self._classify(kind, sid=sid, agent=agent, step=step, fingerprint=fingerprint, exc=exc)
        if refreshed:
            self._liveness.mark(sid, now)
        progress = step if kind == "complete" else step - 1
        if kind == "fail":
            session_status = SessionStatus.FAILED
        elif kind == "complete" and step == len(AGENTS):
            session_status = SessionStatus.COMPLETED
        else:
            session_status = SessionStatus.ACTIVE
        log.info(f"agent.{kind}", session_id=sid, agent_name=agent, progress=progress)
        return AgentTransition(
            execution_id=sid,
            agent_name=agent,
            status=target,
            session_status=session_status,
            progress=progress,
            at=now,
        )

    def _classify(
        self,
        kind: Kind,
        /,
        *,
        sid: str,
        agent: str,
        step: int,
        fingerprint: Fingerprint,
        exc: TransactionCancelled,
    ) -> AgentTransition:
        """Turn a refused transition into a duplicate success or the error that explains it."""
        exec_reason, session_reason = exc.reasons[0], exc.reasons[1]
        failed = "ConditionalCheckFailed"
        old_exec: Item | None = exec_reason.old_item if exec_reason.code == failed else None
        old_session: Item | None = session_reason.old_item if session_reason.code == failed else None
        target = _TARGET[kind]
        if old_exec is not None and self._same_fingerprint(
            old_exec.get("fingerprint"), fingerprint, sid, agent
        ):
            log.info(f"agent.{kind}.duplicate", session_id=sid, agent_name=agent)
            return AgentTransition(
                execution_id=sid,
                agent_name=agent,
                status=AgentStatus(old_exec["status"]),
                session_status=SessionStatus(old_session["status"]) if old_session else SessionStatus.ACTIVE,
                progress=int(old_session["progress"]) if old_session else step - 1,
                at=self._clock(),
                duplicate=True,
            )
        if session_reason.code == failed and old_session is None:
            raise SessionNotFoundError(
                f"no pipeline session {sid!r}: create the session first; an execution_id is the "
                "session_id of its run (see docs/data-model.md)"
            )
        if old_exec is not None and old_exec.get("status") == target.value:
            log.warning(f"agent.{kind}.conflict", session_id=sid, agent_name=agent)
            raise ConflictError(
                f"{agent} of session {sid!r} is already {target.value} by another writer; "
                "re-read the run before acting on it"
            )
        if old_session is not None:
            status, progress = old_session["status"], int(old_session["progress"])
            allowed = "ACTIVE or FAILED" if kind == "retry" else "ACTIVE"
            if status not in allowed.split(" or "):
                hint = " (retry_agent reactivates a FAILED run)" if status == "FAILED" else ""
                raise InvalidTransitionError(
                    f"cannot {kind} {agent}: session {sid!r} is {status}, not {allowed}{hint}",
                    current=old_session,
                )
            if progress != step - 1:
                expected = AGENTS[progress] if progress < len(AGENTS) else "none (all done)"
                raise InvalidTransitionError(
                    f"cannot {kind} {agent} (step {step}): the session has completed {progress} "
                    f"agent(s); agents run in order and the next one is {expected}",
                    current=old_session,
                )
        if exec_reason.code == failed:
            if old_exec is None:
                raise InvalidTransitionError(f"cannot {kind} {agent} of {sid!r}: it was never started")
            raise InvalidTransitionError(
                f"cannot {kind} {agent} of {sid!r}: it is {old_exec['status']}, and {kind} is legal "
                f"only from {_FROM[kind]}",
                current=old_exec,
            )
        raise ConflictError(f"{kind} {agent} of {sid!r} was refused: {exc}")  # pragma: no cover

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
        def payload(name: str) -> Any:
            if not load_payloads:
                return None
            context = execution_context(item["execution_id"], item["agent"])
            return _codec.decode(item.get(name), field=name, context=context, layer=self._layer)

        return AgentExecution(
            execution_id=item["execution_id"],
            agent_name=item["agent"],
            step=int(item["step"]),
            status=AgentStatus(item["status"]),
            project_id=item.get("project_id"),
            start_time=parse_ts(item["start_time"]) if item.get("start_time") else None,
            end_time=parse_ts(item["end_time"]) if item.get("end_time") else None,
            input_data=payload("input_data"),
            output_data=payload("output_data"),
            error_message=item.get("error_message"),
            retry_count=int(item.get("retry_count", 0)),
            input_bytes=int(item.get("input_bytes", 0)),
            output_bytes=int(item.get("output_bytes", 0)),
        )


def execution_context(session_id: str, agent: str) -> _codec.PayloadContext:
    """Where an agent's payloads live (the associated data of sealed input/output)."""
    return _codec.PayloadContext(AGENT_EXECUTIONS.logical_name, session_id, agent)


@dataclass(frozen=True)
class Fingerprint:
    """A transition's digest: `stored` on the item (sealed when its payload is), `clear` to compare."""

    stored: str | bytes
    clear: str
