"""`AgentStep`: one attempt of one agent, as the async context manager `PipelineRun.agent()` returns."""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tdev_state.exceptions import InvalidTransitionError, StateError, ValidationError
from tdev_state.log import get_logger
from tdev_state.models import AgentStatus, AgentTransition

if TYPE_CHECKING:
    from tdev_state.adoption.run import PipelineRun

log = get_logger(__name__)


class AgentStep:
    """An attempt in progress. Inside the block, say how it ended: `complete(output)` or
    `complete(output, success=False, error=...)` / `fail(error)` for a failure the agent returned. An
    exception (or a timeout) leaving the block is recorded as FAILED and re-raised."""

    def __init__(
        self, run: PipelineRun, agent: str, input_data: Any, *, agent_version: dict[str, str] | None = None
    ) -> None:
        self.run = run
        self.agent = agent
        self.input_data = input_data
        #: Which code, model and prompt make this attempt (stored with its start or retry).
        self.agent_version = agent_version
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
        begin: dict[str, Any] = {"input_data": self.input_data}
        if self.agent_version is not None:
            begin["agent_version"] = self.agent_version
        if self.attempt == 1:
            await run._emit(agent, "processing", 1)
            write = run._agent_write("start", agent, "input_data", begin, fallback="retry")
        else:
            write = run._agent_write("retry", agent, "input_data", begin, fallback=None)
        if run.on_store_error == "raise" and self.attempt == 1:
            try:
                await run._raw(write)
            except InvalidTransitionError as exc:
                if not (exc.current and exc.current.get("status") == AgentStatus.FAILED.value):
                    raise
                await run._raw(run._agent_write("retry", agent, "input_data", begin, fallback=None))
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
