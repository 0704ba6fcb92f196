"""Live run progress on a real endpoint: a transition written by one client reaches an SSE client of the
events app — polling at its production rate (1/s) on tables without a stream, woken by the sessions stream
on tables with one — in order, with no gap, also across a pipeline process SIGKILLed mid-run and resumed by
the recovery worker; and the time it took is printed (the figures docs/data-model.md quotes; no test
asserts a duration)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from tdev_recovery import Outcome, RecoveryWorker, ResumeRequest, WorkerConfig
from tdev_state import AGENTS, AgentStatus, AsyncStateClient, InvalidTransitionError, StateClient
from tdev_state.events import EventHub, IntervalTrigger, StreamTrigger
from tdev_state.events_http import events_app

from ..live_child import SEQ_AT_KILL

ROOT = Path(__file__).resolve().parents[2]
#: A deadline for an answer (the poller polls every second at most), not a pause.
DEADLINE = 15.0


class Sse:
    """One SSE connection to the events app, driven in process (ASGI): its status, then its messages."""

    def __init__(self, app: Any, name: str, *, last_event_id: int | None = None) -> None:
        headers = [(b"last-event-id", str(last_event_id).encode())] if last_event_id is not None else []
        scope = {"type": "http", "method": "GET", "path": f"/runs/{name}/events", "headers": headers}
        self.sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.gone = asyncio.Event()
        self.buffer = ""
        self.task = asyncio.create_task(app({**scope, "query_string": b""}, self._receive, self.sent.put))

    async def _receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def status(self) -> int:
        return int((await asyncio.wait_for(self.sent.get(), DEADLINE))["status"])

    async def message(self) -> str:
        """The next message (its lines, without the blank line that ends it)."""
        while "\n\n" not in self.buffer:
            chunk = await asyncio.wait_for(self.sent.get(), DEADLINE)
            self.buffer += bytes(chunk.get("body", b"")).decode()
        block, _, self.buffer = self.buffer.partition("\n\n")
        return block

    async def close(self) -> None:
        self.gone.set()
        await asyncio.wait_for(self.task, DEADLINE)


async def _until(condition: Any) -> None:
    """Poll `condition()` until true, or fail at the deadline."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.05)


async def _timed_writes(writer: StateClient, sid: str, sse: Sse, steps: list[tuple[str, str]]) -> list[float]:
    """Each (step, agent) written by `writer`; its message must come next (ids 2, 3, ...): the latencies."""
    latencies = []
    for seq, (step, agent) in enumerate(steps, start=2):
        await asyncio.to_thread(getattr(writer.executions, step), sid, agent)
        written = time.monotonic()
        block = await sse.message()
        latencies.append(time.monotonic() - written)
        assert block.startswith(f"id: {seq}\n"), block
        assert f'"agent":"{agent}"' in block
    return latencies


async def test_a_write_reaches_the_sse_client_in_order(client: StateClient) -> None:
    """A run watched by its ref over SSE (tables without a stream: polling): the replay, then each new
    transition, ids 1, 2, 3, ..."""
    writer = StateClient(client.config)  # another process's client: its own version cache
    ref = f"project_{uuid.uuid4().hex[:12]}"
    sid = writer.sessions.create(refs=[ref]).session_id
    async with AsyncStateClient(StateClient(client.config)) as reader:
        hub = EventHub(reader)  # the default: the stream if any, else a consistent read per second
        sse = Sse(events_app(reader, hub=hub), ref)
        assert await sse.status() == 200
        assert (await sse.message()).startswith("id: 1\n")
        steps = [("start", AGENTS[0]), ("complete", AGENTS[0]), ("start", AGENTS[1])]
        latencies = await _timed_writes(writer, sid, sse, steps)
        await sse.close()
        assert hub.watchers == 0
        await hub.aclose()
    print(f"write -> SSE client, polling 1/s: {', '.join(f'{s:.2f} s' for s in latencies)}")


