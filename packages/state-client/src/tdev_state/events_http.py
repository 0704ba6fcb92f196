"""A run's events over Server-Sent Events: a pure-ASGI app, `GET /runs/{id-or-ref}/events`.

Mount it in the orchestrator's FastAPI app (`app.mount("/progress", events_app(client))`: then
`GET /progress/runs/project_…/events`), or route it in Starlette (the console does). Each event is one SSE
message: `id: <seq>`, `data: <the RunEvent as JSON>` — a browser's EventSource reconnects by itself after a
drop and sends `Last-Event-ID: <seq>`, and the stream goes on after that seq with no gap and no duplicate
(`?after=<seq>` does the same for a first connection). A comment line every `heartbeat` seconds keeps
proxies from closing an idle stream. Control messages: `event: retry` (the store did not answer; a `retry:`
field tells EventSource when to reconnect if the connection drops), `event: resync` (this client fell
behind and is dropped: reconnect, and Last-Event-ID resumes it), `event: end` (the run ended; close the
EventSource, or it reconnects, replays nothing and gets `end` again).

Answers: 200 the stream; 400 a malformed Last-Event-ID or `after`; 403 the host's `authorize` hook said no;
404 no run and no ref by that name; 405 not GET; 503 with Retry-After when the store did not answer the
look-up. A client that disconnects frees its watcher at once (the run's poller stops with its last one).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from tdev_state.client import AsyncStateClient
from tdev_state.events import EventHub, IntervalTrigger, PollTrigger, Resync, RetryHint, StreamItem, event_hub
from tdev_state.events_stream import checked_async_client
from tdev_state.exceptions import NotFoundError, StateError, ValidationError
from tdev_state.log import get_logger
from tdev_state.models import RunEvent

log = get_logger(__name__)

__all__ = ["Authorize", "EventsApp", "events_app", "sse_message"]

#: The host's check, before any store read: may this request watch the run it names (an id or a ref)?
Authorize = Callable[[MutableMapping[str, Any], str], bool | Awaitable[bool]]
ClientSource = AsyncStateClient | Callable[[], AsyncStateClient]

_PATH = re.compile(r"^/runs/(?P<run>[^/]+)/events/?$")
#: A seq is a DynamoDB number that fits an int64: longer is malformed, not a position.
_MAX_SEQ_DIGITS = 18


def sse_message(item: StreamItem | None) -> bytes:
    """One SSE message for a stream item (None: the end of the run)."""
    if isinstance(item, RunEvent):
        data = json.dumps(item.to_dict(), separators=(",", ":"), default=str)
        return f"id: {item.seq}\ndata: {data}\n\n".encode()
    if isinstance(item, RetryHint):
        # The kind of failure only: the store's own text can name the AWS account and role (AccessDenied).
        reason = item.reason.partition(":")[0]
        data = json.dumps({"run_id": item.run_id, "after_seconds": item.after_seconds, "reason": reason})
        return f"retry: {int(item.after_seconds * 1000)}\nevent: retry\ndata: {data}\n\n".encode()
    if isinstance(item, Resync):
        return f"event: resync\ndata: {json.dumps({'run_id': item.run_id, 'seq': item.seq})}\n\n".encode()
    return b"event: end\ndata: {}\n\n"


class EventsApp:
    """The ASGI app (a class, so Starlette's `Route` mounts it as an app, not as a request handler)."""

    def __init__(
        self,
        client: ClientSource,
        *,
        hub: EventHub | None = None,
        authorize: Authorize | None = None,
        heartbeat: PollTrigger | None = None,
    ) -> None:
        if not callable(client):  # else the client itself, checked here rather than at the first request
            checked_async_client(client, "events_app")
        self._client = client
        self._hub = hub
        self._authorize = authorize
        self._heartbeat: PollTrigger = heartbeat or IntervalTrigger(15.0)

    def hub(self) -> EventHub:
        """The hub this app streams from (the client's shared one unless one was given); a hub its host
        closed (its shutdown) is replaced by the client's live shared one, never streamed from closed."""
        if self._hub is None or self._hub.closed:
            client = self._client if isinstance(self._client, AsyncStateClient) else self._client()
            self._hub = event_hub(client)
        return self._hub

    async def __call__(
        self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]], send: Any
    ) -> None:
        if scope.get("type") != "http":
            return
        path = str(scope.get("path", ""))
        root = str(scope.get("root_path", ""))
        if root and path.startswith(root):
            path = path[len(root) :]
        match = _PATH.match(path)
        if match is None:
            await _respond(send, 404, {"error": "not found: GET /runs/{id-or-ref}/events"})
            return
        if scope.get("method") not in ("GET", "HEAD"):
            await _respond(send, 405, {"error": "GET the events of a run"}, [(b"allow", b"GET")])
            return
        name = match.group("run")
        after = _position(scope)
        if after is None:
            await _respond(
                send, 400, {"error": "Last-Event-ID (or ?after=) must be a whole number >= 0: a seq seen"}
            )
            return
        if self._authorize is not None:
            allowed = self._authorize(scope, name)
            if inspect.isawaitable(allowed):
                allowed = await allowed
            if not allowed:
                await _respond(send, 403, {"error": "not allowed to watch this run"})
                return
        hub = self.hub()
        try:
            run_id = await hub.resolve(name)
        except StateError as exc:
            status = (
                404 if isinstance(exc, NotFoundError) else 400 if isinstance(exc, ValidationError) else 503
            )
            extra, message = [], str(exc)
            if status == 503:  # the store's own text stays in the log (it can name the account and role)
                log.warning("events.lookup_failed", name=name[:200], error=repr(exc)[:300])
                extra = [(b"retry-after", str(int(hub.first_backoff) or 1).encode())]
                message = "the store did not answer the look-up of this run; try again after Retry-After"
            await _respond(send, status, {"error": message, "kind": type(exc).__name__}, extra)
            return
        await self._stream(scope, receive, send, hub.follow(run_id, after=after))

    async def _stream(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Any,
        stream: AsyncIterator[StreamItem],
    ) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # a buffering proxy would hold the events back
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if scope.get("method") == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        # One item in hand at most: a socket that stops taking bytes stops the pump, so the watcher's own
        # bounded queue fills and drops it with `resync` (an unbounded queue here would hide the slow client).
        items: asyncio.Queue[StreamItem | None] = asyncio.Queue(maxsize=1)

        async def pump() -> None:
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                async for item in stream:
                    await items.put(item)
            await items.put(None)

        async def beat() -> None:
            while True:
                await self._heartbeat.wait("")
                await items.put(_BEAT)

        async def gone() -> None:
            while (await receive()).get("type") != "http.disconnect":
                pass

        tasks = [asyncio.create_task(pump()), asyncio.create_task(beat())]
        watcher = asyncio.create_task(gone())
        try:
            while True:
                getter = asyncio.create_task(items.get())
                done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if watcher in done:  # the client went away: free its watcher now
                    getter.cancel()
                    return
                item = getter.result()
                if item is _BEAT:
                    await send({"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True})
                    continue
                await send({"type": "http.response.body", "body": sse_message(item), "more_body": True})
                if item is None or isinstance(item, Resync):
                    break
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the connection broke while sending: the same as a disconnect
            return
        finally:
            for task in [*tasks, watcher]:
                task.cancel()
            for task in [*tasks, watcher]:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


_BEAT: Any = RetryHint("", 0.0, "heartbeat")  # a marker, never sent as a hint (compared by identity)


def events_app(
    client: ClientSource,
    *,
    hub: EventHub | None = None,
    authorize: Authorize | None = None,
    heartbeat: PollTrigger | None = None,
) -> EventsApp:
    """The SSE app for `client`'s runs (`client` may be a callable returning the client, for a host that
    creates it at start-up). `authorize(scope, id_or_ref)` is the host's own check (its session cookie, its
    user's projects), called before any store read; `heartbeat` paces the keep-alive comments (every 15 s)."""
    return EventsApp(client, hub=hub, authorize=authorize, heartbeat=heartbeat)


def _position(scope: MutableMapping[str, Any]) -> int | None:
    """The seq to resume after: a non-empty Last-Event-ID (a reconnect) or `?after=`; 0 when neither; None
    when malformed."""
    raw: str | None = None
    for key, value in scope.get("headers") or ():
        if key.lower() == b"last-event-id":
            raw = value.decode("latin-1").strip()
    if not raw:  # no event seen yet (a blank header too): the URL's own `?after=` stands
        query = parse_qs(bytes(scope.get("query_string") or b"").decode("latin-1"))
        raw = query.get("after", [None])[-1]
    if raw is None or raw == "":
        return 0
    if not raw.isdigit() or not raw.isascii() or len(raw) > _MAX_SEQ_DIGITS:
        return None
    return int(raw)


async def _respond(
    send: Any, status: int, payload: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    data = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": data})
