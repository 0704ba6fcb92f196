"""`PipelineRun`: opening, resuming and finishing a run, and its progress events (the public face is
`tdev_state.pipeline_run`, whose docstring shows the few lines an orchestrator writes)."""

from __future__ import annotations

import asyncio
import inspect
import uuid
import weakref
from collections import deque
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

from tdev_state import validate as check
from tdev_state.adoption.deferred import DeferPolicy, DeferredWrites, PendingWrite
from tdev_state.adoption.events import UNSTORED_MARK, MetricsSink, ProgressCallback, ProgressEvent
from tdev_state.adoption.step import AgentStep
from tdev_state.adoption.writes import RunWrites, StoreErrorMode
from tdev_state.client import AsyncStateClient
from tdev_state.exceptions import (
    InvalidTransitionError,
    PayloadTooLargeError,
    RefTakenError,
    RunExistsError,
    SessionExistsError,
    StateError,
    ValidationError,
)
from tdev_state.log import get_logger
from tdev_state.models import (
    AGENT_STEP,
    AgentTransition,
    PipelineType,
    RunPolicy,
    Session,
    SessionStatus,
)
from tdev_state.resume import ResumeRequest
from tdev_state.runs.refs import checked_refs
from tdev_state.runs.rules import may_move_past

log = get_logger(__name__)

_WRITES: weakref.WeakKeyDictionary[AsyncStateClient, DeferredWrites] = weakref.WeakKeyDictionary()


def deferred_writes(client: AsyncStateClient, policy: DeferPolicy | None = None) -> DeferredWrites:
    """The process's deferred writes for `client` (created at first use; `policy` applies then)."""
    writes = _WRITES.get(client)
    if writes is None:
        writes = _WRITES[client] = DeferredWrites(policy)
    return writes


class PipelineRun(RunWrites):
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
        refs: Sequence[str] = (),
        **options: Any,
    ) -> PipelineRun:
        """Create a NEW run. An id that exists is refused (`RunExistsError`) in the raise mode, and stored
        under a derived id `<id>-dup-<8 hex>` (logged) in the defer mode; nothing of the other run changes.
        To continue an existing run, use `resume`.

        `refs`: the orchestrator's own ids for the run (its API's `project_…` id), by which watchers find it
        (`sessions.resolve`, `tdev_state.events`). A ref another run holds is `RefTakenError` in the raise
        mode; in the defer mode the run is stored without its refs (logged as `run.ref_taken`): a taken ref
        never costs the run."""
        run = cls(client, session_id, **options)
        # The orchestrator's constants are checked in both modes (a wrong one fails its first test run);
        # what depends on a run's data never raises in the defer mode.
        kind = check.enum(PipelineType, "pipeline_type", pipeline_type)
        fields: dict[str, Any] = {"user_id": user_id, "project_name": project_name, "pipeline_type": kind}
        if refs:
            try:
                fields["refs"] = list(checked_refs(refs))
            except ValidationError as exc:  # the run's data: never costs the run in the defer mode
                if run.on_store_error == "raise":
                    raise
                log.warning("run.refs_refused", session_id=session_id, error=str(exc)[:300])
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
            if isinstance(error, RefTakenError):
                log.warning(
                    "run.ref_taken",
                    session_id=run.session_id,
                    error=str(error)[:300],
                    note="the run is stored without its refs; watchers find it by its own id",
                )
                write.kwargs = {k: v for k, v in write.kwargs.items() if k != "refs"}
                return PendingWrite("create (without refs)", None, create, kwargs=write.kwargs, refused=taken)
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
            stored: Session | None = await client.sessions.get(run.session_id)
        else:  # never worth failing or delaying the resume: one budgeted read, or the run goes on without
            try:
                stored = await asyncio.wait_for(
                    client.sessions.get(run.session_id), run.writes.policy.call_budget_seconds
                )
            except (StateError, TimeoutError) as exc:
                log.info("run.resume_unread", session_id=run.session_id, error=type(exc).__name__)
                stored = None
        if "variant" not in options and stored is not None:
            run.variant = _stored_variant(stored)
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

    def agent(
        self, agent_name: str, *, input_data: Any = None, agent_version: Mapping[str, str] | None = None
    ) -> AgentStep:
        """One attempt of one agent, as an async context manager. `agent_version`: which code, model and
        prompt make this attempt (kept with it; checked here, so a bad one fails at once in either mode)."""
        version = check.agent_version(agent_version) if agent_version is not None else None
        return AgentStep(self, check.agent(agent_name), input_data, agent_version=version)

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


def _stored_variant(session: Session) -> str | None:
    """The A/B arm the run was opened with (kept in its metadata by `open`), so a resumed run's metrics stay
    in their arm instead of landing unlabelled; anything unreadable there is no arm."""
    metadata = session.metadata
    variant = metadata.get("variant") if isinstance(metadata, dict) else None
    if not isinstance(variant, str):
        return None
    try:
        return check.identifier("variant", variant)
    except StateError:
        return None
