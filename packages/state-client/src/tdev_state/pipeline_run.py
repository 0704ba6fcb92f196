"""`PipelineRun`: the adoption helper — the few lines an orchestrator wraps around each agent attempt.

    run = await PipelineRun.open(client, project_id, pipeline_type="PRODUCTION")   # once per run
    for attempt in range(retry_count + 1):                                          # the orchestrator's loop
        async with run.agent(agent_name, input_data=pipeline_data) as step:
            result = await asyncio.wait_for(agent.process(pipeline_data), timeout)
            step.complete(result.output_data, success=result.success, error=result.error)
    await run.finish(success=success, errors=errors)                                # its own verdict

Entering records the attempt (RUNNING, or a retry of the failed previous attempt); leaving records
COMPLETED with the output, or FAILED — for a result returned with `success=False` exactly as for an
exception (which is re-raised) or a timeout. While the agent works, a heartbeat keeps the run from looking
stalled. Each attempt's duration and outcome go to the metrics sink; progress goes to `on_progress` once
per agent, in the orchestrator's own WebSocket terms (`ProgressEvent.agent_id`, `.progress`, `.status`).

**Do no harm** (`on_store_error="defer"`, the default): no state error ever reaches the orchestrator.
Each state call has a time budget (`DeferPolicy.call_budget_seconds`); a call that runs out of it, or that
the store refuses for a transient reason, is retried in the background, in order per run, within a bounded
memory budget (tdev_state._deferred). A payload the store refuses is stored in a marked form instead, so a
refused write never leaves an agent RUNNING; what is finally lost is counted (`run.writes_lost`,
`DeferredWrites.lost`), recorded as the `state_writes_lost` metric and logged once per run. With
`on_store_error="raise"` (tests, tools) every store problem is raised as the `StateError` family — and is
never recorded as the agent's failure.

Run identity: `open` creates a NEW run and refuses an id that exists (`RunExistsError`, the other run
untouched); `resume` continues an existing one. In the defer mode a taken id (two double-clicked requests
in one second get the same `prod_…` id) is not an error for the user: the run is stored under
`<id>-dup-<8 hex>` (`run.session_id`; `run.requested_id` keeps the orchestrator's), and that is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import uuid
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Protocol

from tdev_state import validate as check
from tdev_state._deferred import RETRY, DeferPolicy, DeferredWrites, PendingWrite, is_transient
from tdev_state.client import AsyncStateClient
from tdev_state.exceptions import (
    InvalidTransitionError,
    PayloadTooLargeError,
    RunExistsError,
    SessionExistsError,
    StateError,
    ValidationError,
)
from tdev_state.log import get_logger
from tdev_state.models import (
    AGENT_STEP,
    AGENTS,
    AgentStatus,
    AgentTransition,
    PipelineType,
    RunPolicy,
    Session,
    SessionStatus,
)
from tdev_state.resume import ResumeRequest
from tdev_state.runs.agents import ExecutionStore
from tdev_state.runs.rules import may_move_past

log = get_logger(__name__)

StoreErrorMode = Literal["defer", "raise"]

#: Whether this client's store takes `lossy=` (a payload it cannot store exactly is stored in a marked,
#: lossy form instead of refused). Passed only when the store has it.
_LOSSY = "lossy" in inspect.signature(ExecutionStore.complete).parameters

#: What is stored in place of a payload the store refused even in its lossy form.
UNSTORED_MARK = "tdev_unstored"


class MetricsSink(Protocol):
    """What `PipelineRun` records into: `tdev_metrics.MetricsCollector` satisfies it."""

    def record(self, metric_name: str, value: float, *, agent_name: str, error: bool = False) -> None: ...


@dataclass(frozen=True)
class ProgressEvent:
    """One progress message, once per agent, in T-Developer's `ws_manager.send_progress` terms.

    `status` "processing" (progress 0) when the agent's first attempt starts; then "completed" (100) when
    an attempt succeeds, or "error" (0) after its last attempt failed (`RunPolicy.attempts`, or when the
    run moves past it or finishes). `agent_id` is the agent's place, 1..9.
    """

    session_id: str
    agent_name: str
    agent_id: int
    status: str  # "processing" | "completed" | "error"
    progress: int  # 0 | 100
    attempt: int
    seconds: float | None = None
    error: str | None = None
    #: For "error": the run policy lets the run go on past this agent (it is not critical).
    tolerated: bool = False


ProgressCallback = Callable[[ProgressEvent], Awaitable[None] | None]

_WRITES: weakref.WeakKeyDictionary[AsyncStateClient, DeferredWrites] = weakref.WeakKeyDictionary()


def deferred_writes(client: AsyncStateClient, policy: DeferPolicy | None = None) -> DeferredWrites:
    """The process's deferred writes for `client` (created at first use; `policy` applies then)."""
    writes = _WRITES.get(client)
    if writes is None:
        writes = _WRITES[client] = DeferredWrites(policy)
    return writes


