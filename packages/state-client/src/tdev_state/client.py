"""The state client: a sync facade and an async facade over the same stores.

The async API runs each call on a small dedicated thread pool (`async_threads`, 2 by default): boto3 is
blocking, the pool keeps that off the event loop, and few threads leave the GIL to the loop. Every async
method is the sync method run there, so the two APIs cannot drift apart, and no async call is secretly
synchronous.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import boto3

from tdev_state.config import StateConfig
from tdev_state.exceptions import ConfigurationError
from tdev_state.layer import DynamoLayer
from tdev_state.models import utcnow
from tdev_state.runs.agents import ExecutionStore
from tdev_state.runs.claims import ClaimStore
from tdev_state.runs.policy import LivenessStamps
from tdev_state.runs.projects import ProjectStore
from tdev_state.runs.sessions import SessionStore
from tdev_state.runs.writer import TransitionWriter
from tdev_state.tables import create_tables

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_s3 import S3Client

P = ParamSpec("P")
R = TypeVar("R")


class StateClient:
    """Sessions, agent executions and user projects of one environment (blocking API).

    Create one per process and share it across threads; clients may be injected for tests.
    """

    def __init__(
        self,
        config: StateConfig | None = None,
        *,
        layer: DynamoLayer | None = None,
        session: boto3.session.Session | None = None,
        dynamodb: DynamoDBClient | None = None,
        s3: S3Client | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if layer is None:
            layer = DynamoLayer(config or StateConfig.from_env(), session=session, dynamodb=dynamodb, s3=s3)
        self.layer = layer
        self.config = layer.config
        liveness = LivenessStamps(timedelta(seconds=layer.config.liveness_interval_seconds))
        #: The one writer of the run lifecycle, shared by the stores that apply its transitions.
        self._writer = writer = TransitionWriter(layer, liveness)
        self.sessions = SessionStore(writer, clock)
        self.executions = ExecutionStore(writer, clock)
        self.projects = ProjectStore(layer, clock)
        #: Recovery claims (leases and fencing tokens): the recovery worker's writes to sessions.
        self.claims = ClaimStore(writer, clock)
        self.clock = clock

    def on_transition(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call `listener(session_id)` after each transition this client applies (on the writing thread; keep
        it short). Returns the function that removes it. A listener that raises is logged and never fails the
        transition. `tdev_state.events` uses it to show this process's own writes at once."""
        self._writer.listeners.append(listener)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._writer.listeners.remove(listener)

        return remove

    def create_tables(self) -> list[str]:
        """Create this environment's tables if missing (LocalStack and tests; infra does it in AWS)."""
        return create_tables(self.layer)

    def close(self) -> None:
        """Close the HTTP connection pools."""
        self.layer.dynamodb.close()
        if self.layer.payloads.s3 is not None:
            self.layer.payloads.s3.close()

    def __enter__(self) -> StateClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _off_loop(
    method: Callable[Concatenate[Any, P], R],
) -> Callable[Concatenate[_AsyncStore, P], Awaitable[R]]:
    """The async twin of a store method: the same call, run on the client's thread pool."""

    async def run(self: _AsyncStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        bound = functools.partial(getattr(self._store, method.__name__), *args, **kwargs)
        try:
            future: asyncio.Future[R] = asyncio.get_running_loop().run_in_executor(self._executor, bound)
        except RuntimeError:  # the executor was shut down by aclose()
            raise ConfigurationError("this AsyncStateClient is closed (aclose()); create a new one") from None
        return await future

    run.__name__ = method.__name__
    run.__qualname__ = method.__qualname__
    run.__doc__ = method.__doc__
    return run


class _AsyncStore:
    def __init__(self, store: Any, executor: ThreadPoolExecutor) -> None:
        self._store = store
        self._executor = executor


class AsyncSessions(_AsyncStore):
    """Async twin of SessionStore."""

    create = _off_loop(SessionStore.create)
    resolve = _off_loop(SessionStore.resolve)
    events = _off_loop(SessionStore.events)
    get = _off_loop(SessionStore.get)
    list_for_user = _off_loop(SessionStore.list_for_user)
    update = _off_loop(SessionStore.update)
    heartbeat = _off_loop(SessionStore.heartbeat)
    recovery_candidates = _off_loop(SessionStore.recovery_candidates)
    backlog = _off_loop(SessionStore.backlog)
    failed_sessions = _off_loop(SessionStore.failed_sessions)
    list_by_day = _off_loop(SessionStore.list_by_day)
    candidate = _off_loop(SessionStore.candidate)
    recovery_history = _off_loop(SessionStore.recovery_history)
    record_verdict = _off_loop(SessionStore.record_verdict)
    fork = _off_loop(SessionStore.fork)
    lineage = _off_loop(SessionStore.lineage)


class AsyncExecutions(_AsyncStore):
    """Async twin of ExecutionStore."""

    start = _off_loop(ExecutionStore.start)
    complete = _off_loop(ExecutionStore.complete)
    fail = _off_loop(ExecutionStore.fail)
    retry = _off_loop(ExecutionStore.retry)
    interrupt = _off_loop(ExecutionStore.interrupt)
    list = _off_loop(ExecutionStore.list)
    get = _off_loop(ExecutionStore.get)


class AsyncProjects(_AsyncStore):
    """Async twin of ProjectStore."""

    save = _off_loop(ProjectStore.save)
    get = _off_loop(ProjectStore.get)
    list_for_user = _off_loop(ProjectStore.list_for_user)
    record_download = _off_loop(ProjectStore.record_download)
    delete = _off_loop(ProjectStore.delete)


class AsyncStateClient:
    """The async API: the same operations as StateClient, awaitable, never blocking the event loop."""

    def __init__(
        self,
        client: StateClient | None = None,
        *,
        config: StateConfig | None = None,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.sync = client or StateClient(config)
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(
            max_workers=self.sync.config.async_threads, thread_name_prefix="tdev-state"
        )
        self.sessions = AsyncSessions(self.sync.sessions, self._executor)
        self.executions = AsyncExecutions(self.sync.executions, self._executor)
        self.projects = AsyncProjects(self.sync.projects, self._executor)

    @classmethod
    async def from_config(cls, config: StateConfig | None = None) -> AsyncStateClient:
        """Build the client off the event loop (creating boto3 clients reads files and takes ~50 ms)."""
        loop = asyncio.get_running_loop()
        sync = await loop.run_in_executor(None, StateClient, config)
        return cls(sync)

    async def create_tables(self) -> list[str]:
        """Async twin of StateClient.create_tables."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.sync.create_tables)

    async def aclose(self) -> None:
        """Close connections and, if we made it, the thread pool (waiting for calls in flight)."""
        if self._own_executor:
            await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)
        self.sync.close()

    async def __aenter__(self) -> AsyncStateClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
