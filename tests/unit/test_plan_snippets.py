"""The plan's four snippets, verbatim, each as its own test: the pipeline adopts the library unchanged.

Each test body is the plan's code as the plan writes it (with the names it assumes — `project_id`,
`agent_name`, `result` — defined first), then checks what landed in the tables with raw boto3.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import boto3

from tdev_state import (
    StateClient,
    get_failed_sessions,
    save_pipeline_session,
    save_user_project,
    update_agent_execution,
)
from tdev_state.testing import FakeClock


@dataclass
class AgentResult:
    """What an orchestrator agent returns."""

    output_data: dict[str, Any]


def raw_item(client: StateClient, table: str, key: dict[str, str]) -> dict[str, Any]:
    """The item exactly as DynamoDB holds it (attribute types included)."""
    wire = {k: {"S": v} for k, v in key.items()}
    item: dict[str, Any] = boto3.client("dynamodb", region_name="us-east-1").get_item(
        TableName=table, Key=wire, ConsistentRead=True
    )["Item"]
    return item


PROJECT_ID = "prod_20261127_031500_0042"


async def test_snippet_save_pipeline_session_creates_a_run_without_a_user(plan: StateClient) -> None:
    """The plan's first line: a session with no user_id and no project_name, timestamps as Number."""
    project_id = PROJECT_ID
    await save_pipeline_session({"session_id": project_id, "status": "ACTIVE", "current_agent": "nl_input", "progress": 0})  # fmt: skip  # noqa: E501

    item = raw_item(plan, plan.config.tables.sessions, {"session_id": PROJECT_ID})
    assert item["status"] == {"S": "ACTIVE"}
    assert item["progress"] == {"N": "0"}
    assert "user_id" not in item  # not in the by-user index: it has no user
    for stamp in ("created_at", "last_updated"):
        assert set(item[stamp]) == {"N"}
        assert 1.7e9 < float(item[stamp]["N"]) < 2.2e9  # epoch seconds


async def test_snippet_update_agent_execution_records_a_finished_agent(plan: StateClient) -> None:
    """Phase 1: `f"{project_id}-{agent_name}"`, COMPLETED with no RUNNING before, JSON text as output."""
    project_id = PROJECT_ID
    await save_pipeline_session({"session_id": project_id, "status": "ACTIVE", "current_agent": "nl_input", "progress": 0})  # fmt: skip  # noqa: E501
    agent_name = "nl_input"
    result = AgentResult(
        output_data={"intent": "todo app", "features": ["auth", "lists"], "confidence": 0.93}
    )

    await update_agent_execution({"execution_id": f"{project_id}-{agent_name}", "status": "COMPLETED",
                                  "output_data": json.dumps(result.output_data)})  # fmt: skip

    stored = plan.executions.get(PROJECT_ID, "nl_input")
    assert stored.output_data == result.output_data  # the object, never a string of it
    assert stored.status == "COMPLETED"
    assert plan.sessions.get(PROJECT_ID).progress == 1
    item = raw_item(
        plan, plan.config.tables.executions, {"execution_id": PROJECT_ID, "agent_name": "01#nl_input"}
    )
    assert set(item["end_time"]) == {"N"}


async def test_snippet_phase2_loop_compares_last_updated_with_time(
    plan: StateClient, clock: FakeClock
) -> None:
    """Phase 2: the failed sessions' last_updated compares with `time.time() - 3600`."""
    project_id = PROJECT_ID
    await save_pipeline_session({"session_id": project_id, "status": "ACTIVE", "current_agent": "nl_input", "progress": 0})  # fmt: skip  # noqa: E501
    await save_pipeline_session({"session_id": project_id, "status": "FAILED"})
    clock.advance(hours=2)
    one_hour_ago = time.time() - 3600
    stale = []

    for session in await get_failed_sessions():
        if session['last_updated'] < one_hour_ago:  # fmt: skip
            stale.append(session["session_id"])

    assert stale == [PROJECT_ID]


async def test_snippet_save_user_project_takes_tech_stack_as_json_text(plan: StateClient) -> None:
    """`tech_stack` typed as the plan types it (String, JSON) is stored as the list it encodes."""
    await save_user_project({"user_id": "u-42", "project_id": PROJECT_ID, "project_name": "my-app",
                             "tech_stack": json.dumps(["React", "TypeScript"])})  # fmt: skip
    await save_user_project({"user_id": "u-42", "project_id": "p2", "project_name": "other",
                             "tech_stack": ["Vue"]})  # fmt: skip
    assert plan.projects.get("u-42", PROJECT_ID).tech_stack == ["React", "TypeScript"]
    assert plan.projects.get("u-42", "p2").tech_stack == ["Vue"]
    item = raw_item(plan, plan.config.tables.projects, {"user_id": "u-42", "project_id": PROJECT_ID})
    assert set(item["last_accessed"]) == {"N"}