class PipelineRun:
    """One run as the orchestrator drives it; create with `PipelineRun.open` or `PipelineRun.resume`."""

    def __init__(
        self,
        client: AsyncStateClient,
        session_id: str,
        *,
        metrics: MetricsSink | None = None,
        on_progress: ProgressCallback | None = None,
        heartbeat_seconds: float = 30.0,
        on_store_error: StoreErrorMode = "defer",
        defer_policy: DeferPolicy | None = None,
        variant: str | None = None,
    ) -> None:
        if on_store_error not in ("defer", "raise"):
            raise ValidationError(f"on_store_error must be 'defer' or 'raise', got {on_store_error!r:.40}")
        self.client = client
        self.session_id = check.identifier("session_id", session_id)
        #: The id the orchestrator asked for (session_id differs only for a duplicate in the defer mode).
        self.requested_id = self.session_id
        self.metrics = metrics
        self.on_progress = on_progress
        self.heartbeat_seconds = check.number("heartbeat_seconds", heartbeat_seconds, low=0.01)
        self.on_store_error: StoreErrorMode = on_store_error
        self.writes = deferred_writes(client, defer_policy)
        self.variant = check.identifier("variant", variant) if variant is not None else None
        self.policy: RunPolicy = client.sync.config.run_policy
        # A heartbeat declares the policy's heartbeat timeout as the run's window; a slower beat would let
        # recovery take the run between two beats while its agent still works (a missed or late beat too).
        if self.heartbeat_seconds > self.policy.heartbeat_timeout_seconds / 2:
            raise ValidationError(
                f"heartbeat_seconds ({self.heartbeat_seconds:g}) must be at most half the run policy's "
                f"heartbeat_timeout_seconds ({self.policy.heartbeat_timeout_seconds:g}): each beat declares "
                "that timeout as the run's window, and recovery may take a run whose window passed"
            )
        #: The latest transition this run recorded (None while its writes are deferred).
        self.last: AgentTransition | None = None
        #: This run's writes that could not be stored (counted, logged once, `state_writes_lost` metric).
        self.writes_lost = 0
        self.backlog: deque[PendingWrite] = deque()
        self._loss_logged = False
        self._defer_logged = False
        self._attempts: dict[str, int] = {}
        self._failed: dict[str, str] = {}  # agent -> error of its latest attempt, while that one failed
        self._reported: set[str] = set()
        #: A resumed run: the data to go on with (the next agent's last stored input, else the original
        #: request), and the agents that finished before as (success, seconds, output, error) — replayed,
        #: never rerun: the completed ones with their outputs, the tolerated failures as failures.
        self.resumed_input: Any = None
        self.earlier: dict[str, tuple[bool, float, Any, str | None]] = {}
        #: A resumed run's next agent and its last stored input, until that agent's first attempt here.
        self._restore: tuple[str, dict[str, Any]] | None = None

    # --- opening and ending a run ----------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        client: AsyncStateClient,
        session_id: str,
        *,
        user_id: str | None = None,
        project_name: str | None = None,
        pipeline_type: str = "SIMPLE",
        metadata: Any = None,
        **options: Any,
    ) -> PipelineRun:
        """Create a NEW run. An id that exists is refused (`RunExistsError`) in the raise mode, and stored
        under a derived id `<id>-dup-<8 hex>` (logged) in the defer mode; nothing of the other run changes.
        To continue an existing run, use `resume`."""
        run = cls(client, session_id, **options)
        # The orchestrator's constants are checked in both modes (a wrong one fails its first test run);
        # what depends on a run's data never raises in the defer mode.
        kind = check.enum(PipelineType, "pipeline_type", pipeline_type)
        fields = {"user_id": user_id, "project_name": project_name, "pipeline_type": kind}
        if run.variant is not None and (metadata is None or isinstance(metadata, dict)):
            metadata = {**(metadata or {}), "variant": run.variant}  # the A/B arm, on the run itself

        def create(sid: str, **kwargs: Any) -> Session:
            return client.sync.sessions.create(session_id=sid, **kwargs)

        def taken(error: StateError) -> PendingWrite | None:
            if isinstance(error, ValidationError | PayloadTooLargeError):
                # Run data the store refuses (metadata it cannot store, a user id the rule refuses) must not
                # cost the whole run: store it marked, then without the optional fields, as agent payloads.
                kwargs = dict(write.kwargs)
                metadata = kwargs.get("metadata")
                if metadata is not None and not (isinstance(metadata, dict) and UNSTORED_MARK in metadata):
                    kwargs["metadata"] = {UNSTORED_MARK: f"{type(error).__name__}: {error}"[:1000]}
                elif kwargs.get("user_id") is not None or kwargs.get("project_name") is not None:
                    kwargs.update(user_id=None, project_name=None)
                else:
                    return None
                log.warning("run.data_refused", session_id=run.session_id, error=str(error)[:300])
                write.kwargs = kwargs
                return PendingWrite("create (data marked)", None, create, kwargs=kwargs, refused=taken)
            if not isinstance(error, SessionExistsError):
                return None
            # The identifier rule counts UTF-8 bytes: cut the requested id so the derived one stays valid.
            stem = run.requested_id.encode("utf-8")[: check.MAX_ID_BYTES - 13].decode("utf-8", "ignore")
            run.session_id = f"{stem}-dup-{uuid.uuid4().hex[:8]}"
            log.warning(
                "run.duplicate_id",
                requested_id=run.requested_id,
                stored_as=run.session_id,
                note="a run with this id exists already (a double-clicked request?); this run is stored "
                "under the derived id and the other run is untouched",
            )
            return PendingWrite("create", None, create, kwargs=write.kwargs, refused=taken)

        # One token for this open, however often it is sent: a create that timed out here but landed is
        # recognised as this run's own when sent again, never taken for another run's (a false duplicate).
        token = uuid.uuid4().hex
        write = PendingWrite(
            "create",
            None,
            create,
            kwargs={**fields, "metadata": metadata, "request_token": token},
            refused=taken,
        )
        if run.on_store_error == "raise":
            try:
                await run._raw(write)
            except SessionExistsError:
                raise RunExistsError(
                    f"a run {session_id!r} exists already; open a new run under another id, or continue "
                    "that one with PipelineRun.resume"
                ) from None
        else:
            await run._write(write)
        return run

    @classmethod
    async def resume(
        cls,
        client: AsyncStateClient,
        session_id: str,
        *,
        request: ResumeRequest | None = None,
        **options: Any,
    ) -> PipelineRun:
        """Continue an EXISTING run (a resume from the recovery worker or the console). The raise mode
        checks that it exists (SessionNotFoundError); the next agent's first attempt here is recorded as
        a retry when that agent is FAILED, else as its start. With the worker's `request`, the run carries
        what the orchestrator goes on with: `resumed_input` and `earlier`."""
        run = cls(client, session_id, **options)
        if request is not None:
            if request.session_id != run.session_id:
                raise ValidationError(f"the resume request is for {request.session_id!r}, not {session_id!r}")
            data = request.next_input if request.next_input is not None else request.request
            run.resumed_input = data if isinstance(data, dict) else None
            if isinstance(request.next_input, dict) and UNSTORED_MARK not in request.next_input:
                run._restore = (request.next_agent, request.next_input)  # (a refused input was not stored)
            for done in request.completed:
                run.earlier[done.agent_name] = (True, 0.0, done.output_data, None)
            for agent in request.tolerated_failures:
                run.earlier[agent] = (False, 0.0, None, f"{agent} failed before the resume (tolerated)")
        if run.on_store_error == "raise":
            await client.sessions.get(run.session_id)
        return run

    async def finish(self, success: bool | None = None, errors: Sequence[str] = ()) -> Session | None:
        """End the run with the orchestrator's own verdict (`success`, and its `errors` as the reason).

        `success=True` stores it COMPLETED with the agents whose last attempt failed listed — also when the
        run policy had stopped it (assembly failing after seven successes) — so recovery never takes it;
        `success=False` stores it FAILED. Without `success` the stored policy decides (COMPLETED with a
        failed last agent tolerated, or FAILED over the budget). Returns the stored session, or None when
        the write was deferred or lost (defer mode).
        """
        for pending in self._report_pending(except_agent=None):
            await pending
        if success is not None and not isinstance(success, bool):
            raise ValidationError(f"success must be True, False or None, got {type(success).__name__}")
        if success is None:
            write = PendingWrite("finish", None, self._finish_by_policy)
        else:
            reason = "; ".join(str(e) for e in errors)[:3900] or None
            failed = sorted(self._failed, key=AGENT_STEP.__getitem__)
            write = PendingWrite(
                "verdict",
                None,
                self.client.sync.sessions.record_verdict,
                kwargs={"success": success, "failed_agents": failed, "reason": reason},
            )
        result = await self._write(write)
        return result if isinstance(result, Session) else None

    def _finish_by_policy(self, sid: str) -> Session:
        sessions = self.client.sync.sessions
        session = sessions.get(sid)
        if session.status is not SessionStatus.ACTIVE:
            return session
        try:
            return sessions.update(sid, status="COMPLETED")
        except InvalidTransitionError as exc:
            return sessions.update(sid, status="FAILED", error_message=str(exc))

    async def session(self) -> Session:
        """The run's session as stored now (a read: StateError if the store cannot answer)."""
        return await self.client.sessions.get(self.session_id)

    def agent(self, agent_name: str, *, input_data: Any = None) -> AgentStep:
        """One attempt of one agent, as an async context manager."""
        return AgentStep(self, check.agent(agent_name), input_data)

    # --- writes: raised, or deferred -------------------------------------------------------------------

    async def _raw(self, write: PendingWrite) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.client._executor, write.call, self.session_id)

    async def _write(self, write: PendingWrite) -> Any:  # noqa: PLR0911 - one return per outcome
        """Run a state call. Raise mode: as it is. Defer mode: under the time budget, never raising; a
        write that misses it (or meets a transient refusal) joins the run's backlog; None then."""
        if self.on_store_error == "raise":
            result = await self._raw(write)
            self._landed(write, result)
            return result
        if self.backlog:  # an earlier write of this run is pending: keep the order
            self._defer(write, "an earlier write of this run is still pending")
            return None
        if self.writes.store_suspect:  # the store failed the last call: do not wait out the budget again
            self._defer(write, "the store failed its last call; retried in the background")
            return None
        try:
            future = asyncio.get_running_loop().run_in_executor(
                self.client._executor, write.call, self.session_id
            )
        except RuntimeError as exc:  # the client's pool is shut down
            self.lose(write, exc)
            return None
        try:
            result = await asyncio.wait_for(asyncio.shield(future), self.writes.policy.call_budget_seconds)
        except TimeoutError:
            write.in_flight = future
            self.writes.store_suspect = True
            self._defer(write, f"no answer within {self.writes.policy.call_budget_seconds} s")
            return None
        except StateError as exc:
            alternative = self.alternative(write, exc)
            if alternative is RETRY:
                self.writes.store_suspect = True
                self._defer(write, f"{type(exc).__name__}: {exc}")
                return None
            if alternative is None:
                self.lose(write, exc)
                return None
            return await self._write(alternative)
        except Exception as exc:  # a bug below us must not fail the orchestrator's run
            self.lose(write, exc)
            return None
        self.writes.store_suspect = False
        self._landed(write, result)
        return result

    def _landed(self, write: PendingWrite, result: Any) -> None:
        if write.landed is not None:
            write.landed(result)

    def _defer(self, write: PendingWrite, why: str) -> None:
        if not self._defer_logged:
            self._defer_logged = True
            log.warning(
                "run.state_writes_deferred",
                session_id=self.session_id,
                write=write.what,
                reason=why,
                note="the run goes on; its writes are retried in the background, in order",
            )
        self.writes.defer(self, write)

    def alternative(self, write: PendingWrite, error: StateError) -> PendingWrite | None:
        """What to do about a refused write: RETRY it later (transient), another write, or None (lost)."""
        if is_transient(error):
            return RETRY  # type: ignore[no-any-return]
        return write.refused(error) if write.refused is not None else None

    def lose(self, write: PendingWrite, error: BaseException | str) -> None:
        """Count a write that will never be stored; log it once per run; record the metric."""
        self.writes_lost += 1
        self.writes.lost += 1
        reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        if not self._loss_logged:
            self._loss_logged = True
            log.error(
                "run.state_writes_lost",
                session_id=self.session_id,
                write=write.what,
                reason=reason[:500],
                note="the run itself goes on; further losses of this run are counted (writes_lost, metric "
                "state_writes_lost), not logged",
            )
        self._measure("state_writes_lost", write.agent or AGENTS[0], 1.0, error=True)

    # --- agent writes ----------------------------------------------------------------------------------

    def _agent_write(
        self, kind: str, agent: str, payload: str | None, kwargs: dict[str, Any], *, fallback: str | None
    ) -> PendingWrite:
        """start / retry / complete / fail of `agent`. In the defer mode a payload the store refuses is
        replaced by a mark saying why (the transition itself still lands: never an agent left RUNNING),
        and a start refused because the agent is FAILED (a resumed run) becomes its retry."""
        store = self.client.sync.executions
        if _LOSSY and self.on_store_error == "defer":
            kwargs = {**kwargs, "lossy": True}

        def refused(error: StateError) -> PendingWrite | None:
            if isinstance(error, ValidationError | PayloadTooLargeError) and payload in kwargs:
                marked = {**kwargs, payload: {UNSTORED_MARK: f"{type(error).__name__}: {error}"[:1000]}}
                return PendingWrite(f"{kind} {agent} (payload marked)", agent, getattr(store, kind), (agent,),
                                    marked, landed=self._set_last)  # fmt: skip
            current = error.current if isinstance(error, InvalidTransitionError) else None
            if fallback and current and current.get("status") == AgentStatus.FAILED.value:
                retry_kwargs = {k: v for k, v in kwargs.items() if k in ("input_data", "lossy")}
                return self._agent_write(fallback, agent, payload, retry_kwargs, fallback=None)
            return None

        return PendingWrite(
            f"{kind} {agent}", agent, getattr(store, kind), (agent,), kwargs, landed=self._set_last,
            refused=refused,
        )  # fmt: skip

    def _set_last(self, result: Any) -> None:
        """An agent write landed — at once or late, from the backlog: keep it, and log its lossy warnings."""
        if isinstance(result, AgentTransition):
            self.last = result
            if result.warnings:
                log.warning("run.lossy_write", session_id=self.session_id, agent=result.agent_name,
                            status=result.status.value, warnings=result.warnings)  # fmt: skip

    # --- progress and metrics --------------------------------------------------------------------------

    async def _emit(self, agent: str, status: str, attempt: int, **extra: Any) -> None:
        if status != "processing":
            self._reported.add(agent)
        if self.on_progress is None:
            return
        event = ProgressEvent(
            session_id=self.requested_id,
            agent_name=agent,
            agent_id=AGENT_STEP[agent],
            status=status,
            progress=100 if status == "completed" else 0,
            attempt=attempt,
            **extra,
        )
        try:
            result = self.on_progress(event)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:  # the browser going away must not fail the agent; say so
            log.warning(
                "run.progress_failed", session_id=self.session_id, agent=agent, status=status, error=repr(exc)
            )

    def _report_pending(self, *, except_agent: str | None) -> list[Awaitable[None]]:
        """The "error" events of agents whose last attempt failed and that the run has moved past."""
        due = [a for a in self._failed if a != except_agent and a not in self._reported]
        return [
            self._emit(a, "error", self._attempts[a], error=self._failed[a], tolerated=self._tolerated(a))
            for a in due
        ]

    def _tolerated(self, agent: str) -> bool:
        return may_move_past(self.policy, agent)  # the lifecycle's own rule

    def _measure(self, metric: str, agent: str, value: float, *, error: bool) -> None:
        if self.metrics is None:
            return
        try:
            if self.variant is not None:
                self.metrics.record(metric, value, agent_name=agent, error=error, variant=self.variant)  # type: ignore[call-arg]
            else:
                self.metrics.record(metric, value, agent_name=agent, error=error)
        except Exception as exc:  # metrics are never worth failing an agent for
            log.warning("run.metric_failed", session_id=self.session_id, metric=metric, error=repr(exc))


