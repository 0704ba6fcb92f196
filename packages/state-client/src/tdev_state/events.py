"""Live, replayable run progress: an async iterator over a run's events, shared by every watcher.

    hub = event_hub(client)                                   # one per client and event loop
    async for item in hub.watch("project_abc", after=0):     # a run's id or one of its refs
        if isinstance(item, RunEvent): ...                    # seq, kind, agent, attempt, status, times
        elif isinstance(item, RetryHint): ...                 # the store did not answer; still watching
        elif isinstance(item, Resync): ...                    # too slow: dropped; watch again after item.seq

The events are derived from what the transitions store (`tdev_state.runs.eventlog`: the session's version is
the seq; no write of its own). `watch` replays the events after `after`, then follows the run live, and
stops after the run ends (COMPLETED or ABANDONED; a FAILED run stays open — the worker may resume it, and the
stream shows the claim and the resume). An ended run replays and stops at once.

**Fan-out**: one poller per run per hub, shared by all its watchers. It reads with a consistent GetItem of
the session when the injected `PollTrigger` says — by default a `StreamTrigger`
(`tdev_state.events_stream`): when the sessions table's DynamoDB stream names the run, and at 1/s while the
table has no stream or it cannot be read —
and at once after a transition this process's own client wrote (`StateClient.on_transition`) — and Queries
the agent items only when the session's seq moved. N watchers cost the store what one costs.
Each watcher has a bounded queue: a watcher that lets it fill is dropped with a `Resync` (its position),
so a slow client never holds the poller, the others, or the pipeline. A read that fails (the store down,
throttled) sends each watcher a `RetryHint` and the poller backs off (up to `max_backoff`), never hangs.
Cancelling the consuming task (or closing the iterator) frees the watcher; the last one stops the poller (as
the last one still taking events does: a dropped watcher needs no more reads).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from tdev_state.client import AsyncStateClient
from tdev_state.events_stream import StreamTrigger, checked_async_client
from tdev_state.exceptions import NotFoundError, ValidationError
from tdev_state.log import get_logger
from tdev_state.models import RunEvent

log = get_logger(__name__)

__all__ = [
    "EventHub",
    "IntervalTrigger",
    "ManualTrigger",
    "PollTrigger",
    "Resync",
    "RetryHint",
    "RunEvent",
    "StreamItem",
    "StreamTrigger",
    "event_hub",
]


@dataclass(frozen=True)
class RetryHint:
    """The store did not answer the last poll (`reason`); the poller tries again in `after_seconds`."""

    run_id: str
    after_seconds: float
    reason: str


@dataclass(frozen=True)
class Resync:
    """This watcher fell `queue_size` events behind and was dropped; everything up to `seq` was delivered:
    watch again after `seq` (an SSE client reconnects with `Last-Event-ID: seq` by itself)."""

    run_id: str
    seq: int


StreamItem = RunEvent | RetryHint | Resync


class PollTrigger(Protocol):
    """What a poller awaits between two reads of its run: a timer, or a signal that the run changed (a
    write this process made, a DynamoDB Streams record) — injected so tests poll when they say."""

    async def wait(self, run_id: str) -> None: ...


class IntervalTrigger:
    """Poll every `seconds` (the bounded rate of a poller: one read of the session per interval)."""

    def __init__(self, seconds: float = 1.0) -> None:
        if not seconds > 0:
            raise ValidationError(f"a poll interval must be > 0 seconds, got {seconds!r}")
        self.seconds = seconds

    async def wait(self, run_id: str) -> None:
        await asyncio.sleep(self.seconds)


class ManualTrigger:
    """Poll when `fire()` is called (tests; or a host that knows a run changed). Each `fire` releases every
    poller waiting at that moment once."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait(self, run_id: str) -> None:
        await self._event.wait()


_END = object()
#: Names (ids and refs) whose run a hub remembers, oldest forgotten first: N watchers connecting to one run by
#: its ref cost one look-up, not N.
_RESOLVED_KEPT = 10_000


class _Watcher:
    """One consumer's place: its position and its queue. The queue holds the replay (however long: the run
    is already read) plus at most `size` live events not yet taken; one more and the watcher is dropped."""

    def __init__(self, after: int, size: int) -> None:
        self.position = after
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.size = size
        self.replay = 0  # replayed items still queued: not counted against `size`
        self.dropped = False

    def offer(self, item: StreamItem, *, replay: bool = False) -> None:
        """Queue `item`, or drop this watcher (a Resync at its position, then the end) when it is full."""
        if self.dropped or (isinstance(item, RunEvent) and item.seq <= self.position):
            return
        if not replay and self.queue.qsize() - self.replay >= self.size:
            self.dropped = True
            self.queue.put_nowait(Resync(item.run_id, self.position))
            self.queue.put_nowait(_END)
            return
        self.queue.put_nowait(item)
        self.replay += replay
        if isinstance(item, RunEvent):
            self.position = item.seq

    async def take(self) -> object:
        item = await self.queue.get()
        self.replay = max(0, self.replay - 1)
        return item

    def end(self) -> None:
        if not self.dropped:
            self.dropped = True
            self.queue.put_nowait(_END)


