"""The miniature orchestrator (examples/orchestrator) driven by the adoption tests, on moto and on a real
endpoint alike: build the adopted pipeline on a client, run it as the API does, and read what it stored."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from examples.orchestrator import after, before
from examples.orchestrator.agents import ProductionPipelineResult, RecordingWebSocketManager, Script

from tdev_state import AgentExecution, AsyncStateClient, DeferPolicy, Session, StateClient, deferred_writes

#: An agent attempt that "hangs" is timed out after this long (the real timeouts are 20-300 s).
FAST_TIMEOUT = 0.05
#: The never-harm mode's budgets for tests: a slow shared machine stays within the call budget; a deferred
#: write is retried without waiting long.
TEST_DEFER = DeferPolicy(call_budget_seconds=5.0, first_backoff_seconds=0.01, max_backoff_seconds=0.05)
#: For a hung store: each call waits this long before it is deferred.
HUNG_DEFER = DeferPolicy(call_budget_seconds=0.2, first_backoff_seconds=0.01, max_backoff_seconds=0.05)


def adopted(
    state: AsyncStateClient,
    steps: dict[str, list[str]] | None = None,
    *,
    defer: DeferPolicy = TEST_DEFER,
    **config: Any,
) -> Any:
    """The adopted pipeline (after.py) on `state`, its agents following `steps` (`defer`: the never-harm
    budgets of this client, set at its first use)."""
    deferred_writes(state, defer)
    # Each pipeline its own request text, so its runs' `prod_` ids differ from other pipelines' in the same
    # second (tests on one endpoint share tables; equal ids would make a run a `-dup-` and the test would read
    # another's). Two runs of one pipeline in one second still share an id (the double-click tests).
    config.setdefault("user_input", f"a todo app with login ({uuid.uuid4().hex[:8]})")
    pipeline = after.ProductionECSPipeline({"state": state, "script": Script(steps or {}), **config})
    _fast(pipeline)
    return pipeline


def original(steps: dict[str, list[str]] | None = None) -> Any:
    """The orchestrator as it is today (before.py), with the same agents."""
    pipeline = before.ProductionECSPipeline({"script": Script(steps or {})})
    _fast(pipeline)
    return pipeline


def _fast(pipeline: Any) -> None:
    for settings in pipeline.agent_configs.values():
        settings["timeout"] = FAST_TIMEOUT


async def run(pipeline: Any, ws: RecordingWebSocketManager | None = None) -> ProductionPipelineResult:
    """One POST /api/v1/generate: the pipeline runs inside the request."""
    if not pipeline.initialized:
        await pipeline.initialize()
    text = pipeline.config.get("user_input", "a todo app with login")
    result: ProductionPipelineResult = await pipeline.execute(
        text, project_name="todo", project_type="react", features=["auth"],
        context={"project_id": "project_1a2b3c4d"}, ws_manager=ws,
    )  # fmt: skip
    return result


async def stored(state: AsyncStateClient, session_id: str) -> tuple[Session, dict[str, AgentExecution]]:
    """The run's session and agents as stored once every deferred write has landed (or was given up)."""
    assert await deferred_writes(state).flush(timeout=20), "deferred writes still pending after 20 s"
    client: StateClient = state.sync
    return client.sessions.get(session_id), {e.agent_name: e for e in client.executions.list(session_id)}


class FixedNow(datetime):
    """`datetime` whose now() stays in one second: two requests in that second get the same `prod_` id."""

    @classmethod
    def now(cls, tz: Any = None) -> FixedNow:
        return cls(2026, 11, 27, 3, 15, 0, tzinfo=tz)


async def post(app: Any, body: Any) -> tuple[int, Any]:
    """POST `body` as JSON to a pure-ASGI app, as FastAPI's mount would; (status, JSON answer)."""
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": "POST", "path": "/"}, receive, send)
    return sent[0]["status"], json.loads(sent[1]["body"])