class AgentStep:
    """An attempt in progress. Inside the block, say how it ended: `complete(output)` or
    `complete(output, success=False, error=...)` / `fail(error)` for a failure the agent returned. An
    exception (or a timeout) leaving the block is recorded as FAILED and re-raised."""

    def __init__(self, run: PipelineRun, agent: str, input_data: Any) -> None:
        self.run = run
        self.agent = agent
        self.input_data = input_data
        self.attempt = 1
        self._outcome: tuple[bool, Any, str | None] | None = None
        self._started = 0.0
        self._beat: asyncio.Task[None] | None = None
        #: The transition recorded when the block ended (None if the write was deferred or lost).
        self.transition: AgentTransition | None = None

    def complete(self, output_data: Any = None, *, success: bool = True, error: Any = None) -> None:
        """The attempt's result: COMPLETED with `output_data`, or — `success=False` — FAILED with `error`
        (the agent returned its failure), retried and counted exactly as a raised one."""
        if not isinstance(success, bool):
            raise ValidationError(f"success must be True or False, got {type(success).__name__}")
        message = None if success else (str(error) if error else "the agent returned success=False")
        self._outcome = (success, output_data, message)

    def fail(self, error: Any, output_data: Any = None) -> None:
        """The agent returned a failure (`AgentExecutionResult(success=False, error=...)`)."""
        self.complete(output_data, success=False, error=error)

    async def __aenter__(self) -> AgentStep:
        run, agent = self.run, self.agent
        self.attempt = run._attempts[agent] = run._attempts.get(agent, 0) + 1
        if run._restore is not None and run._restore[0] == agent:
            self._restore_input(run._restore[1])
            run._restore = None
        for pending in run._report_pending(except_agent=agent):
            await pending
        if self.attempt == 1:
            await run._emit(agent, "processing", 1)
            write = run._agent_write("start", agent, "input_data", {"input_data": self.input_data},
                                     fallback="retry")  # fmt: skip
        else:
            write = run._agent_write("retry", agent, "input_data", {"input_data": self.input_data},
                                     fallback=None)  # fmt: skip
        if run.on_store_error == "raise" and self.attempt == 1:
            try:
                await run._raw(write)
            except InvalidTransitionError as exc:
                if not (exc.current and exc.current.get("status") == AgentStatus.FAILED.value):
                    raise
                await run._raw(run._agent_write("retry", agent, "input_data",
                                                {"input_data": self.input_data}, fallback=None))  # fmt: skip
        else:
            await run._write(write)
        self._started = time.monotonic()
        self._beat = asyncio.create_task(self._heartbeat())
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._beat
        if exc is not None and not isinstance(exc, Exception):
            return  # cancelled or exiting: nothing to record now (recovery sees the agent RUNNING)
        run, agent = self.run, self.agent
        seconds = time.monotonic() - self._started
        forgot = exc is None and self._outcome is None
        if forgot:
            exc = ValidationError(
                f"the {agent} block ended without step.complete(output) or step.fail(error)"
            )
        if exc is None and self._outcome is not None and self._outcome[0]:
            output = self._outcome[1]
            self.transition = await run._write(
                run._agent_write("complete", agent, "output_data", {"output_data": output}, fallback=None)
            )
            run._failed.pop(agent, None)
            run._measure("agent_execution_time", agent, seconds, error=False)
            await run._emit(agent, "completed", self.attempt, seconds=seconds)
            return
        if exc is not None:
            message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            output = None
        else:
            assert self._outcome is not None
            _, output, returned = self._outcome
            message = returned or "the agent returned success=False"
        kwargs: dict[str, Any] = {"error_message": message[:4000]}
        if output is not None:
            kwargs["output_data"] = output
        self.transition = await run._write(
            run._agent_write("fail", agent, "output_data", kwargs, fallback=None)
        )
        run._failed[agent] = message
        run._reported.discard(agent)
        run._measure("agent_execution_time", agent, seconds, error=True)
        if self.attempt >= run.policy.attempts(agent):
            await run._emit(
                agent, "error", self.attempt, seconds=seconds, error=message, tolerated=run._tolerated(agent)
            )
        if forgot:
            raise exc  # type: ignore[misc]  # the block forgot complete(): say so, after recording it

    def _restore_input(self, stored: dict[str, Any]) -> None:
        """A resumed run's next agent gets exactly the input it was given live (the worker's `next_input`):
        the orchestrator's `pipeline_data` (the dict passed as `input_data`, which is also the agent's) is set
        to it in place. Replaying the finished agents would otherwise promote their stored outputs over it —
        an output that was an object live (not promoted) comes back as a dict (promoted), and the request's
        `project_type` "react" would become the output's "web_app"."""
        if isinstance(self.input_data, dict) and self.input_data is not stored:
            self.input_data.clear()
            self.input_data.update(stored)

    async def _heartbeat(self) -> None:
        run = self.run
        while True:
            await asyncio.sleep(run.heartbeat_seconds)
            if run.backlog or run.writes.store_suspect:
                continue  # the store is behind: a beat would only queue up behind the run's writes
            try:
                beat = run.client.sessions.heartbeat(run.session_id)
                await asyncio.wait_for(beat, run.writes.policy.call_budget_seconds)
            except (StateError, TimeoutError) as exc:  # a missed beat is not the agent's failure
                log.warning(
                    "run.heartbeat_failed", session_id=run.session_id, error=f"{type(exc).__name__}: {exc}"
                )


__all__ = [
    "UNSTORED_MARK",
    "AgentStep",
    "DeferPolicy",
    "DeferredWrites",
    "MetricsSink",
    "PipelineRun",
    "ProgressCallback",
    "ProgressEvent",
    "deferred_writes",
]
