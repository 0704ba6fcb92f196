"""Live run progress on a real endpoint: a transition written by one client reaches an SSE client of the
events app — polling at its production rate (1/s) on tables without a stream, woken by the sessions stream
on tables with one — in order, with no gap; and the time it took is printed (the figures docs/data-model.md
quotes; no test asserts a duration)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from tdev_state import AGENTS, AsyncStateClient, StateClient
from tdev_state.events import EventHub, StreamTrigger
from tdev_state.events_http import events_app

#: A deadline for the poller's answer (it polls every second), not a pause.
DEADLINE = 15.0


async def _messages(sent: asyncio.Queue[dict[str, Any]], buffer: list[str]) -> str:
    while "\n\n" not in buffer[0]:
        chunk = await asyncio.wait_for(sent.get(), DEADLINE)
        buffer[0] += bytes(chunk.get("body", b"")).decode()
    block, _, buffer[0] = buffer[0].partition("\n\n")
    return block


async def test_a_write_reaches_the_sse_client_in_order(client: StateClient) -> None:
    """A run watched by its ref over SSE: the replay, then each new transition, ids 1, 2, 3, ..."""
    writer = StateClient(client.config)  # another process's client: its own version cache
    ref = f"project_{uuid.uuid4().hex[:12]}"
    sid = writer.sessions.create(refs=[ref]).session_id
    async with AsyncStateClient(StateClient(client.config)) as reader:
        hub = EventHub(reader)  # the default: a consistent read per second, whatever the watchers
        app = events_app(reader, hub=hub)
        sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        gone = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await gone.wait()
            return {"type": "http.disconnect"}

        scope = {
            "type": "http",
            "method": "GET",
            "path": f"/runs/{ref}/events",
            "headers": [],
            "query_string": b"",
        }
        task = asyncio.create_task(app(scope, receive, sent.put))
        start = await asyncio.wait_for(sent.get(), DEADLINE)
        assert start["status"] == 200
        buffer = [""]
        assert (await _messages(sent, buffer)).startswith("id: 1\n")
        latencies = []
        writes = [
            (writer.executions.start, AGENTS[0], {}),
            (writer.executions.complete, AGENTS[0], {"output_data": {"ok": True}}),
            (writer.executions.start, AGENTS[1], {}),
        ]
        for seq, (write, agent, extra) in enumerate(writes, start=2):
            await asyncio.to_thread(write, sid, agent, **extra)
            written = time.monotonic()
            block = await _messages(sent, buffer)
            latencies.append(time.monotonic() - written)
            assert block.startswith(f"id: {seq}\n"), block
            assert f'"agent":"{agent}"' in block
        gone.set()
        await asyncio.wait_for(task, DEADLINE)
        assert hub.watchers == 0
    print(f"write -> SSE client, polling 1/s: {', '.join(f'{s:.2f} s' for s in latencies)}")


async def _until(condition: Any) -> None:
    """Poll `condition()` until true, or fail at the deadline."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.05)


async def test_the_sessions_stream_wakes_the_sse_client(streamed_client: StateClient) -> None:
    """With the stream read (and polling made hours long), each transition still reaches the SSE client."""
    writer = StateClient(
        streamed_client.config
    )  # another process: its writes reach the reader only by stream
    sid = writer.sessions.create().session_id
    async with AsyncStateClient(StateClient(streamed_client.config)) as reader:
        trigger = StreamTrigger(reader, fallback_seconds=3600, safety_seconds=3600)
        hub = EventHub(reader, trigger=trigger)
        sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        gone = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await gone.wait()
            return {"type": "http.disconnect"}

        scope = {
            "type": "http",
            "method": "GET",
            "path": f"/runs/{sid}/events",
            "headers": [],
            "query_string": b"",
        }
        task = asyncio.create_task(events_app(reader, hub=hub)(scope, receive, sent.put))
        assert (await asyncio.wait_for(sent.get(), DEADLINE))["status"] == 200
        buffer = [""]
        assert (await _messages(sent, buffer)).startswith("id: 1\n")
        await _until(lambda: trigger.healthy)  # a new table's stream takes a few seconds to become readable
        latencies = []
        steps = [(step, agent) for agent in AGENTS[:3] for step in ("start", "complete")]
        for seq, (step, agent) in enumerate(steps, start=2):
            await asyncio.to_thread(getattr(writer.executions, step), sid, agent)
            written = time.monotonic()
            block = await _messages(sent, buffer)
            latencies.append(time.monotonic() - written)
            assert block.startswith(f"id: {seq}\n"), block
        gone.set()
        await asyncio.wait_for(task, DEADLINE)
        await hub.aclose()
    assert trigger.records >= len(latencies)
    print(f"write -> SSE client, sessions stream: {', '.join(f'{s:.2f} s' for s in latencies)}")
