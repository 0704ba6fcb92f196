"""`PipelineRun`: the few lines an orchestrator wraps around each agent attempt.

    run = await PipelineRun.open(client, project_id, metrics=collector, on_progress=websocket_send)
    for attempt in range(retries + 1):
        try:
            async with run.agent("parser", input_data=data) as step:
                result = await asyncio.wait_for(parser.run(data), timeout)
                step.complete(result.output_data)
            break
        except Exception:
            if attempt == retries and run.last.session_status == "FAILED":
                raise  # a critical agent failed for good: the run stops

Entering records the attempt (RUNNING, or a retry of the failed previous attempt); leaving records
COMPLETED with the output, or FAILED with the exception's text (and re-raises it). While the agent works, a
heartbeat keeps the run from looking stalled (agents run up to 300 s). Each attempt's duration and outcome go
to the metrics sink (`agent_execution_time`, error flag) and to the progress callback (started / completed /
error), which is where the orchestrator's WebSocket plugs in. A failed metrics sink or callback is logged,
never allowed to fail the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from tdev_state import _validate as check
from tdev_state._log import get_logger
from tdev_state.client import AsyncStateClient
from tdev_state.exceptions import InvalidTransitionError, StateError, ValidationError
from tdev_state.models import AgentStatus, AgentTransition, Session, SessionStatus

log = get_logger(__name__)


class MetricsSink(Protocol):
    """What `PipelineRun` records into: `tdev_metrics.MetricsCollector` satisfies it."""

    def record(self, metric_name: str, value: float, *, agent_name: str, error: bool = False) -> None: ...


@dataclass(frozen=True)
class ProgressEvent:
    """One progress message for the browser: an agent started, completed (with seconds) or failed."""

    session_id: str
    agent_name: str
    event: str  # "started" | "completed" | "error"
    attempt: int
    progress: int
    seconds: float | None = None
    error: str | None = None
    #: For "error": the run went on past this failure (a non-critical agent, under the run policy).
    tolerated: bool = False


ProgressCallback = Callable[[ProgressEvent], Awaitable[None] | None]


class PipelineRun:
    """One run as the orchestrator drives it; create with `PipelineRun.open`."""

    def __init__(
        self,
        client: AsyncStateClient,
        session_id: str,
        *,
        metrics: MetricsSink | None = None,
        on_progress: ProgressCallback | None = None,
        heartbeat_seconds: float = 30.0,
    ) -> None:
        self.client = client
        self.session_id = check.identifier("session_id", session_id)
        self.metrics = metrics
        self.on_progress = on_progress
        self.heartbeat_seconds = check.number("heartbeat_seconds", heartbeat_seconds, low=0.01)
        #: The latest transition this run recorded (its session_status says whether the run stopped).
        self.last: AgentTransition | None = None

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
        """Create the run's session (or continue an existing one: a resumed run)."""
        from tdev_state.exceptions import SessionExistsError

        with contextlib.suppress(SessionExistsError):
            await client.sessions.create(
                session_id=session_id,
                user_id=user_id,
                project_name=project_name,
                pipeline_type=pipeline_type,
                metadata=metadata,
            )
        return cls(client, session_id, **options)

    async def session(self) -> Session:
        """The run's session as stored now."""
        return await self.client.sessions.get(self.session_id)

    async def finish(self) -> Session:
        """End the run as the orchestrator does after its last agent. A run whose last agent completed has
        ended already; one whose last agent failed for good is declared COMPLETED (that failure tolerated)
        when the policy's budget holds, else FAILED with the reason."""
        session = await self.session()
        if session.status is not SessionStatus.ACTIVE:
            return session
        try:
            return await self.client.sessions.update(self.session_id, status="COMPLETED")
        except InvalidTransitionError as exc:
            return await self.client.sessions.update(self.session_id, status="FAILED", error_message=str(exc))

    def agent(self, agent_name: str, *, input_data: Any = None) -> AgentStep:
        """One attempt of one agent, as an async context manager."""
        return AgentStep(self, check.agent(agent_name), input_data)

    async def _emit(self, event: ProgressEvent) -> None:
        if self.on_progress is None:
            return
        try:
            result = self.on_progress(event)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:  # the browser going away must not fail the agent
            log.warning("run.progress_failed", session_id=self.session_id, error=repr(exc))

    def _measure(self, agent: str, seconds: float, *, error: bool) -> None:
        if self.metrics is None:
            return
        try:
            self.metrics.record("agent_execution_time", seconds, agent_name=agent, error=error)
        except Exception as exc:  # metrics are never worth failing an agent for
            log.warning("run.metric_failed", session_id=self.session_id, error=repr(exc))


class AgentStep:
    """An attempt in progress. Call `complete(output)` inside the block; an exception records FAILED."""

    def __init__(self, run: PipelineRun, agent: str, input_data: Any) -> None:
        self.run = run
        self.agent = agent
        self.input_data = input_data
        self.attempt = 1
        self._output: Any = None
        self._completed = False
        self._started = 0.0
        self._beat: asyncio.Task[None] | None = None
        #: The transition recorded when the block ended.
        self.transition: AgentTransition | None = None

    def complete(self, output_data: Any = None) -> None:
        """The agent's output, recorded as COMPLETED when the block ends without an exception."""
        self._output = output_data
        self._completed = True

    async def __aenter__(self) -> AgentStep:
        executions = self.run.client.executions
        sid = self.run.session_id
        try:
            started = await executions.start(sid, self.agent, input_data=self.input_data)
        except InvalidTransitionError as exc:
            if not (exc.current and exc.current.get("status") == AgentStatus.FAILED.value):
                raise
            started = await executions.retry(sid, self.agent, input_data=self.input_data)
            self.attempt = int(exc.current.get("retry_count", 0)) + 2
        self._started = time.monotonic()
        self._beat = asyncio.create_task(self._heartbeat())
        await self.run._emit(ProgressEvent(sid, self.agent, "started", self.attempt, started.progress))
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError, StateError):
                await self._beat
        seconds = time.monotonic() - self._started
        executions = self.run.client.executions
        sid = self.run.session_id
        if exc is None and not self._completed:
            exc = ValidationError(f"the {self.agent} block ended without step.complete(output)")
        if exc is None:
            self.transition = await executions.complete(sid, self.agent, output_data=self._output)
            self.run.last = self.transition
            self.run._measure(self.agent, seconds, error=False)
            await self.run._emit(
                ProgressEvent(sid, self.agent, "completed", self.attempt, self.transition.progress, seconds)
            )
            return
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self.transition = await executions.fail(sid, self.agent, error_message=message)
        self.run.last = self.transition
        self.run._measure(self.agent, seconds, error=True)
        await self.run._emit(
            ProgressEvent(
                sid,
                self.agent,
                "error",
                self.attempt,
                self.transition.progress,
                seconds,
                error=message,
                tolerated=self.transition.tolerated,
            )
        )
        if kind is None:
            raise exc  # the block forgot complete(): say so, after recording the failure

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.run.heartbeat_seconds)
            try:
                await self.run.client.sessions.heartbeat(self.run.session_id)
            except StateError as exc:  # a missed beat is not the agent's failure; the next one may land
                log.warning("run.heartbeat_failed", session_id=self.run.session_id, error=str(exc))
