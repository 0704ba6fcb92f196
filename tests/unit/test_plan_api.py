"""The plan's calls work as the pipeline writes them: awaitables taking plain dicts."""

from __future__ import annotations

from datetime import timedelta

import pytest

import tdev_state
from tdev_state import (
    InvalidTransitionError,
    StateClient,
    ValidationError,
    get_failed_sessions,
    save_pipeline_session,
    save_user_project,
    update_agent_execution,
)
from tdev_state.testing import FakeClock


async def test_a_pipeline_run_through_the_plan_calls(plan: StateClient) -> None:
    """save_pipeline_session / update_agent_execution drive a whole run as the plan's code does."""
    sid = "sess-42"
    created = await save_pipeline_session(
        {
            "session_id": sid,
            "user_id": "u1",
            "project_name": "shop",
            "pipeline_type": "SIMPLE",
            "status": "ACTIVE",
            "current_agent": "nl_input",
            "progress": 0,
            "metadata": {"request": "a shop"},
        }
    )
    assert created["status"] == "ACTIVE"
    assert created["version"] == 1
    for agent in tdev_state.AGENTS:
        await update_agent_execution(
            {"execution_id": sid, "agent_name": agent, "status": "RUNNING", "input_data": {"a": 1}}
        )
        result = await update_agent_execution(
            {"execution_id": sid, "agent_name": agent, "status": "COMPLETED", "output_data": [agent]}
        )
    assert result["session_status"] == "COMPLETED"
    assert result["progress"] == len(tdev_state.AGENTS)
    assert plan.sessions.get(sid).status == "COMPLETED"


async def test_running_after_failed_is_a_retry(plan: StateClient) -> None:
    """RUNNING for a FAILED agent retries it (retry_count + 1) instead of refusing."""
    await save_pipeline_session({"session_id": "s", "user_id": "u", "project_name": "p"})
    await update_agent_execution({"execution_id": "s", "agent_name": "nl_input", "status": "RUNNING"})
    await update_agent_execution(
        {"execution_id": "s", "agent_name": "nl_input", "status": "FAILED", "error_message": "boom"}
    )
    await update_agent_execution({"execution_id": "s", "agent_name": "nl_input", "status": "RUNNING"})
    assert plan.executions.get("s", "nl_input").retry_count == 1


async def test_session_updates_through_the_plan_call(plan: StateClient) -> None:
    """A second save_pipeline_session applies changes; an illegal one raises and changes nothing."""
    await save_pipeline_session({"session_id": "s", "user_id": "u", "project_name": "p"})
    failed = await save_pipeline_session({"session_id": "s", "status": "FAILED"})
    assert failed["status"] == "FAILED"
    assert failed["version"] == 2
    await save_pipeline_session({"session_id": "s", "status": "ABANDONED"})
    with pytest.raises(InvalidTransitionError):
        await save_pipeline_session({"session_id": "s", "status": "ACTIVE"})
    with pytest.raises(ValidationError, match="cannot change"):
        await save_pipeline_session({"session_id": "s", "user_id": "someone-else"})


async def test_get_failed_sessions_uses_the_plans_hour(plan: StateClient, clock: FakeClock) -> None:
    """get_failed_sessions() returns FAILED sessions idle for more than an hour, as dicts."""
    await save_pipeline_session({"session_id": "old", "user_id": "u", "project_name": "p"})
    await save_pipeline_session({"session_id": "old", "status": "FAILED"})
    clock.advance(minutes=61)
    await save_pipeline_session({"session_id": "new", "user_id": "u", "project_name": "p"})
    await save_pipeline_session({"session_id": "new", "status": "FAILED"})
    failed = await get_failed_sessions()
    assert [s["session_id"] for s in failed] == ["old"]
    assert [s["session_id"] for s in await get_failed_sessions(older_than=timedelta(0))] == [
        "old",
        "new",
    ]


async def test_save_user_project_as_written(plan: StateClient) -> None:
    """save_user_project takes the plan's dict, ignoring server-managed counters."""
    saved = await save_user_project(
        {
            "user_id": "u",
            "project_id": "p",
            "project_name": "Shop",
            "description": "a shop",
            "tech_stack": ["react", "tailwind"],
            "download_count": 99,
            "file_path": "s3://bucket/p.zip",
            "size_mb": 2.5,
        }
    )
    assert saved["download_count"] == 0
    assert saved["tech_stack"] == ["react", "tailwind"]


@pytest.mark.parametrize(
    ("call", "arg", "message"),
    [
        (save_pipeline_session, ["not", "a", "dict"], "takes a dict"),
        (save_pipeline_session, {"user_id": "u"}, "missing key"),
        (save_pipeline_session, {"session_id": "s", "colour": "red"}, "unknown key"),
        (save_pipeline_session, {"session_id": "s", "status": "COMPLETED"}, "starts ACTIVE at progress 0"),
        (update_agent_execution, {"agent_name": "parser", "status": "RUNNING"}, "execution_id"),
        (update_agent_execution, {"execution_id": "s", "agent_name": "x", "status": "RUNNING"}, "agent"),
        (update_agent_execution, {"execution_id": "s", "agent_name": "parser", "status": "DONE"}, "status"),
        (save_user_project, {"user_id": "u", "project_id": "p"}, "project_name"),
    ],
)
async def test_bad_dicts_raise_validation_errors(
    plan: StateClient, call: object, arg: object, message: str
) -> None:
    """Malformed plan dicts raise ValidationError saying what is wrong, and write nothing."""
    before = plan.layer.meter.snapshot()["write_units"]
    with pytest.raises(ValidationError, match=message):
        await call(arg)  # type: ignore[operator]
    assert plan.layer.meter.snapshot()["write_units"] == before
