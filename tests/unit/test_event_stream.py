"""tdev_state.events: replay then live, one shared poller per run, bounded watchers, retry hints."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from examples.orchestrator.agents import RecordingWebSocketManager

from tdev_state import AGENTS, AsyncStateClient, SessionNotFoundError, StateClient, ValidationError
from tdev_state.events import EventHub, ManualTrigger, Resync, RetryHint, StreamItem, event_hub
from tdev_state.models import RunEvent

from ..outage import StoreOutage

pytestmark = pytest.mark.unit

#: A deadline for an answer the poller owes (not a pause: the tests never wait for time to pass).
DEADLINE = 10.0


@pytest.fixture
def trigger() -> ManualTrigger:
    return ManualTrigger()


@pytest.fixture
async def hub(aclient: AsyncStateClient, trigger: ManualTrigger) -> AsyncIterator[EventHub]:
    hub = EventHub(aclient, trigger=trigger, queue_size=4, sleep=lambda _: trigger.wait(""))
    yield hub
    await hub.aclose()


async def next_item(stream: AsyncIterator[StreamItem]) -> StreamItem:
    return await asyncio.wait_for(anext(stream), DEADLINE)


async def take(stream: AsyncIterator[StreamItem], count: int) -> list[StreamItem]:
    return [await next_item(stream) for _ in range(count)]


def completed_run(client: StateClient) -> str:
    sid = client.sessions.create(refs=["project_done"]).session_id
    for agent in AGENTS:
        client.executions.start(sid, agent)
        client.executions.complete(sid, agent, output_data={"a": agent})
    return sid


async def test_an_ended_run_replays_and_stops(hub: EventHub, client: StateClient) -> None:
    """A COMPLETED run, watched by its ref: every event 1..version in order, then the stream ends."""
    sid = completed_run(client)
    async with contextlib.aclosing(hub.watch("project_done")) as stream:
        items = [item async for item in stream]
    assert [i.seq for i in items if isinstance(i, RunEvent)] == list(range(1, 2 * len(AGENTS) + 2))
    assert items[-1] == client.sessions.events(sid).events[-1]
    assert hub.watched_runs == 0


async def test_live_events_follow_the_replay(
    hub: EventHub, client: StateClient, trigger: ManualTrigger
) -> None:
    """A watcher from a position gets what came after it, then each new transition when the poller reads."""
    sid = client.sessions.create().session_id
    client.executions.start(sid, "nl_input")
    async with contextlib.aclosing(hub.watch(sid, after=1)) as stream:
        first = await next_item(stream)
        assert isinstance(first, RunEvent)
        assert (first.seq, first.kind) == (2, "agent_started")
        client.executions.complete(sid, "nl_input", output_data={})
        trigger.fire()
        second = await next_item(stream)
        assert isinstance(second, RunEvent)
        assert (second.seq, second.kind) == (3, "agent_completed")


async def test_many_watchers_share_one_poller(
    hub: EventHub, aclient: AsyncStateClient, client: StateClient, trigger: ManualTrigger
) -> None:
    """Five watchers of one run cost one session read per poll, as one watcher does."""
    sid = client.sessions.create().session_id
    reads: list[str] = []
    client.layer.dynamodb.meta.events.register("before-call.dynamodb.GetItem", lambda **_: reads.append("r"))
    streams = [hub.watch(sid) for _ in range(5)]
    for stream in streams:
        assert isinstance(await next_item(stream), RunEvent)  # run_opened, replayed to each
    client.executions.start(sid, "nl_input")
    trigger.fire()
    for stream in streams:
        event = await next_item(stream)
        assert isinstance(event, RunEvent)
        assert event.seq == 2
    assert (hub.watched_runs, hub.watchers) == (1, 5)
    assert len(reads) == 2  # the first read and one poll, for five watchers (one resolve is a BatchGetItem)
    for stream in streams:
        await stream.aclose()
    assert (hub.watched_runs, hub.watchers) == (0, 0)


async def test_a_slow_watcher_is_dropped_with_resync(
    hub: EventHub, client: StateClient, trigger: ManualTrigger
) -> None:
    """A watcher that lets more than its queue (4) of live events pile up is dropped with Resync at the last
    seq it was given; a watcher that keeps up with the same run is not held back."""
    sid = client.sessions.create().session_id
    slow, fast = hub.watch(sid), hub.watch(sid)
    assert [i.seq for i in await take(slow, 1) + await take(fast, 1)] == [1, 1]  # the replay is not live
    fast_seen = []
    for agent in AGENTS[:3]:  # one transition per poll; `fast` takes each, `slow` none
        client.executions.start(sid, agent)
        trigger.fire()
        fast_seen += await take(fast, 1)
        client.executions.complete(sid, agent, output_data={})
        trigger.fire()
        fast_seen += await take(fast, 1)
    assert [i.seq for i in fast_seen] == [2, 3, 4, 5, 6, 7]
    items = await take(slow, 5)
    assert [i.seq for i in items] == [2, 3, 4, 5, 5]
    assert items[-1] == Resync(sid, 5)
    with pytest.raises(StopAsyncIteration):
        await next_item(slow)
    assert hub.watchers == 1
    await fast.aclose()


async def test_a_cancelled_watcher_frees_its_place_and_the_poller(hub: EventHub, client: StateClient) -> None:
    """Cancelling the consuming task (a client gone) removes the watcher and stops the run's poller."""
    sid = client.sessions.create().session_id
    seen = asyncio.Event()

    async def consume() -> None:
        async for _ in hub.watch(sid):
            seen.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(seen.wait(), DEADLINE)
    assert hub.watchers == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (hub.watchers, hub.watched_runs) == (0, 0)


