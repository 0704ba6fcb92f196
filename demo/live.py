"""One demo run followed live, as the orchestrator's browser would: `tdev_state.events` (the sessions stream
where the tables have one, else polling at 1/s), in a thread of the demo's own, a line per event as it
arrives with the time from its write; then checked against the run's stored event log (ordered, complete)
and shown in the report."""

from __future__ import annotations

import asyncio
import html
import threading
import time
from collections.abc import Callable
from typing import Any

from tdev_state import AsyncStateClient, SessionNotFoundError, StateClient, StateConfig
from tdev_state.events import EventHub, RetryHint, StreamTrigger
from tdev_state.models import RunEvent, epoch_float


class LiveRun(threading.Thread):
    """Follows run `session_id` from its first event until it ends (or `stop()`), calling `show(line)` per
    event; `events` holds what arrived, each with `latency_s` (arrival minus the event's stored time)."""

    def __init__(self, config: StateConfig, session_id: str, show: Callable[[str], None]) -> None:
        super().__init__(name="demo-live-run", daemon=True)
        self.config = config
        self.session_id = session_id
        self.show = show
        self.events: list[dict[str, Any]] = []
        self.mode = "polling 1/s"
        self.error: str | None = None
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hub: EventHub | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._follow())
        except Exception as exc:  # the demo reports it as a failed check; the demo itself goes on
            self.error = f"{type(exc).__name__}: {exc}"

    def stop(self, wait: float = 10.0) -> None:
        """End the watch (the demo timed out, or finished before the run's last event arrived) and wait up
        to `wait` seconds for the thread."""
        self._stopping.set()
        loop, hub = self._loop, self._hub
        if loop is not None and hub is not None and not loop.is_closed():
            asyncio.run_coroutine_threadsafe(hub.aclose(), loop)
        self.join(timeout=wait)

    async def _follow(self) -> None:
        self._loop = asyncio.get_running_loop()
        async with AsyncStateClient(StateClient(self.config)) as reader:
            self._hub = hub = EventHub(reader)
            while not self._stopping.is_set():  # the run exists once its driver process opened it
                try:
                    await hub.resolve(self.session_id)
                    break
                except SessionNotFoundError:
                    await asyncio.sleep(0.2)
            async for item in hub.watch(self.session_id):
                if isinstance(item, RetryHint):
                    self.show(
                        f"live  {self.session_id[:8]}  store busy, retrying in {item.after_seconds:.0f}s"
                    )
                if not isinstance(item, RunEvent):
                    continue
                if isinstance(hub.trigger, StreamTrigger) and hub.trigger.healthy:
                    self.mode = "sessions stream"
                latency = time.time() - epoch_float(item.at) if item.at is not None else None
                self.events.append({**item.to_dict(), "latency_s": latency})
                self.show(_line(item, latency))
                if self._stopping.is_set():
                    break
            await hub.aclose()


def _line(event: RunEvent, latency: float | None) -> str:
    what = " ".join(
        str(part)
        for part in (
            event.kind,
            event.agent or "",
            f"attempt {event.attempt}" if event.attempt and event.agent else "",
            event.run_status or "",
            f"error: {event.error[:60]}" if event.error else "",
        )
        if part
    )
    after = f"{latency:5.2f}s after its write" if latency is not None else ""
    return f"live  {event.run_id[:8]}  #{event.seq:<3} {what:<52} {after}"


def check_live(client: StateClient, live: LiveRun) -> list[str]:
    """The events that arrived live are the run's stored log: every seq once, in order, through its end."""
    if live.error:
        return [f"live watch of {live.session_id} failed: {live.error}"]
    stored = client.sessions.events(live.session_id)
    got = [(e["seq"], e["kind"]) for e in live.events]
    want = [(e.seq, e.kind) for e in stored.events]
    if got != want:
        return [f"live events of {live.session_id} differ from its stored log: got {got}, stored {want}"]
    if not stored.ended:
        return [f"live watch of {live.session_id} stopped before the run ended"]
    return []


def live_section(live: LiveRun | None) -> str:
    """The report's table of the run followed live: each event, when it arrived after its write."""
    if live is None or not live.events:
        return ""
    rows = "".join(_row(e) for e in live.events)
    latencies = sorted(e["latency_s"] for e in live.events[1:] if e["latency_s"] is not None)
    median = f"{latencies[len(latencies) // 2]:.2f} s" if latencies else "n/a"
    return f"""<h2>A run followed live</h2>
<p>Run <code>{html.escape(live.session_id)}</code> watched through <code>tdev_state.events</code>
({live.mode}) while the demo ran, as the orchestrator's browser would watch it over
<code>GET /runs/{{id}}/events</code>: {len(live.events)} events, every seq once and in order (checked
against the stored log); median time from a transition's write to its arrival {median}.</p>
<table><tr><th>seq</th><th>event</th><th>agent</th><th>attempt</th><th>run status</th>
<th>seconds after its write</th></tr>{rows}</table>"""


def _row(event: dict[str, Any]) -> str:
    cells = [
        event["seq"],
        event["kind"],
        event.get("agent") or "",
        event.get("attempt") or "",
        event.get("run_status") or "",
        "" if event["latency_s"] is None else f"{event['latency_s']:.2f}",
    ]
    return "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"
