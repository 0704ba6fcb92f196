"""A run driven exactly as T-Developer's orchestrator drives it, through the plan's dict calls, on a real
endpoint; every stored item is then checked with raw boto3.

The orchestrator (shared/ANCHORS.md): run id = project id, no user id; agents in order, each retried in
process (1 or 2 times); a non-critical agent that fails for good is recorded and the next one runs; a
critical one (generation, assembly) stops the run; each agent's input is the request plus every earlier
output; outputs are objects flattened by `__dict__` (datetimes, paths, enums, sets, dataclasses).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
from boto3.dynamodb.types import TypeDeserializer

import tdev_state
from tdev_state import AGENTS, StateClient, save_pipeline_session, update_agent_execution
from tdev_state.testing import generated_project

from .endpoints import raw_client

RETRIES = {"nl_input": 2, "ui_selection": 2, "match_rate": 2, "search": 2}
CRITICAL = ("generation", "assembly")


class Stage(Enum):
    DONE = "done"


@dataclass
class File:
    path: Path
    size: int


@pytest.fixture
def plan(client: StateClient) -> Iterator[StateClient]:
    tdev_state.configure(client)
    yield client
    tdev_state.configure(None)


def _output(agent: str) -> dict[str, Any]:
    base: dict[str, Any] = {
        "agent": agent,
        "at": datetime(2026, 11, 27, 3, 15, tzinfo=UTC),
        "stage": Stage.DONE,
    }
    if agent == "generation":
        files = generated_project(400_000, seed=5)["files"]
        base |= {
            "files": files,
            "index": [File(Path(p), len(t)) for p, t in files.items()],
            "tags": {"b", "a"},
        }
    return base


async def orchestrate(project_id: str, failures: dict[str, int]) -> str:
    """The orchestrator's loop over the plan's calls; `failures[agent]` attempts fail before one succeeds."""
    await save_pipeline_session(
        {"session_id": project_id, "status": "ACTIVE", "current_agent": "nl_input", "progress": 0}
    )
    data: dict[str, Any] = {"request": "a todo app with login"}
    for agent in AGENTS:
        retries = RETRIES.get(agent, 1)
        for attempt in range(retries + 1):
            await update_agent_execution(
                {"execution_id": f"{project_id}-{agent}", "status": "RUNNING", "input_data": data}
            )
            if failures.get(agent, 0) > attempt:
                await update_agent_execution(
                    {"execution_id": f"{project_id}-{agent}", "status": "FAILED",
                     "error_message": f"{agent}: timeout after 30s (attempt {attempt + 1})"}
                )  # fmt: skip
                if attempt < retries:
                    continue
                if agent in CRITICAL:
                    return "stopped"
                break
            output = _output(agent)
            await update_agent_execution(
                {"execution_id": f"{project_id}-{agent}", "status": "COMPLETED",
                 "output_data": json.dumps(output, default=str) if agent == "parser" else output}
            )  # fmt: skip
            data[agent] = output
            break
    return "done"


def raw_items(client: StateClient, table: str, key: str, value: str) -> list[dict[str, Any]]:
    ddb = raw_client("dynamodb", client.config)
    out = ddb.query(
        TableName=table,
        KeyConditionExpression="#k = :v",
        ExpressionAttributeNames={"#k": key},
        ExpressionAttributeValues={":v": {"S": value}},
        ConsistentRead=True,
    )
    return out["Items"]


def _run_id() -> str:
    return f"prod_20261127_{random.randrange(10**6):06d}_{random.randrange(10**4):04d}"


async def test_an_orchestrator_run_with_retries_and_a_tolerated_failure(plan: StateClient) -> None:
    """nl_input retried once, search failing for good (tolerated), plain objects, accumulated inputs:
    COMPLETED with search listed; stored items typed as the plan types them."""
    project_id = _run_id()
    assert await orchestrate(project_id, {"nl_input": 1, "search": 3}) == "done"

    (session,) = raw_items(plan, plan.config.tables.sessions, "session_id", project_id)
    assert session["status"] == {"S": "COMPLETED"}
    assert session["progress"] == {"N": str(len(AGENTS))}
    assert session["failed_agents"] == {"SS": ["search"]}
    assert "user_id" not in session
    assert set(session["last_updated"]) == {"N"}
    items = {
        i["agent"]["S"]: i for i in raw_items(plan, plan.config.tables.executions, "execution_id", project_id)
    }
    assert list(items) == list(AGENTS)  # one item per agent, in pipeline order
    assert items["nl_input"]["retry_count"] == {"N": "1"}
    assert items["nl_input"]["status"] == {"S": "COMPLETED"}
    assert items["search"]["status"] == {"S": "FAILED"}
    assert items["search"]["retry_count"] == {"N": "2"}
    assert items["search"]["error_message"]["S"].endswith("(attempt 3)")
    for agent in AGENTS:
        assert set(items[agent]["start_time"]) == {"N"}
    deser = TypeDeserializer()
    assert "chunks" in deser.deserialize(items["generation"]["output_data"])  # offloaded, content-addressed
    # Read back through the client: the objects' JSON forms, the parser's JSON text as the object.
    run = {e.agent_name: e for e in plan.executions.list(project_id)}
    assert run["generation"].output_data["tags"] == ["a", "b"]
    assert run["generation"].output_data["stage"] == "done"
    assert run["generation"].output_data["index"][0]["path"].startswith("src/components/")
    assert run["parser"].output_data["agent"] == "parser"
    assert run["download"].input_data["generation"]["files"] == run["generation"].output_data["files"]
    # The generated files were stored once, though three agents received them.
    s3 = raw_client("s3", plan.config)
    listed = s3.list_objects_v2(Bucket=plan.config.payload_bucket or "", Prefix=f"payloads/{project_id}/")
    sizes = sorted(o["Size"] for o in listed["Contents"])
    assert sum(1 for size in sizes if size > 50_000) == 1, sizes


async def test_an_orchestrator_run_stopped_by_a_critical_failure(plan: StateClient) -> None:
    """generation failing on both attempts stops the run: FAILED, open for recovery at generation."""
    project_id = _run_id()
    assert await orchestrate(project_id, {"generation": 2}) == "stopped"
    (session,) = raw_items(plan, plan.config.tables.sessions, "session_id", project_id)
    assert session["status"] == {"S": "FAILED"}
    assert session["progress"] == {"N": "6"}
    assert session["recovery_shard"]["S"].startswith("FAILED#")
    assert session["error_message"]["S"].startswith("generation: generation: timeout")
    items = {
        i["agent"]["S"]: i for i in raw_items(plan, plan.config.tables.executions, "execution_id", project_id)
    }
    assert items["generation"]["status"] == {"S": "FAILED"}
    assert items["generation"]["retry_count"] == {"N": "1"}
    assert "assembly" not in items
