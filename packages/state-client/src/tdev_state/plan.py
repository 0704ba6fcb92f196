"""The plan's calls, exactly as the pipeline writes them: awaitables taking and returning plain dicts.

    await save_pipeline_session({"session_id": project_id, "status": "ACTIVE", "current_agent": "nl_input",
                                 "progress": 0})
    await update_agent_execution({"execution_id": f"{project_id}-{agent_name}", "status": "COMPLETED",
                                  "output_data": json.dumps(result.output_data)})
    for session in await get_failed_sessions():
        if session["last_updated"] < time.time() - 3600: ...
    child = await fork_pipeline(project_id, "ui_selection", {"framework": "vue"})
    await save_user_project({"user_id": u, "project_id": pid, "project_name": p, "tech_stack": "[...]"})

They use one process-wide AsyncStateClient built from the environment on first use (`TDEV_ENV`,
`AWS_ENDPOINT_URL`, `AWS_REGION`, `TDEV_PAYLOAD_BUCKET`), or the one given to `configure()`.
Server-managed keys (timestamps, download_count) are accepted and ignored: the store sets them. Returned
timestamps are Number, epoch seconds, as the plan's tables type them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from datetime import timedelta
from importlib.metadata import entry_points
from typing import Any

from tdev_state import validate as check
from tdev_state.client import AsyncStateClient, StateClient
from tdev_state.config import StateConfig
from tdev_state.exceptions import (
    ConfigurationError,
    InvalidTransitionError,
    SessionExistsError,
    SessionNotFoundError,
    ValidationError,
)
from tdev_state.models import AGENTS, AgentStatus, AgentTransition, SessionStatus
from tdev_state.usage import plan_sink

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
        # Usage counting is on when the process uses the plan's metrics (tdev_metrics registered its
        # process-wide collector as the sink); a client passed to configure() keeps its own sink.
        sink = plan_sink()
        if sink is not None:
            built.sync.layer.usage.attach(sink)
        with _default_lock:
            if _default is None:
                _default = built
    return _default


async def save_pipeline_session(session: Mapping[str, Any]) -> dict[str, Any]:
    """Create the session if it is new, else apply the status / metadata / error the pipeline sends.

    A new session stores what it is given: `user_id` and `project_name` are optional (the orchestrator has
    no user id). `progress` and `current_agent` follow the agents' transitions: sent again they must agree
    with the stored run (InvalidTransitionError otherwise). A status is checked against the lifecycle and the
    run policy. A change is conditioned on `version` when the dict carries it.
    """
    data = check.plan_dict("save_pipeline_session", session, ("session_id",), _SESSION_KEYS | _SERVER_MANAGED)
    client = await default_client()
    sid = check.identifier("session_id", data["session_id"])
    try:
        current = await client.sessions.get(sid)
    except SessionNotFoundError:
        if data.get("status", "ACTIVE") != "ACTIVE" or data.get("progress", 0) != 0:
            raise ValidationError(
                f"session {sid!r} does not exist; a new session starts ACTIVE at progress 0 — create it "
                "so, then record its agents"
            ) from None
        if data.get("current_agent", AGENTS[0]) != AGENTS[0]:
            raise ValidationError(
                f"a new session starts at {AGENTS[0]}, not {data['current_agent']!r}"
            ) from None
        try:
            created = await client.sessions.create(
                session_id=sid,
                user_id=data.get("user_id"),
                project_name=data.get("project_name"),
                pipeline_type=data.get("pipeline_type", "SIMPLE"),
                metadata=_json_value(data.get("metadata"), "metadata"),
            )
        except SessionExistsError:
            current = await client.sessions.get(sid)  # a concurrent creator won; apply ours as an update
        else:
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
    for derived in ("progress", "current_agent"):
        if derived in data and data[derived] != getattr(current, derived):
            changes[derived] = data[derived]  # checked against the run by the store, never written
    if "metadata" in data:
        changes["metadata"] = _json_value(data["metadata"], "metadata")
    if data.get("error_message") is not None:
        changes["error_message"] = data["error_message"]
    if not changes:
        return current.to_dict()
    updated = await client.sessions.update(sid, expected_version=data.get("version"), **changes)
    return updated.to_dict()


async def update_agent_execution(execution: Mapping[str, Any]) -> dict[str, Any]:
    """Record an agent's status: RUNNING (a start, or a retry after FAILED), COMPLETED or FAILED.

    The agent is addressed either as the plan writes it, `execution_id = f"{project_id}-{agent_name}"`, or
    as `execution_id` (the run's session id) plus `agent_name`; both land in the same items. COMPLETED or
    FAILED with no RUNNING before it is a legal first record. A COMPLETED or FAILED for an agent whose
    last attempt FAILED is a retry that ended so (retry_count + 1). `input_data` / `output_data` given as
    JSON text are stored as the JSON value they encode. PENDING writes nothing.
    """
    data = check.plan_dict(
        "update_agent_execution", execution, ("status",), _EXECUTION_KEYS | _SERVER_MANAGED
    )
    client = await default_client()
    sid, agent = await _address(client, data)
    status = check.enum(AgentStatus, "status", data["status"])
    payloads: dict[str, Any] = {
        k: _json_value(data[k], k) for k in ("input_data", "output_data") if k in data
    }
    retry_count = data.get("retry_count")
    project = data.get("project_id")
    if status is AgentStatus.PENDING:
        _refuse_extra(data, status, ("input_data", "output_data", "error_message", "retry_count"))
        return {"execution_id": sid, "agent_name": agent, "status": "PENDING", "written": False}
    if status is AgentStatus.RUNNING:
        _refuse_extra(data, status, ("output_data", "error_message", "retry_count"))
        try:
            done = await client.executions.start(
                sid, agent, input_data=payloads.get("input_data"), project_id=project
            )
        except InvalidTransitionError as exc:
            if not _last_attempt_failed(exc):
                raise
            done = await client.executions.retry(sid, agent, **_only(payloads, "input_data"))
        return done.to_dict()
    if status is AgentStatus.COMPLETED:
        _refuse_extra(data, status, ("error_message",))

        async def finish() -> AgentTransition:
            return await client.executions.complete(
                sid, agent, retry_count=retry_count, project_id=project, **payloads
            )
    else:
        if not data.get("error_message"):
            raise ValidationError("update_agent_execution: a FAILED agent needs error_message (what failed)")

        async def finish() -> AgentTransition:
            return await client.executions.fail(
                sid,
                agent,
                error_message=data["error_message"],
                retry_count=retry_count,
                project_id=project,
                **payloads,
            )

    try:
        done = await finish()
    except InvalidTransitionError as exc:
        if not _last_attempt_failed(exc):
            raise
        await client.executions.retry(sid, agent)  # this attempt is a retry of the failed one
        done = await finish()
    return done.to_dict()


async def get_failed_sessions(
    older_than: timedelta = timedelta(hours=1), limit: int = 100
) -> list[dict[str, Any]]:
    """FAILED sessions idle for longer than `older_than` (default: the plan's one hour), as dicts whose
    timestamps are epoch seconds (`session["last_updated"] < time.time() - 3600` works)."""
    if not isinstance(older_than, timedelta):
        raise ValidationError(f"older_than must be a timedelta, got {type(older_than).__name__}")
    if older_than > _LONGEST_IDLE:
        raise ValidationError(f"older_than is {older_than}; at most {_LONGEST_IDLE.days} days")
    client = await default_client()
    sessions = await client.sessions.failed_sessions(older_than=older_than, limit=limit)
    return [s.to_dict() for s in sessions if s.status is SessionStatus.FAILED]


async def fork_pipeline(
    session_id: str, from_agent: str, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Fork a stopped run from `from_agent` (issue #27): the new run's session as a dict (its `session_id`,
    `parent_id`, `fork_point`, `replay`; epoch-second timestamps). The agents before `from_agent` are the
    run's finished results, its input gets `overrides` merged, and the recovery worker starts it
    (`sessions.fork` says what is refused)."""
    client = await default_client()
    session = await client.sessions.fork(session_id, from_agent=from_agent, overrides=overrides)
    return session.to_dict()


async def save_user_project(project: Mapping[str, Any]) -> dict[str, Any]:
    """Create or update a user's project (download_count and created_at are kept). `tech_stack` is a list
    of names or, as the plan types it, JSON text of one."""
    data = check.plan_dict(
        "save_user_project",
        project,
        ("user_id", "project_id", "project_name"),
        _PROJECT_KEYS | _SERVER_MANAGED,
    )
    stack = data.get("tech_stack")
    if isinstance(stack, str):
        try:
            stack = json.loads(stack)
        except ValueError:
            raise ValidationError(
                "tech_stack is text but not JSON; send a list of names or json.dumps of one"
            ) from None
        except RecursionError:
            raise ValidationError("tech_stack nests too deep; send a list of names") from None
    client = await default_client()
    saved = await client.projects.save(
        user_id=data["user_id"],
        project_id=data["project_id"],
        project_name=data["project_name"],
        description=data.get("description"),
        tech_stack=stack,
        file_path=data.get("file_path"),
        size_mb=data.get("size_mb"),
    )
    return saved.to_dict()


# --- helpers -------------------------------------------------------------------------------------------

_LONGEST_IDLE = timedelta(days=3650)


def _json_value(value: Any, field: str) -> Any:
    """A payload given as JSON text (the plan json.dumps its outputs) is stored as the value it encodes;
    text that is not JSON is stored as text."""
    if isinstance(value, str | bytes | bytearray):
        try:
            return json.loads(value)
        except (ValueError, UnicodeDecodeError):
            if isinstance(value, bytes | bytearray):
                raise ValidationError(f"{field} is bytes but not JSON text; send a value or text") from None
            return value
        except RecursionError:  # JSON thousands deep: the decoder's stack gives out, the value is refused
            raise ValidationError(f"{field} is JSON text that nests too deep; flatten it") from None
    return value


async def _address(client: AsyncStateClient, data: Mapping[str, Any]) -> tuple[str, str]:
    """(session_id, agent) from the plan's `f"{project_id}-{agent_name}"`, or execution_id + agent_name."""
    raw = data.get("execution_id", data.get("session_id"))
    if raw is None:
        raise ValidationError(
            'update_agent_execution: give execution_id (f"{project_id}-{agent_name}", or the session id '
            "with agent_name)"
        )
    execution_id = check.identifier("execution_id", raw)
    named = check.agent(data["agent_name"]) if "agent_name" in data else None
    suffix = next((a for a in AGENTS if execution_id.endswith(f"-{a}")), None)
    if named is not None and suffix not in (None, named):
        suffix = None  # "x-parser" with agent_name=search: the id is a session id that ends so
    if suffix is None:
        if named is None:
            raise ValidationError(
                f"update_agent_execution: execution_id {execution_id!r} names no agent; use "
                f'f"{{project_id}}-{{agent_name}}" (agents: {", ".join(AGENTS)}) or add agent_name'
            )
        sid, agent = execution_id, named
    else:
        sid, agent = execution_id[: -len(suffix) - 1], suffix
        if named is not None and "session_id" not in data and await _session_exists(client, execution_id):
            sid = execution_id  # the whole id is a session's: the current form, whose id ends so
    if "session_id" in data and "execution_id" in data and data["session_id"] != sid:
        raise ValidationError(
            f"session_id {data['session_id']!r} contradicts execution_id {execution_id!r} (run {sid!r})"
        )
    return check.identifier("session_id", sid), agent


async def _session_exists(client: AsyncStateClient, session_id: str) -> bool:
    try:
        await client.sessions.get(session_id)
    except SessionNotFoundError:
        return False
    return True


def _last_attempt_failed(exc: InvalidTransitionError) -> bool:
    return bool(exc.current and exc.current.get("status") == AgentStatus.FAILED.value)


def _refuse_extra(data: Mapping[str, Any], status: AgentStatus, keys: tuple[str, ...]) -> None:
    given = [k for k in keys if data.get(k) is not None]
    if given:
        raise ValidationError(
            f"update_agent_execution: {', '.join(given)} cannot be recorded with status {status.value}; "
            "send it with the status it belongs to (input with RUNNING, output with COMPLETED/FAILED, "
            "error_message with FAILED)"
        )


def _only(values: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {k: values[k] for k in keys if k in values}


async def resume_pipeline(session_id: str, **options: Any) -> dict[str, Any]:
    """The plan's call: resume one failed or stalled run now (implemented by tdev-recovery-worker).

    Importable from `tdev_state` with the plan's other calls. The implementation lives in the worker package,
    which depends on this one; it is found through the `tdev_state.plan` entry point, so tdev_state never
    imports tdev_recovery (no import cycle).
    """
    found = entry_points(group="tdev_state.plan", name="resume_pipeline")
    if not found:
        raise ConfigurationError(
            "resume_pipeline needs the tdev-recovery-worker package installed next to tdev-state-client"
        )
    resume = next(iter(found)).load()
    result: dict[str, Any] = await resume(session_id, **options)
    return result
