"""The never-harm mode's memory: writes a store problem kept from landing, retried in the background.

`PipelineRun` (in its default `on_store_error="defer"` mode) puts every state call under a time budget. A
call that runs out of it, or that the store refuses for a reason a later try may not meet (throttled,
unreachable, timed out, access denied, a missing table), becomes a `PendingWrite` in its run's backlog, and
the run goes on. One drainer task per run retries the backlog strictly in order — a later transition of a
run is never sent while an earlier one is pending; while a run has a backlog, its new writes join the end of
it instead of going to the store — with exponential backoff, until each write lands or is given up.

The memory held is bounded for the whole process (`DeferPolicy.max_pending_bytes`, `max_pending_writes`):
a write that would exceed it is lost at once. What is lost is counted (`DeferredWrites.lost`, the run's
`writes_lost`), recorded as the `state_writes_lost` metric and logged once per run.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from tdev_state.exceptions import StateError, StorageError, ValidationError
from tdev_state.log import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class DeferPolicy:
    """How long one state call may hold up the orchestrator, and how much a store outage may cost in memory.

    A hung or unreachable store adds at most `call_budget_seconds` to the run whose call first meets it:
    from then on (`DeferredWrites.store_suspect`) every run's writes join their backlogs without waiting,
    until a write lands again. So the delay per agent is at most one budget, and in a whole outage one
    budget per process — not per call (T-Developer's loop makes two or three calls per agent attempt).
    The backlog of the whole process holds at most `max_pending_bytes` of payload (its JSON size; 64 MiB)
    and `max_pending_writes` writes (10,000); a write is given up `give_up_after_seconds` (15 min) after
    it was first tried.
    """

    call_budget_seconds: float = 2.0
    max_pending_bytes: int = 64 * 1024 * 1024
    max_pending_writes: int = 10_000
    give_up_after_seconds: float = 900.0
    first_backoff_seconds: float = 0.5
    max_backoff_seconds: float = 30.0

    def __post_init__(self) -> None:
        for name in ("call_budget_seconds", "give_up_after_seconds", "first_backoff_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 86_400:
                raise ValidationError(f"DeferPolicy.{name} must be a number of seconds in (0, 86400]")
        if self.max_backoff_seconds < self.first_backoff_seconds:
            raise ValidationError("DeferPolicy.max_backoff_seconds must be >= first_backoff_seconds")
        for name in ("max_pending_bytes", "max_pending_writes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValidationError(f"DeferPolicy.{name} must be a whole number >= 0")


#: What `Backlogged.alternative` answers for a refusal that a later try may not meet: keep the write.
RETRY: Any = object()


@dataclass(eq=False)
class PendingWrite:
    """One state call of a run: `method(session_id, *args, **kwargs)` on the blocking client."""

    what: str
    agent: str | None
    method: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: Called with the result once the write landed (late or not).
    landed: Callable[[Any], None] | None = None
    #: An alternative write for a refusal (a duplicate id, a payload that cannot be stored), or None.
    refused: Callable[[StateError], PendingWrite | None] | None = None
    size: int = 0
    since: float = 0.0
    #: The first try, still running in its thread after the budget ran out: awaited before any retry, so
    #: the write is never sent twice at once.
    in_flight: asyncio.Future[Any] | None = None

    def call(self, session_id: str) -> Any:
        return self.method(session_id, *self.args, **self.kwargs)

    def keep(self) -> PendingWrite:
        """Snapshot the payloads (the orchestrator mutates its pipeline_data after the call) and size them."""
        self.kwargs = {name: _snapshot(value) for name, value in self.kwargs.items()}
        self.size = _json_size(self.kwargs)
        self.since = self.since or time.monotonic()
        return self


def _snapshot(value: Any) -> Any:
    if isinstance(value, str | int | float | bool | None):
        return value
    try:
        return copy.deepcopy(value)
    except Exception:  # an object that cannot be copied (a lock, a client): keep it as it is
        return value


def _json_size(value: Any) -> int:
    try:
        return len(json.dumps(value, default=str, ensure_ascii=False).encode("utf-8", "replace"))
    except Exception:  # circular, or a default that raises: count it at a flat rate
        return 64 * 1024


class Backlogged(Protocol):
    """What the drainer needs of a run (PipelineRun)."""

    session_id: str
    backlog: deque[PendingWrite]

    def alternative(self, write: PendingWrite, error: StateError) -> PendingWrite | None: ...

    def lose(self, write: PendingWrite, error: BaseException | str) -> None: ...


class DeferredWrites:
    """The deferred writes of a process (one per state client): budget, drainers and counters.

    Counters operators read: `deferred` (writes that missed the budget or were refused for a transient
    reason), `landed_late` (of those, written later), `lost` (given up: also the `state_writes_lost`
    metric), `pending_writes` / `pending_bytes` (held now).
    """

    def __init__(self, policy: DeferPolicy | None = None, *, threads: int = 2) -> None:
        self.policy = policy or DeferPolicy()
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tdev-state-deferred")
        self._drainers: dict[int, asyncio.Task[None]] = {}
        self.deferred = 0
        self.landed_late = 0
        self.lost = 0
        self.pending_writes = 0
        self.pending_bytes = 0
        #: The store failed a call or ran out of the budget and has not answered since: new writes of every
        #: run join their backlogs at once instead of each waiting out the budget again (a circuit breaker,
        #: closed again by the first write that lands).
        self.store_suspect = False

    def defer(self, run: Backlogged, write: PendingWrite) -> None:
        """Append `write` to its run's backlog (within the budget, else it is lost) and drain it."""
        if write.in_flight is None or not write.size:
            write.keep()
        over = (
            self.pending_writes + 1 > self.policy.max_pending_writes
            or self.pending_bytes + write.size > self.policy.max_pending_bytes
        )
        if over:
            if write.in_flight is not None:
                write.in_flight.add_done_callback(_consume)
            run.lose(
                write,
                f"the deferred-write budget is full ({self.pending_writes} writes, {self.pending_bytes} "
                f"bytes held; DeferPolicy.max_pending_writes / max_pending_bytes)",
            )
            return
        self.deferred += 1
        self.pending_writes += 1
        self.pending_bytes += write.size
        run.backlog.append(write)
        key = id(run)
        if key not in self._drainers:
            task = asyncio.get_running_loop().create_task(self._drain(run))
            self._drainers[key] = task
            task.add_done_callback(lambda _: self._drainers.pop(key, None))

    async def flush(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 - a bool, not a raise
        """Wait until every backlog is empty (landed or lost); False if `timeout` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._drainers:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            await asyncio.wait(list(self._drainers.values()), timeout=left)
        return True

    def close(self) -> None:
        """Stop the drainers (what is still pending is lost with the process) and the thread pool."""
        for task in list(self._drainers.values()):
            task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _release(self, run: Backlogged) -> PendingWrite:
        write = run.backlog.popleft()
        self.pending_writes -= 1
        self.pending_bytes -= write.size
        return write

    async def _drain(self, run: Backlogged) -> None:
        """Send the run's backlog in order; survive any single bad write (count it, log it, go on)."""
        loop = asyncio.get_running_loop()
        backoff = self.policy.first_backoff_seconds
        while run.backlog:
            write = run.backlog[0]
            try:
                if write.in_flight is not None:
                    pending, write.in_flight = write.in_flight, None
                    result = await pending
                else:
                    result = await loop.run_in_executor(self._executor, write.call, run.session_id)
            except StateError as exc:
                alternative = run.alternative(write, exc)
                if alternative is RETRY:
                    self.store_suspect = True
                    if time.monotonic() - write.since > self.policy.give_up_after_seconds:
                        run.lose(self._release(run), exc)
                        continue
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.policy.max_backoff_seconds)
                    continue
                self._release(run)
                if alternative is None:
                    run.lose(write, exc)
                else:
                    alternative.since, alternative.size = write.since, write.size
                    run.backlog.appendleft(alternative)
                    self.pending_writes += 1
                    self.pending_bytes += alternative.size
                continue
            except Exception as exc:  # a bug below us: this write is lost, the others still go
                run.lose(self._release(run), exc)
                continue
            self._release(run)
            self.landed_late += 1
            self.store_suspect = False
            backoff = self.policy.first_backoff_seconds
            if write.landed is not None:
                with contextlib.suppress(Exception):
                    write.landed(result)


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned in-flight call's outcome, so asyncio does not report it as never retrieved."""
    if not future.cancelled():
        future.exception()


def is_transient(error: StateError) -> bool:
    """A refusal a later try may not meet: the store throttled, unreachable, timed out, or misconfigured."""
    return isinstance(error, StorageError)