class _Poller:
    """One run's reader, shared by its watchers: the events read so far, and the watchers to feed."""

    def __init__(self, hub: EventHub, run_id: str) -> None:
        self.hub = hub
        self.run_id = run_id
        self.events: list[RunEvent] = []
        self.seq = 0
        self.ended = False
        self.read_once = False
        self.watchers: set[_Watcher] = set()
        self.task: asyncio.Task[None] | None = None
        self.reads = 0
        #: Set when this process wrote the run: poll now rather than at the next tick.
        self.wake = asyncio.Event()

    def join(self, watcher: _Watcher) -> None:
        self.watchers.add(watcher)
        for event in self.events:
            watcher.offer(event, replay=True)
        if self.ended:
            watcher.end()
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    def leave(self, watcher: _Watcher) -> None:
        self.watchers.discard(watcher)
        if not self.watchers:
            self.hub._forget(self)

    async def _run(self) -> None:
        backoff = 0.0
        first = True
        while any(not w.dropped for w in self.watchers) and not self.ended:
            if not first:
                if backoff:
                    await self.hub.sleep(backoff)
                else:
                    await self._pause()
            first = False
            try:
                backoff = await self._poll()
            except NotFoundError:  # the run is gone (or never was): nothing more can come
                self.ended = True
                for watcher in list(self.watchers):
                    watcher.end()
            except Exception as exc:  # one bad poll never ends the stream: counted, logged, retried
                backoff = min(max(backoff * 2, self.hub.first_backoff), self.hub.max_backoff)
                self.hub.failed_polls += 1
                log.warning("events.poll_failed", run_id=self.run_id, error=repr(exc)[:300])
                for watcher in list(self.watchers):
                    watcher.offer(RetryHint(self.run_id, backoff, f"{type(exc).__name__}: {exc}"[:300]))
        if not self.ended and self.hub._pollers.get(self.run_id) is self:
            # Every watcher left or was dropped (one not yet let go, a stuck connection, needs nothing more):
            # stop reading for them; a new watcher of the run starts a new poller.
            del self.hub._pollers[self.run_id]
            self.hub._untrack(self.run_id)

    async def _pause(self) -> None:
        """Until the trigger says poll, or this process wrote the run (`EventHub` listens to its client)."""
        if not self.wake.is_set():
            waits = [
                asyncio.ensure_future(self.hub.trigger.wait(self.run_id)),
                asyncio.ensure_future(self.wake.wait()),
            ]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
        self.wake.clear()

    async def _poll(self) -> float:
        self.reads += 1
        found = await self.hub.client.sessions.events(self.run_id, after=self.seq)
        replay, self.read_once = not self.read_once, True  # the first read is the run so far: a replay
        for event in found.events:
            if event.seq > self.seq:
                self.events.append(event)
                self.seq = event.seq
                for watcher in list(self.watchers):
                    watcher.offer(event, replay=replay)
        self.seq = max(self.seq, found.seq)
        if found.ended:
            self.ended = True
            for watcher in list(self.watchers):
                watcher.end()
        return 0.0


