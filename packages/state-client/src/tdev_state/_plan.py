"""The plan's calls, as the pipeline already writes them: awaitables taking and returning plain dicts.

    await save_pipeline_session({"session_id": sid, "user_id": u, "project_name": p, ...})
    await update_agent_execution({"execution_id": sid, "agent_name": "parser", "status": "COMPLETED", ...})
    await get_failed_sessions()
    await save_user_project({"user_id": u, "project_id": pid, "project_name": p, ...})

They use one process-wide AsyncStateClient built from the environment on first use (`TDEV_ENV`,
`AWS_ENDPOINT_URL`, `AWS_REGION`, `TDEV_PAYLOAD_BUCKET`), or the one given to `configure()`.
Server-managed keys (timestamps, download_count) are accepted and ignored: the store sets them.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from tdev_state import _validate as check
from tdev_state.client import AsyncStateClient, StateClient
from tdev_state.config import StateConfig
from tdev_state.exceptions import (
    ConfigurationError,
    InvalidTransitionError,
    SessionNotFoundError,
    ValidationError,
)
from tdev_state.models import AgentStatus, SessionStatus

_SERVER_MANAGED = frozenset(
    {"created_at", "last_updated", "last_accessed", "download_count", "start_time", "end_time"}
)
_SESSION_KEYS = frozenset(
    {
        "session_id",
        "user_id",
        "project_name",
        "pipeline_type",
        "status",
        "current_agent",
        "progress",
        "metadata",
        "version",
        "error_message",
    }
)
_EXECUTION_KEYS = frozenset(
    {
        "execution_id",
        "session_id",
        "agent_name",
        "project_id",
        "status",
        "input_data",
        "output_data",
        "error_message",
        "retry_count",
    }
)
_PROJECT_KEYS = frozenset(
    {"user_id", "project_id", "project_name", "description", "tech_stack", "file_path", "size_mb"}
)

_default: AsyncStateClient | None = None
_default_lock = threading.Lock()


def configure(client: AsyncStateClient | StateClient | StateConfig | None) -> None:
    """Set the client the plan's functions use (None: build one from the environment on next use)."""
    global _default  # noqa: PLW0603 - the one process-wide client the plan's functions share
    with _default_lock:
        if client is None or isinstance(client, AsyncStateClient):
            _default = client
        elif isinstance(client, StateClient):
            _default = AsyncStateClient(client)
        else:
            _default = AsyncStateClient(config=client)


async def default_client() -> AsyncStateClient:
    """The process-wide client, created off the event loop on first use."""
    global _default  # noqa: PLW0603 - the one process-wide client the plan's functions share
    if _default is None:
        built = await AsyncStateClient.from_config(None)
        with _default_lock:
            if _default is None:
                _default = built
    return _default


async def save_pipeline_session(session: Mapping[str, Any]) -> dict[str, Any]:
    """Create the session if it is new, else apply the given status/progress/agent/metadata changes.

    A change is conditioned on `version` when the dict carries it, else on the version just read.
    """
    data = check.plan_dict("save_pipeline_session", session, ("session_id",), _SESSION_KEYS | _SERVER_MANAGED)
    client = await default_client()
    sid = check.identifier("session_id", data["session_id"])
    try:
        current = await client.sessions.get(sid)
    except SessionNotFoundError:
        if "user_id" not in data or "project_name" not in data:
            raise ValidationError(
                f"session {sid!r} does not exist; to create it, include user_id and project_name"
            ) from None
        if data.get("status", "ACTIVE") != "ACTIVE" or data.get("progress", 0) != 0:
            raise ValidationError(
                "a new session starts ACTIVE at progress 0; create it first, then advance it"
            ) from None
        created = await client.sessions.create(
            session_id=sid,
            user_id=data["user_id"],
            project_name=data["project_name"],
            pipeline_type=data.get("pipeline_type", "SIMPLE"),
            metadata=data.get("metadata"),
        )
        return created.to_dict()
    for fixed in ("user_id", "project_name", "pipeline_type"):
        if fixed in data and data[fixed] != getattr(current, fixed):
            raise ValidationError(
                f"{fixed} of session {sid!r} is {getattr(current, fixed)!r} and cannot change "
                f"(got {data[fixed]!r})"
            )
    changes: dict[str, Any] = {}
    if "status" in data and data["status"] != current.status:
        changes["status"] = data["status"]
    if "progress" in data and data["progress"] != current.progress:
        changes["progress"] = data["progress"]
    if "current_agent" in data and data["current_agent"] != current.current_agent:
        changes["current_agent"] = data["current_agent"]
    if "metadata" in data:
        changes["metadata"] = data["metadata"]
    if data.get("error_message"):
        changes["error_message"] = data["error_message"]
    if not changes:
        return current.to_dict()
    updated = await client.sessions.update(
        sid, expected_version=data.get("version", current.version), **changes
    )
    return updated.to_dict()