async def test_the_store_down_gives_a_retry_hint_then_the_events(
    hub: EventHub, client: StateClient, trigger: ManualTrigger
) -> None:
    """A poll the store does not answer sends RetryHint (the stream stays open); when it is back the
    events come, with no gap."""
    sid = client.sessions.create().session_id
    outage = StoreOutage(client)
    async with contextlib.aclosing(hub.watch(sid)) as stream:
        assert isinstance(await next_item(stream), RunEvent)
        client.executions.start(sid, "nl_input")
        outage.down()
        trigger.fire()
        hint = await next_item(stream)
        assert isinstance(hint, RetryHint)
        assert hint.after_seconds == hub.first_backoff
        assert "StorageUnavailable" in hint.reason or "Storage" in hint.reason
        outage.up()
        trigger.fire()
        event = await next_item(stream)
        assert isinstance(event, RunEvent)
        assert event.seq == 2


async def test_an_unknown_run_or_a_bad_position_is_refused_before_streaming(hub: EventHub) -> None:
    """watch() raises SessionNotFoundError for an unknown id or ref and ValidationError for a bad position."""
    with pytest.raises(SessionNotFoundError):
        await anext(hub.watch("project_unknown"))
    with pytest.raises(ValidationError):
        await anext(hub.watch("anything", after=-3))
    assert hub.watched_runs == 0


def documented_forwarder() -> Any:
    """`forward_progress` exactly as docs/adoption.md shows it."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "adoption.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "def forward_progress" in b)
    namespace: dict[str, Any] = {}
    exec(block, namespace)
    return namespace["forward_progress"]


async def test_the_documented_forwarder_sends_each_attempt_under_the_browsers_id(
    aclient: AsyncStateClient, client: StateClient
) -> None:
    """docs/adoption.md's adapter turns a run's stored events into ws_manager calls keyed by the ref."""
    sid = client.sessions.create(refs=["project_ws"]).session_id
    client.executions.start(sid, "nl_input")
    client.executions.fail(sid, "nl_input", error_message="busy")
    client.executions.retry(sid, "nl_input")
    client.executions.complete(sid, "nl_input", output_data={})
    for agent in AGENTS[1:]:
        client.executions.start(sid, agent)
        client.executions.complete(sid, agent, output_data={})
    ws = RecordingWebSocketManager()
    await asyncio.wait_for(documented_forwarder()(aclient, ws, "project_ws"), DEADLINE)
    assert ws.progress[:4] == [
        ("project_ws", 1, 0, "processing"),
        ("project_ws", 1, 0, "error"),
        ("project_ws", 1, 0, "processing"),
        ("project_ws", 1, 100, "completed"),
    ]
    assert ws.progress[-1] == ("project_ws", 9, 100, "completed")
    assert ws.logs[1] == ("project_ws", "NL_INPUT error: busy", "error")


async def test_watchers_connecting_by_ref_share_one_look_up(hub: EventHub, client: StateClient) -> None:
    """Five watchers joining a run by its ref at once cost one BatchGetItem for the ref, not five."""
    client.sessions.create(refs=["project_many"])
    lookups: list[str] = []
    client.layer.dynamodb.meta.events.register(
        "before-call.dynamodb.BatchGetItem", lambda **_: lookups.append("b")
    )
    streams = [hub.watch("project_many") for _ in range(5)]
    firsts = await asyncio.gather(*(next_item(s) for s in streams))
    assert [i.seq for i in firsts] == [1] * 5
    assert len(lookups) == 1
    for stream in streams:
        await stream.aclose()


async def test_this_processs_own_write_wakes_the_poller_at_once(hub: EventHub, client: StateClient) -> None:
    """A transition written through the hub's own client is delivered without waiting for the trigger."""
    sid = client.sessions.create().session_id
    async with contextlib.aclosing(hub.watch(sid)) as stream:
        assert (await next_item(stream)).seq == 1
        await asyncio.to_thread(client.executions.start, sid, "nl_input")  # the trigger never fires here
        event = await next_item(stream)
        assert isinstance(event, RunEvent)
        assert (event.seq, event.kind) == (2, "agent_started")


def test_a_failing_transition_listener_never_fails_the_write(client: StateClient) -> None:
    """A listener that raises is logged; the transition stands and the listener can be removed."""

    def broken(_: str) -> None:
        raise RuntimeError("listener bug")

    remove = client.on_transition(broken)
    sid = client.sessions.create().session_id
    client.executions.start(sid, "nl_input")
    remove()
    assert client.sessions.events(sid).seq == 2


async def test_a_process_hub_nobody_holds_is_freed_with_its_listener(client: StateClient) -> None:
    """`event_hub` for a short-lived async client (one per request, or per `asyncio.run`) is freed once nobody
    holds it: neither the hub nor its write listener stays on the long-lived sync client."""
    hubs = []
    for _ in range(3):
        hubs.append(weakref.ref(event_hub(AsyncStateClient(client))))
    gc.collect()
    assert [hub() for hub in hubs] == [None, None, None]


async def test_a_run_whose_watchers_were_all_dropped_is_polled_no_more(
    hub: EventHub, client: StateClient
) -> None:
    """A dropped watcher whose consumer has not let go yet (a stuck connection) keeps no poller reading the
    store once a second for it."""
    sid = client.sessions.create().session_id
    slow = hub.watch(sid)
    await take(slow, 1)
    for agent in AGENTS[:3]:  # six live events, none taken: more than the queue (4) holds
        client.executions.start(sid, agent)
        client.executions.complete(sid, agent, output_data={})
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while hub.watched_runs:
        assert loop.time() < end, "the run's poller still reads for a dropped watcher"
        await asyncio.sleep(0.001)
    assert (await take(slow, 5))[-1] == Resync(sid, 5)
    await slow.aclose()