class EventHub:
    """The watchers of one process (one client, one event loop): one shared poller per watched run.

    `trigger` decides when a poller reads again (a `StreamTrigger` by default: the stream where the table
    has one and it answers, else polling at 1/s — decided and re-decided by itself); `queue_size` bounds
    each watcher's backlog (a slower watcher is dropped with `Resync`); after a failed read a poller waits
    `first_backoff`, doubling to `max_backoff` (through `sleep`, which tests replace), and sends each
    watcher a `RetryHint`.
    """

    def __init__(
        self,
        client: AsyncStateClient,
        *,
        trigger: PollTrigger | None = None,
        queue_size: int = 256,
        first_backoff: float = 1.0,
        max_backoff: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ValidationError(f"queue_size must be a whole number >= 1, got {queue_size!r}")
        if not 0 < first_backoff <= max_backoff:
            raise ValidationError("the backoffs must satisfy 0 < first_backoff <= max_backoff")
        self.client = checked_async_client(client, "EventHub")
        self.trigger: PollTrigger = trigger or StreamTrigger(client)
        self.queue_size = queue_size
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.sleep = sleep
        self.failed_polls = 0
        #: Set by `aclose`: `event_hub` then hands out a new hub, never this one (it no longer hears this
        #: process's writes, and its trigger's reader is stopped for good).
        self.closed = False
        self._pollers: dict[str, _Poller] = {}
        self._resolved: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # This process's own writes wake their run's poller at once (no wait for the next tick). Held weakly:
        # the sync client outlives short-lived hubs, and its listener must not keep each one alive for ever.
        method = weakref.WeakMethod(self._written)

        def written(run_id: str) -> None:
            alive = method()
            if alive is not None:
                alive(run_id)

        self._stop_listening = client.sync.on_transition(written)
        weakref.finalize(self, self._stop_listening)
        self._resolving: dict[str, asyncio.Future[str]] = {}

    @property
    def watched_runs(self) -> int:
        """Runs with a live poller now (each costs the store one read per poll, whatever its watchers)."""
        return len(self._pollers)

    @property
    def watchers(self) -> int:
        """Watchers attached now, across runs."""
        return sum(len(p.watchers) for p in self._pollers.values())

    async def resolve(self, id_or_ref: str) -> str:
        """The run id `id_or_ref` names (one read, then remembered: a ref never moves to another run, and a
        run id stays its own); SessionNotFoundError when none: check before streaming."""
        known = self._resolved.get(id_or_ref)
        if known is not None:
            return known
        pending = self._resolving.get(id_or_ref)
        if pending is None:  # watchers connecting at once share one look-up
            pending = asyncio.ensure_future(self.client.sessions.resolve(id_or_ref))
            self._resolving[id_or_ref] = pending
            pending.add_done_callback(functools.partial(self._resolved_one, id_or_ref))
        run_id = await asyncio.shield(pending)  # one waiter cancelled never cancels the others' look-up
        self._resolved[id_or_ref] = run_id
        while len(self._resolved) > _RESOLVED_KEPT:
            self._resolved.pop(next(iter(self._resolved)))
        return run_id

    async def watch(self, id_or_ref: str, *, after: int = 0) -> AsyncGenerator[StreamItem, None]:
        """Every event of the run after seq `after`, live until the run ends (see the module's docstring).

        Raises at the first iteration, before yielding anything: ValidationError (a bad position),
        SessionNotFoundError (no run or ref by that name), StorageUnavailableError (the store did not
        answer the look-up). Close it with `contextlib.aclosing` or by cancelling the consuming task: the
        watcher is freed at once."""
        _check_position(after)
        run_id = await self.resolve(id_or_ref)
        async with contextlib.aclosing(self.follow(run_id, after=after)) as items:
            async for item in items:
                yield item

    def _written(self, run_id: str) -> None:
        """Called on the writing thread after this client applied a transition of `run_id`."""
        loop = self._loop
        if loop is not None and run_id in self._pollers and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake, run_id)

    def _wake(self, run_id: str) -> None:
        poller = self._pollers.get(run_id)
        if poller is not None:
            poller.wake.set()

    def _resolved_one(self, name: str, _: object) -> None:
        self._resolving.pop(name, None)

    async def follow(self, run_id: str, *, after: int = 0) -> AsyncGenerator[StreamItem, None]:
        """`watch` for a run id already resolved (`resolve`): no look-up of its own. A run that vanishes
        (or never was) ends the stream."""
        _check_position(after)
        self._loop = asyncio.get_running_loop()
        poller = self._pollers.get(run_id)
        if poller is None:
            poller = self._pollers[run_id] = _Poller(self, run_id)
        watcher = _Watcher(after, self.queue_size)
        poller.join(watcher)
        try:
            while True:
                item = await watcher.take()
                if item is _END:
                    return
                assert isinstance(item, RunEvent | RetryHint | Resync)
                yield item
        finally:
            poller.leave(watcher)

    def _untrack(self, run_id: str) -> None:
        forget = getattr(self.trigger, "forget", None)  # a trigger that tracks runs stops tracking this one
        if forget is not None:
            forget(run_id)

    def _forget(self, poller: _Poller) -> None:
        if self._pollers.get(poller.run_id) is poller:
            del self._pollers[poller.run_id]
            self._untrack(poller.run_id)
        if poller.task is not None and not poller.task.done():
            poller.task.cancel()

    async def aclose(self) -> None:
        """Stop every poller (their watchers' streams end), the trigger's reader if it has one, and stop
        listening to the client's writes."""
        self.closed = True
        self._stop_listening()
        for poller in list(self._pollers.values()):
            for watcher in list(poller.watchers):
                watcher.end()
            self._forget(poller)
        close = getattr(self.trigger, "aclose", None)
        if close is not None:
            await close()


#: The shared hubs, held weakly: a hub lives while someone holds it (an app, a watch), so one made for a
#: short-lived client or event loop never pins them (a hub holds its client).
_hubs: weakref.WeakKeyDictionary[
    AsyncStateClient, weakref.WeakValueDictionary[asyncio.AbstractEventLoop, EventHub]
] = weakref.WeakKeyDictionary()


def event_hub(client: AsyncStateClient) -> EventHub:
    """The process's shared hub for `client` on the running event loop (created with the defaults; shared
    while anyone holds it — an app, a running `watch` — and freed with its listener after; a closed one is
    replaced)."""
    loop = asyncio.get_running_loop()
    checked_async_client(client, "event_hub")
    hubs = _hubs.setdefault(client, weakref.WeakValueDictionary())
    hub = hubs.get(loop)
    if hub is None or hub.closed:  # a host closed it (its shutdown): a new one for whoever comes next
        hub = hubs[loop] = EventHub(client)
    return hub


def _check_position(after: object) -> None:
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise ValidationError(f"after must be a whole number >= 0 (a seq already seen), got {after!r}")