async def update_agent_execution(execution: Mapping[str, Any]) -> dict[str, Any]:
    """Record an agent's status change: RUNNING (start, or retry after FAILED), COMPLETED, FAILED.

    `execution_id` is the run's session_id (`session_id` is accepted as its alias). PENDING writes
    nothing: an agent with no item reads as PENDING.
    """
    data = check.plan_dict(
        "update_agent_execution",
        execution,
        ("agent_name", "status"),
        _EXECUTION_KEYS | _SERVER_MANAGED,
    )
    sid = data.get("execution_id", data.get("session_id"))
    if sid is None:
        raise ValidationError("update_agent_execution: give execution_id (the run's session_id)")
    agent = check.agent(data["agent_name"])
    status = check.enum(AgentStatus, "status", data["status"])
    client = await default_client()
    if status is AgentStatus.PENDING:
        check.identifier("execution_id", sid)
        return {"execution_id": sid, "agent_name": agent, "status": "PENDING", "written": False}
    if status is AgentStatus.RUNNING:
        try:
            done = await client.executions.start(
                sid, agent, input_data=data.get("input_data"), project_id=data.get("project_id")
            )
        except InvalidTransitionError as exc:
            if not (exc.current and exc.current.get("status") == AgentStatus.FAILED.value):
                raise
            done = await client.executions.retry(sid, agent)  # a FAILED agent runs again: a retry
    elif status is AgentStatus.COMPLETED:
        done = await client.executions.complete(sid, agent, output_data=data.get("output_data"))
    else:
        done = await client.executions.fail(
            sid,
            agent,
            error_message=data.get("error_message") or "agent failed (no error_message given)",
            output_data=data.get("output_data"),
        )
    return done.to_dict()


async def get_failed_sessions(
    older_than: timedelta = timedelta(hours=1), limit: int = 100
) -> list[dict[str, Any]]:
    """FAILED sessions idle for longer than `older_than` (default: the plan's one hour), as dicts."""
    client = await default_client()
    sessions = await client.sessions.failed_sessions(older_than=older_than, limit=limit)
    return [s.to_dict() for s in sessions if s.status is SessionStatus.FAILED]


async def save_user_project(project: Mapping[str, Any]) -> dict[str, Any]:
    """Create or update a user's project (download_count and created_at are kept)."""
    data = check.plan_dict(
        "save_user_project",
        project,
        ("user_id", "project_id", "project_name"),
        _PROJECT_KEYS | _SERVER_MANAGED,
    )
    client = await default_client()
    saved = await client.projects.save(
        user_id=data["user_id"],
        project_id=data["project_id"],
        project_name=data["project_name"],
        description=data.get("description"),
        tech_stack=data.get("tech_stack"),
        file_path=data.get("file_path"),
        size_mb=data.get("size_mb"),
    )
    return saved.to_dict()


def _reset_for_tests() -> None:
    """Forget the process-wide client (tests that change the environment call this)."""
    configure(None)


async def resume_pipeline(session_id: str, **options: Any) -> dict[str, Any]:
    """The plan's call: resume one failed or stalled run now (implemented by tdev-recovery-worker).

    Importable from `tdev_state` with the plan's other calls; the worker package is loaded on first use.
    """
    try:
        from tdev_recovery import resume_pipeline as resume
    except ImportError:
        raise ConfigurationError(
            "resume_pipeline needs the tdev-recovery-worker package installed next to tdev-state-client"
        ) from None
    return await resume(session_id, **options)
