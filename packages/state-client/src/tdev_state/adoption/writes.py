"""How a run's state calls are made: raised as they are, or under a time budget and deferred.

`RunWrites` is the half of `PipelineRun` that talks to the store. In the default defer mode no state error
reaches the orchestrator: a call that misses its budget, or meets a transient refusal, joins the run's
backlog (`tdev_state.adoption.deferred`); a payload the store refuses is stored marked instead; what is
finally lost is counted and logged once per run. In the raise mode every store problem is raised.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from typing import Any, Literal

from tdev_state.adoption.deferred import RETRY, DeferredWrites, PendingWrite, is_transient
from tdev_state.adoption.events import UNSTORED_MARK, MetricsSink
from tdev_state.client import AsyncStateClient
from tdev_state.exceptions import InvalidTransitionError, PayloadTooLargeError, StateError, ValidationError
from tdev_state.log import get_logger
from tdev_state.models import AGENTS, AgentStatus, AgentTransition
from tdev_state.runs.agents import ExecutionStore

log = get_logger(__name__)

StoreErrorMode = Literal["defer", "raise"]
#: Whether this client's store takes `lossy=` (a payload it cannot store exactly is stored in a marked,
#: lossy form instead of refused). Passed only when the store has it.
_LOSSY = "lossy" in inspect.signature(ExecutionStore.complete).parameters


class RunWrites:
    """The store side of a run: its writes, their backlog and what was lost (set up by `PipelineRun`)."""

    client: AsyncStateClient
    session_id: str
    on_store_error: StoreErrorMode
    writes: DeferredWrites
    backlog: deque[PendingWrite]
    writes_lost: int
    metrics: MetricsSink | None
    variant: str | None
    last: AgentTransition | None
    _loss_logged: bool
    _defer_logged: bool

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
                retry_kwargs = {
                    k: v for k, v in kwargs.items() if k in ("input_data", "lossy", "agent_version")
                }
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
