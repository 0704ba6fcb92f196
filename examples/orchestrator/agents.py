"""The miniature's agents, results and WebSocket manager — shared by `before.py` and `after.py`.

The agents are fakes driven by a script: for each agent, what each attempt does — "ok" (returns
`success=True` with an output holding the objects real agents return: dataclasses, Enums, datetimes, a
UUID, a timedelta, bytes, int-keyed dicts), "return" (returns `AgentExecutionResult(success=False)`, the
orchestrator's usual failure), "raise" (raises), or "hang" (never answers: the orchestrator's
`asyncio.wait_for` times it out). Attempts past the script's end are "ok".
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

from tdev_state import AGENTS, PIPELINE

#: The orchestrator's agents, in order: the pipeline the state layer declares (tdev_state.agents), so the
#: miniature runs whatever pipeline is declared there.
AGENT_NAMES = list(AGENTS)
#: The agents whose failure stops the run, as declared there.
CRITICAL_AGENTS = [a.name for a in PIPELINE if a.critical]


@dataclass
class AgentExecutionResult:
    """An agent's result, as the orchestrator's agents return it."""

    agent_name: str
    success: bool
    execution_time: float
    output_data: Any
    error: str | None = None
    metrics: dict[str, Any] | None = None


@dataclass
class ProductionPipelineResult:
    """What `execute` returns to the API."""

    success: bool
    project_id: str
    project_path: str | None
    metadata: dict[str, Any]
    errors: list[str]
    execution_time: float


class Framework(Enum):
    REACT = "react"


@dataclass
class GeneratedFile:
    path: Path
    content: str


def output_of(agent: str, data: dict[str, Any]) -> dict[str, Any]:
    """An agent's output: what the orchestrator promotes, plus the objects real outputs hold."""
    outputs: dict[str, dict[str, Any]] = {
        "nl_input": {
            "requirements": data.get("user_input"),
            "project_type": "web_app",
            "features": ["todo"],
            "request_id": uuid.UUID(int=7),
            "parsed_at": datetime(2026, 11, 27, 3, 15, tzinfo=UTC),
        },
        "ui_selection": {"framework": Framework.REACT, "ui_library": "material-ui"},
        "match_rate": {"scores": {1: 0.78, 2: 0.82}},
        "generation": {
            "files": [GeneratedFile(Path("src/App.js"), "export default App;\n")],
            "elapsed": timedelta(seconds=12),
        },
        "assembly": {
            "package_path": Path("downloads") / f"{data.get('project_id')}.zip",
            "zip_head": b"PK\x03\x04",
        },
        "download": {"download_url": f"/api/v1/download/{data.get('project_id')}"},
    }
    return outputs.get(agent, {"agent": agent, "status": "processed"})


Agent = Callable[[dict[str, Any], dict[str, Any]], Awaitable[AgentExecutionResult]]


@dataclass
class Script:
    """What each attempt of each agent does; counts the attempts made."""

    steps: dict[str, list[str]] = field(default_factory=dict)
    made: dict[str, int] = field(default_factory=dict)

    def next(self, agent: str) -> str:
        n = self.made.get(agent, 0)
        self.made[agent] = n + 1
        plan = self.steps.get(agent, [])
        return plan[n] if n < len(plan) else "ok"


def make_agents(script: Script) -> dict[str, Agent]:
    """The fake agents, one per declared agent, following `script`."""

    def make(name: str) -> Agent:
        async def agent(data: dict[str, Any], context: dict[str, Any]) -> AgentExecutionResult:
            action = script.next(name)
            if action == "hang":
                await asyncio.Event().wait()  # never set: the orchestrator's timeout ends the attempt
            if action == "raise":
                raise RuntimeError(f"{name} crashed")
            if action == "return":
                return AgentExecutionResult(name, False, 0.01, None, error=f"{name} could not do it")
            return AgentExecutionResult(name, True, 0.01, output_of(name, data))

        return agent

    return {name: make(name) for name in AGENT_NAMES}


class RecordingWebSocketManager:
    """The API's `ws_manager`, recording what the pipeline sends instead of sending it."""

    def __init__(self) -> None:
        self.progress: list[tuple[str, int, int, str]] = []
        self.logs: list[tuple[str, str, str]] = []

    async def send_progress(self, project_id: str, agent_id: int, progress: int, status: str) -> None:
        self.progress.append((project_id, agent_id, progress, status))

    async def send_log(self, project_id: str, message: str, level: str = "info") -> None:
        self.logs.append((project_id, message, level))
