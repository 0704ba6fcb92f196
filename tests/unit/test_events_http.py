"""The SSE app (tdev_state.events_http), driven as an ASGI server drives it: answers, ids, Last-Event-ID,
heartbeats, the end of a run, and a client that goes away."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tdev_state import AGENTS, AsyncStateClient, StateClient
from tdev_state.events import EventHub, ManualTrigger
from tdev_state.events_http import EventsApp, events_app

from ..outage import StoreOutage

pytestmark = pytest.mark.unit

DEADLINE = 10.0


@pytest.fixture
def polls() -> ManualTrigger:
    return ManualTrigger()


@pytest.fixture
def beats() -> ManualTrigger:
    return ManualTrigger()


@pytest.fixture
async def hub(aclient: AsyncStateClient, polls: ManualTrigger) -> AsyncIterator[EventHub]:
    hub = EventHub(aclient, trigger=polls, sleep=lambda _: polls.wait(""))
    yield hub
    await hub.aclose()


@pytest.fixture
def app(aclient: AsyncStateClient, hub: EventHub, beats: ManualTrigger) -> EventsApp:
    return events_app(aclient, hub=hub, heartbeat=beats)


class Connection:
    """One HTTP request to the app, as an ASGI server makes it; `leave()` is the client going away."""

    def __init__(self, app: Any, path: str, *, headers: dict[str, str] | None = None, method: str = "GET"):
        self.sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._gone = asyncio.Event()
        self._buffer = ""
        scope = {
            "type": "http",
            "method": method,
            "path": path,
            "root_path": "",
            "query_string": path.partition("?")[2].encode(),
            "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        }
        scope["path"] = path.partition("?")[0]
        self.task = asyncio.create_task(app(scope, self._receive, self.sent.put))

    async def _receive(self) -> dict[str, Any]:
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def start(self) -> tuple[int, dict[str, str]]:
        message = await asyncio.wait_for(self.sent.get(), DEADLINE)
        assert message["type"] == "http.response.start"
        return message["status"], {k.decode(): v.decode() for k, v in message["headers"]}

    async def body(self) -> bytes:
        message = await asyncio.wait_for(self.sent.get(), DEADLINE)
        return bytes(message["body"])

    async def message(self) -> str:
        """The next SSE message (or comment), without its blank line."""
        while "\n\n" not in self._buffer:
            chunk = await asyncio.wait_for(self.sent.get(), DEADLINE)
            assert chunk.get("more_body"), f"the stream ended: {chunk}"
            self._buffer += chunk["body"].decode()
        block, _, self._buffer = self._buffer.partition("\n\n")
        return block

    async def leave(self) -> None:
        self._gone.set()
        await asyncio.wait_for(self.task, DEADLINE)


def seq_of(block: str) -> int:
    return int(block.split("\n", maxsplit=1)[0].removeprefix("id: "))


async def test_an_ended_run_streams_every_event_with_its_id_then_end(
    app: EventsApp, client: StateClient
) -> None:
    """By ref: 200 text/event-stream, one `id: seq` message per event in order, then `event: end`."""
    sid = client.sessions.create(refs=["project_sse"]).session_id
    for agent in AGENTS:
        client.executions.start(sid, agent)
        client.executions.complete(sid, agent, output_data={})
    conn = Connection(app, "/runs/project_sse/events")
    status, headers = await conn.start()
    assert (status, headers["content-type"]) == (200, "text/event-stream; charset=utf-8")
    blocks = [await conn.message() for _ in range(2 * len(AGENTS) + 2)]
    assert [seq_of(b) for b in blocks[:-1]] == list(range(1, 2 * len(AGENTS) + 2))
    assert json.loads(blocks[0].split("data: ", 1)[1])["kind"] == "run_opened"
    assert blocks[-1].startswith("event: end")
    last = await asyncio.wait_for(conn.sent.get(), DEADLINE)
    assert last == {"type": "http.response.body", "body": b"", "more_body": False}
    await asyncio.wait_for(conn.task, DEADLINE)


async def test_last_event_id_resumes_with_no_gap_and_no_duplicate(
    app: EventsApp, client: StateClient, hub: EventHub, polls: ManualTrigger
) -> None:
    """A client that saw up to seq 3 and reconnects with Last-Event-ID: 3 gets 4, 5, ... — nothing twice."""
    sid = client.sessions.create().session_id
    client.executions.start(sid, "nl_input")
    client.executions.complete(sid, "nl_input", output_data={})
    first = Connection(app, f"/runs/{sid}/events")
    await first.start()
    seen = [seq_of(await first.message()) for _ in range(3)]
    await first.leave()
    client.executions.start(sid, "ui_selection")
    client.executions.complete(sid, "ui_selection", output_data={})
    second = Connection(app, f"/runs/{sid}/events", headers={"Last-Event-ID": str(seen[-1])})
    await second.start()
    seen += [seq_of(await second.message()) for _ in range(2)]
    client.executions.start(sid, "parser")
    polls.fire()
    seen.append(seq_of(await second.message()))
    assert seen == [1, 2, 3, 4, 5, 6]
    await second.leave()


async def test_a_client_that_goes_away_frees_its_watcher(
    app: EventsApp, client: StateClient, hub: EventHub
) -> None:
    """The disconnect ends the request at once and removes the watcher (and the run's poller)."""
    sid = client.sessions.create().session_id
    conn = Connection(app, f"/runs/{sid}/events")
    await conn.start()
    await conn.message()
    assert hub.watchers == 1
    await conn.leave()
    assert (hub.watchers, hub.watched_runs) == (0, 0)


async def test_heartbeat_comments_keep_an_idle_stream_open(
    app: EventsApp, client: StateClient, beats: ManualTrigger
) -> None:
    """When the heartbeat ticks, an SSE comment line goes out (proxies see traffic on an idle stream)."""
    sid = client.sessions.create().session_id
    conn = Connection(app, f"/runs/{sid}/events")
    await conn.start()
    await conn.message()
    beats.fire()
    assert await conn.message() == ": keep-alive"
    await conn.leave()


@pytest.mark.parametrize("header", ["abc", "-1", "1.5", "9" * 30])
async def test_a_malformed_last_event_id_is_400(app: EventsApp, client: StateClient, header: str) -> None:
    """Last-Event-ID that is not a whole number >= 0 is refused with 400, before any read."""
    sid = client.sessions.create().session_id
    conn = Connection(app, f"/runs/{sid}/events", headers={"Last-Event-ID": header})
    status, _ = await conn.start()
    assert status == 400
    assert b"Last-Event-ID" in await conn.body()


async def test_an_unknown_run_or_ref_is_404(app: EventsApp) -> None:
    """No run and no ref by that name: 404 with the name in the message."""
    conn = Connection(app, "/runs/project_nobody/events")
    status, _ = await conn.start()
    assert status == 404
    assert b"project_nobody" in await conn.body()


async def test_the_hosts_authorize_hook_refuses_with_403(aclient: AsyncStateClient, hub: EventHub) -> None:
    """The host's hook sees the request and the name; False is 403, and nothing is read."""
    asked: list[str] = []

    async def authorize(scope: Any, name: str) -> bool:
        asked.append(name)
        return False

    conn = Connection(events_app(aclient, hub=hub, authorize=authorize), "/runs/project_x/events")
    status, _ = await conn.start()
    assert (status, asked, hub.watched_runs) == (403, ["project_x"], 0)


async def test_the_store_down_at_connect_is_503_with_retry_after(app: EventsApp, client: StateClient) -> None:
    """The look-up the store does not answer is 503 with Retry-After: the client tries again; no hang."""
    outage = StoreOutage(client)
    outage.down()
    conn = Connection(app, "/runs/anything/events")
    status, headers = await conn.start()
    outage.up()
    assert status == 503
    assert int(headers["retry-after"]) >= 1


async def test_other_methods_and_paths_are_refused(app: EventsApp) -> None:
    """POST is 405; a path that is not /runs/{id}/events is 404."""
    assert (await Connection(app, "/runs/x/events", method="POST").start())[0] == 405
    assert (await Connection(app, "/runs/x").start())[0] == 404


class CountedPolls(ManualTrigger):
    """A manual trigger that counts the poller's pauses: one more means it finished a read."""

    def __init__(self) -> None:
        super().__init__()
        self.pauses = 0

    async def wait(self, run_id: str) -> None:
        self.pauses += 1
        await super().wait(run_id)


async def test_a_client_that_stops_taking_bytes_is_dropped_with_resync(
    aclient: AsyncStateClient, client: StateClient, beats: ManualTrigger
) -> None:
    """A connection that stops taking bytes falls behind its bounded queue and is sent `resync`: the app
    holds no growing buffer of its own between the watcher and the socket."""
    polls = CountedPolls()
    hub = EventHub(aclient, trigger=polls, queue_size=2)
    app = events_app(aclient, hub=hub, heartbeat=beats)
    sid = client.sessions.create().session_id
    flowing, bodies = asyncio.Event(), []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            await flowing.wait()  # the socket takes nothing until the test lets it
            bodies.append(bytes(message["body"]))

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client never leaves
        return {"type": "http.disconnect"}

    async def polled(n: int) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + DEADLINE
        while polls.pauses < n and (n == 1 or hub.watched_runs):  # a poller stops once its watcher drops
            assert loop.time() < end, "the poller did not read"
            await asyncio.sleep(0.001)

    scope = {"type": "http", "method": "GET", "path": f"/runs/{sid}/events", "root_path": "", "headers": []}
    task = asyncio.create_task(app(scope, receive, send))
    await polled(1)
    for n, agent in enumerate(AGENTS[:3]):  # one event per read: a slow reader would keep up with each
        client.executions.start(sid, agent)
        await polled(2 * n + 2)
        client.executions.complete(sid, agent, output_data={})
        await polled(2 * n + 3)
    flowing.set()
    await asyncio.wait_for(task, DEADLINE)
    text = b"".join(bodies).decode()
    sent_ids = [int(n) for n in re.findall(r"^id: (\d+)$", text, re.M)]
    resync = re.search(r"^event: resync\ndata: (.+)$", text, re.M)
    assert resync is not None
    assert json.loads(resync.group(1))["seq"] == sent_ids[-1]  # reconnecting after it loses nothing
    await hub.aclose()


async def test_an_empty_last_event_id_leaves_the_position_to_after(
    app: EventsApp, client: StateClient
) -> None:
    """An empty Last-Event-ID (no event seen yet; a proxy's blank header) does not override `?after=`."""
    sid = client.sessions.create().session_id
    client.executions.start(sid, "nl_input")
    client.executions.complete(sid, "nl_input", output_data={})
    conn = Connection(app, f"/runs/{sid}/events?after=2", headers={"Last-Event-ID": ""})
    assert (await conn.start())[0] == 200
    assert seq_of(await conn.message()) == 3
    await conn.leave()


class AccessDenied:
    """Every DynamoDB call of `client` refused as AWS refuses a role without the permission (the message
    names the account and the role), until `stop()`."""

    SECRET = "arn:aws:sts::123456789012:assumed-role/tdev-orchestrator/i-0abc"

    def __init__(self, client: StateClient) -> None:
        self._events = client.layer.dynamodb.meta.events
        self._events.register_first("before-call.dynamodb", self._refuse)

    def _refuse(self, **_: Any) -> None:
        message = f"User: {self.SECRET} is not authorized"
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": message}}, "GetItem")

    def stop(self) -> None:
        self._events.unregister("before-call.dynamodb", self._refuse)


async def test_the_stores_own_refusal_text_never_reaches_the_client_at_connect(
    app: EventsApp, client: StateClient
) -> None:
    """A 503 says the store did not answer, never the store's message (it names the AWS account and role)."""
    denied = AccessDenied(client)
    conn = Connection(app, "/runs/anything/events")
    status, _ = await conn.start()
    body = await conn.body()
    denied.stop()
    assert status == 503
    assert b"123456789012" not in body


async def test_the_stores_own_refusal_text_never_reaches_the_client_in_a_retry_event(
    app: EventsApp, client: StateClient, polls: ManualTrigger
) -> None:
    """A failed poll's `event: retry` names the kind of failure, never the store's message."""
    sid = client.sessions.create().session_id
    conn = Connection(app, f"/runs/{sid}/events")
    await conn.start()
    await conn.message()  # run_opened
    denied = AccessDenied(client)
    polls.fire()
    retry = await conn.message()
    denied.stop()
    assert retry.startswith("retry: ")
    assert "AccessDeniedError" in retry
    assert "123456789012" not in retry
    await conn.leave()
