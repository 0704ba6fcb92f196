"""Agent executions: start, complete, fail, retry and interrupt an agent, each together with its session.

Each transition is one row of `rules.AGENT_RULES`, applied by the one writer (`writer.TransitionWriter`) as
an `agent_steps.AgentStep`: one TransactWriteItems of the agent's item and the session item. Conditions are
on the state each transition changes (agent status; session status and progress), which makes concurrent
callers serialize: exactly one wins, the others get ConflictError, and no read is needed before the write.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tdev_state import validate as check
from tdev_state.config import StateConfig
from tdev_state.exceptions import ExecutionNotFoundError, PayloadIntegrityError
from tdev_state.log import get_logger
from tdev_state.models import AGENT_STEP, AGENTS, AgentExecution, AgentStatus, AgentTransition
from tdev_state.payloads import (
    EncodedPayload,
    KnownOutputs,
    output_references,
    resolve_outputs,
    substitute_outputs,
)
from tdev_state.runs.agent_steps import AgentStep, PayloadThunk
from tdev_state.runs.records import execution_context, execution_from_item
from tdev_state.runs.rules import AgentKind, agent_sort_key
from tdev_state.runs.writer import TransitionWriter
from tdev_state.storage import Item

log = get_logger(__name__)

_UNSET: Any = object()


class ExecutionStore:
    """Agent items in `t-developer-{env}-agent-executions` (execution_id = the run's session_id)."""

    def __init__(self, writer: TransitionWriter, clock: Callable[[], datetime]) -> None:
        layer = writer.layer
        self._writer = writer
        self._layer = layer
        self._table = layer.tables.executions
        self._sessions = layer.tables.sessions
        self._clock = clock
        self._liveness = writer.liveness
        self._policy = layer.config.run_policy
        self._known = KnownOutputs()

    # --- transitions ----------------------------------------------------------------------------------

    def start(
        self,
        session_id: str,
        agent_name: str,
        *,
        input_data: Any = None,
        project_id: str | None = None,
        lossy: bool = False,
        agent_version: Mapping[str, str] | None = None,
    ) -> AgentTransition:
        """Mark the next agent RUNNING with its input and point the session at it.

        `lossy` (for every transition that stores a payload): a value with no exact stored form (NaN, an
        object without a JSON form, two keys that would merge…) is stored in its marked lossy form and
        listed in the returned `warnings`, instead of refusing the call (ValidationError, nothing written).
        `agent_version`: which code, model and prompt make this attempt (`validate.agent_version`), kept
        with it on the agent item (`AgentExecution.agent_version`; `tdev_state.diff.mixed_versions`).
        """
        sid, agent = self._address(session_id, agent_name)
        sets: dict[str, Any] = {}
        if project_id is not None:
            sets["project_id"] = check.identifier("project_id", project_id)
        if agent_version is not None:
            sets["agent_version"] = check.agent_version(agent_version)
        payloads: dict[str, PayloadThunk] = {
            "input_data": lambda: self._encode_input(input_data, sid, agent, lossy=lossy)
        }
        return self._apply("start", sid, agent, sets=sets, payloads=payloads)

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
        payloads: dict[str, PayloadThunk] = {
            "output_data": lambda: self._encode(output_data, "output_data", sid, agent, lossy=lossy)
        }
        if input_data is not _UNSET:
            payloads["input_data"] = lambda: self._encode_input(input_data, sid, agent, lossy=lossy)
        return self._apply("complete", sid, agent, sets=sets, payloads=payloads)

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
        payloads: dict[str, PayloadThunk] = {}
        if output_data is not None:
            payloads["output_data"] = lambda: self._encode(
                output_data, "output_data", sid, agent, lossy=lossy
            )
        if input_data is not _UNSET:
            payloads["input_data"] = lambda: self._encode_input(input_data, sid, agent, lossy=lossy)
        return self._apply("fail", sid, agent, sets=sets, payloads=payloads, extra=(message,), error=message)

    def retry(
        self,
        session_id: str,
        agent_name: str,
        *,
        input_data: Any = _UNSET,
        lossy: bool = False,
        agent_version: Mapping[str, str] | None = None,
    ) -> AgentTransition:
        """Run a FAILED agent again: RUNNING, retry_count + 1, the session ACTIVE at this agent again.

        Legal while no later agent has started (the orchestrator retries at once, in process).
        """
        sid, agent = self._address(session_id, agent_name)
        # The attempt's own version, or none: an earlier attempt's never stands for this one's output.
        sets: dict[str, Any] = {
            "agent_version": check.agent_version(agent_version) if agent_version is not None else None
        }
        payloads: dict[str, PayloadThunk] = {}
        if input_data is not _UNSET:
            payloads["input_data"] = lambda: self._encode_input(input_data, sid, agent, lossy=lossy)
        # Every retry is a new attempt, so its fingerprint is unique: a repeat is a second retry.
        return self._apply("retry", sid, agent, sets=sets, payloads=payloads, extra=(str(uuid.uuid4()),))

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
        if not any(output_references(e.input_data) for e in run):
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
        wanted = set(output_references(execution.input_data))
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

        return dataclasses.replace(execution, input_data=resolve_outputs(execution.input_data, output_of))

    def _apply(
        self,
        kind: AgentKind,
        sid: str,
        agent: str,
        *,
        sets: dict[str, Any],
        payloads: dict[str, PayloadThunk],
        extra: tuple[str, ...] = (),
        error: str | None = None,
        claim: tuple[int, str] | None = None,
    ) -> AgentTransition:
        """Apply one row of AGENT_RULES to the agent item and its session (`AgentStep`, by the writer)."""
        step = AgentStep(
            self, kind, sid, agent, sets=sets, payloads=payloads, extra=extra, error=error, claim=claim
        )
        return self._writer.apply(step)

    # --- helpers --------------------------------------------------------------------------------------

    def _address(self, session_id: str, agent_name: str, *, existing: bool = False) -> tuple[str, str]:
        return check.identifier("session_id", session_id, existing=existing), check.agent(agent_name)

    def _encode_input(self, value: Any, sid: str, agent: str, *, lossy: bool = False) -> EncodedPayload:
        """An input with earlier COMPLETED outputs of the run stored as references (`payloads`), sealed when
        any sealed payload of an earlier agent can be inside it (`_seals_input`)."""
        raw, original, warnings = substitute_outputs(
            value,
            self._known.of(sid),
            field="input_data",
            lossy=lossy,
            encoders=self._layer.config.encoders,
        )
        encoded = self._writer.encode_json(
            raw,
            field="input_data",
            object_key=f"{sid}/{agent}",
            context=execution_context(sid, agent),
            warnings=warnings,
            seal=self._seals_input(agent),
        )
        return dataclasses.replace(encoded, digest=original) if original else encoded

    def _seals_input(self, agent: str) -> bool:
        """An accumulated input carries the request and every earlier output, in any shape the orchestrator
        gives it (whole, promoted keys, reworded): so it is sealed when its own field is configured sealed
        or when any earlier agent's input or output is — a sealed value is sealed wherever it is stored."""
        return input_sealed(self._layer.config, agent)

    def _encode(self, value: Any, field: str, sid: str, agent: str, *, lossy: bool = False) -> EncodedPayload:
        return self._writer.encode(
            value,
            field=field,
            object_key=f"{sid}/{agent}",
            context=execution_context(sid, agent),
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

    def _fingerprint(self, kind: str, sid: str, agent: str, *parts: EncodedPayload | str) -> Fingerprint:
        """Digest of a transition and its payloads' JSON. Sealed when a payload is: a digest of a sealed
        payload stored in clear would let anyone who can read the table confirm a guess of its content."""
        digest = hashlib.sha256(f"{kind}|{agent}|".encode())
        sealed = False
        for part in parts:
            if isinstance(part, EncodedPayload):
                digest.update(part.digest.encode())
                sealed = sealed or part.sealed
            else:
                digest.update(part.encode())
        clear = digest.hexdigest()[:32]
        if not sealed:
            return Fingerprint(clear, clear)
        aad = execution_context(sid, agent).aad("fingerprint")
        return Fingerprint(self._layer.payloads.cipher.seal(clear.encode(), aad, field="fingerprint"), clear)

    def _same_fingerprint(self, stored: Any, new: Fingerprint, sid: str, agent: str) -> bool:
        if isinstance(stored, str):
            return stored == new.clear
        if isinstance(stored, bytes | bytearray):
            aad = execution_context(sid, agent).aad("fingerprint")
            try:
                opened = self._layer.payloads.cipher.open(bytes(stored), aad, field="fingerprint")
                return opened.decode() == new.clear
            except PayloadIntegrityError:
                return False
        return False

    def _from_item(self, item: Item, *, load_payloads: bool) -> AgentExecution:
        return execution_from_item(item, self._layer, load_payloads=load_payloads)


def input_sealed(config: StateConfig, agent: str) -> bool:
    """Is `agent`'s accumulated input sealed: its own field is configured sealed, or any earlier agent's
    input or output is (see `ExecutionStore._seals_input`)."""
    return any(
        config.should_encrypt(name, earlier)
        for earlier in AGENTS[: AGENT_STEP[agent]]
        for name in ("input_data", "output_data")
        if earlier != agent or name == "input_data"
    )


@dataclass(frozen=True)
class Fingerprint:
    """A transition's digest: `stored` on the item (sealed when its payload is), `clear` to compare."""

    stored: str | bytes
    clear: str