async def test_the_sessions_stream_wakes_the_sse_client(streamed_client: StateClient) -> None:
    """With the stream read (and polling made hours long), each transition still reaches the SSE client."""
    writer = StateClient(
        streamed_client.config
    )  # another process: its writes reach the reader only by stream
    sid = writer.sessions.create().session_id
    async with AsyncStateClient(StateClient(streamed_client.config)) as reader:
        trigger = StreamTrigger(reader, fallback_seconds=3600, safety_seconds=3600)
        hub = EventHub(reader, trigger=trigger)
        sse = Sse(events_app(reader, hub=hub), sid)
        assert await sse.status() == 200
        assert (await sse.message()).startswith("id: 1\n")
        await _until(lambda: trigger.healthy)  # a new table's stream takes a few seconds to become readable
        steps = [(step, agent) for agent in AGENTS[:3] for step in ("start", "complete")]
        latencies = await _timed_writes(writer, sid, sse, steps)
        await sse.close()
        await hub.aclose()
    assert trigger.records >= len(latencies)
    print(f"write -> SSE client, sessions stream: {', '.join(f'{s:.2f} s' for s in latencies)}")


def _start_pipeline(client: StateClient, ref: str, ready: Path, log: Path) -> subprocess.Popen[bytes]:
    config = client.config
    command = [sys.executable, "-m", "tests.live_child", "--env", config.env, "--region", config.region]
    command += ["--ref", ref, "--ready", str(ready)]
    if config.endpoint_url:
        command += ["--endpoint", config.endpoint_url]
    with log.open("w") as out:
        return subprocess.Popen(command, cwd=ROOT, env=dict(os.environ), stdout=out, stderr=out)


def _finish(client: StateClient, request: ResumeRequest) -> None:
    """The resumed pipeline: the agents from the one the worker names (the last one's completion ends the
    run: its event carries the verdict, run_status COMPLETED)."""
    for agent in AGENTS[AGENTS.index(request.next_agent) :]:
        try:
            client.executions.start(sid := request.session_id, agent)
        except InvalidTransitionError as exc:  # the interrupted agent: FAILED by the worker, retried here
            if not (exc.current and exc.current.get("status") == AgentStatus.FAILED.value):
                raise
            client.executions.retry(sid, agent)
        client.executions.complete(sid, agent, output_data={"by": "resume"})


async def test_a_watcher_follows_a_run_through_a_sigkill_and_the_workers_resume(
    client: StateClient, tmp_path: Path
) -> None:
    """A pipeline process SIGKILLed mid-run, the worker's resume finishing it in another process: the SSE
    watcher, reconnecting with Last-Event-ID, gets every seq once and in order, through the verdict."""
    ref, ready = f"project_{uuid.uuid4().hex[:12]}", tmp_path / "ready"
    child = _start_pipeline(client, ref, ready, tmp_path / "child.log")
    messages: list[str] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        async with AsyncStateClient(StateClient(client.config)) as reader:
            hub = EventHub(reader, trigger=IntervalTrigger(0.1))
            app = events_app(reader, hub=hub)
            deadline = time.monotonic() + DEADLINE
            while True:  # the ref is a 404 until the child has opened its run
                first = Sse(app, ref)
                if await first.status() == 200:
                    break
                await first.close()
                assert child.poll() is None, (tmp_path / "child.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "the pipeline process never opened its run"
            while len(messages) < SEQ_AT_KILL:
                messages.append(await first.message())
            await _until(ready.exists)
            child.send_signal(signal.SIGKILL)
            assert child.wait(timeout=DEADLINE) == -signal.SIGKILL
            await first.close()  # the browser lost its connection; it comes back with its last id
            second = Sse(app, ref, last_event_id=SEQ_AT_KILL)
            assert await second.status() == 200

            async def resumer(request: ResumeRequest) -> None:  # accepted; the pipeline goes on by itself
                tasks.append(
                    asyncio.create_task(asyncio.to_thread(_finish, StateClient(client.config), request))
                )

            worker = RecoveryWorker(StateClient(client.config), resumer, WorkerConfig(confirm=None))
            result = await worker.resume_now(ready.read_text(), force=True)
            assert result.outcome is Outcome.RESUMED
            while not (block := await second.message()).startswith("event: end"):
                messages.append(block)
            await asyncio.gather(*tasks)
            await second.close()
            await worker.shutdown()
            await hub.aclose()
    finally:
        if child.poll() is None:
            child.kill()
    seqs = [int(m.split("\n", 1)[0].removeprefix("id: ")) for m in messages]
    assert seqs == list(range(1, len(seqs) + 1))
    kinds = [m.split('"kind":"', 1)[1].split('"', 1)[0] for m in messages]
    assert {"claimed", "agent_interrupted", "resumed", "agent_retried"} <= set(kinds), kinds
    assert '"run_status":"COMPLETED"' in messages[-1]  # then `event: end`: nothing after the verdict
