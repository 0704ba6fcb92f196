"""Runs for the console's tests: a FAILED run to resume, hostile strings, and a resumer that finishes runs.

The resumer behaves like the pipeline's resume endpoint (demo/pipeline.py): it accepts the request at once
and carries on in the background, from the agent it was told, once the worker's hand-over is recorded.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from tdev_recovery.resumers import ResumeRequest
from tdev_state import AGENTS, AgentStatus, ExecutionNotFoundError, StateClient

#: Markup that would run if any stored string reached a page unescaped.
HOSTILE = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'


def make_failed_run(
    client: StateClient, *, project: str = "failed shop", user: str | None = "console-user"
) -> str:
    """A run whose critical agent (generation) failed for good after six agents: FAILED, open for recovery."""
    sid = client.sessions.create(
        user_id=user, project_name=project, metadata={"origin": "console test"}
    ).session_id
    for agent in AGENTS[:6]:
        client.executions.start(sid, agent, input_data={"agent": agent})
        client.executions.complete(sid, agent, output_data={"out": agent})
    client.executions.start(sid, "generation", input_data={"agent": "generation"})
    client.executions.fail(sid, "generation", error_message="generation timed out (model overloaded)")
    return sid


def make_completed_run(client: StateClient, *, project: str = "finished shop") -> str:
    """A run whose nine agents completed, each with its accumulated input (what a fork starts from)."""
    sid = client.sessions.create(user_id="console-user", project_name=project).session_id
    data: dict[str, Any] = {"request": "build a shop"}
    for agent in AGENTS:
        client.executions.start(sid, agent, input_data=dict(data))
        data[agent] = {"out": agent}
        client.executions.complete(sid, agent, output_data=data[agent])
    return sid


def make_hostile_run(client: StateClient) -> str:
    """A run with markup in its project name, an agent's error and its metadata (and a tolerated failure)."""
    sid = client.sessions.create(
        user_id="console-user", project_name=f"shop {HOSTILE}", metadata={"note": HOSTILE, HOSTILE: [HOSTILE]}
    ).session_id
    client.executions.start(sid, "nl_input", input_data={"request": HOSTILE})
    client.executions.complete(sid, "nl_input", output_data={"echo": HOSTILE})
    client.executions.start(sid, "ui_selection")
    client.executions.fail(sid, "ui_selection", error_message=f"bad template {HOSTILE}")
    return sid


def finish_run(client: StateClient, request: ResumeRequest) -> None:
    """What the pipeline does with an accepted resume: rerun the next agent, then the rest, to COMPLETED."""
    start = AGENTS.index(request.next_agent)
    for agent in AGENTS[start:]:
        if agent in request.tolerated_failures:
            continue
        try:
            current = client.executions.get(request.session_id, agent, load_payloads=False).status
        except ExecutionNotFoundError:  # never started
            current = None
        if current is AgentStatus.FAILED:
            client.executions.retry(request.session_id, agent)
        elif current in (None, AgentStatus.PENDING):  # never started, or a fork's point (stored input)
            client.executions.start(request.session_id, agent, input_data={"resumed": True})
        client.executions.complete(request.session_id, agent, output_data={"out": agent, "resumed": True})


class BackgroundResumer:
    """A resumer (`async (ResumeRequest) -> None`) that accepts, then finishes the run on a thread after the
    hand-over is stored — as a real pipeline would, so the worker's `handed_over` never races the run."""

    def __init__(self, client: StateClient) -> None:
        self.client = client
        self.requests: list[ResumeRequest] = []
        self.errors: list[str] = []
        self.threads: list[threading.Thread] = []

    async def __call__(self, request: ResumeRequest) -> None:
        self.requests.append(request)
        before = self.client.sessions.recovery_history(request.session_id).resume_count
        thread = threading.Thread(target=self._finish, args=(request, before), daemon=True)
        thread.start()
        self.threads.append(thread)

    def _finish(self, request: ResumeRequest, before: int) -> None:
        try:
            history = self.client.sessions.recovery_history
            wait_for(lambda: history(request.session_id).resume_count > before, interval=0.05)
            finish_run(self.client, request)
        except Exception as exc:  # recorded for the test to assert on
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def join(self, timeout: float = 30) -> None:
        for thread in self.threads:
            thread.join(timeout)


def wait_for(predicate: Any, timeout: float = 30, interval: float = 0.1) -> Any:
    """Poll `predicate` until it returns something truthy (which is returned), or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s: {predicate}")
        time.sleep(interval)
