"""One item <-> model mapping per stored record: sessions, recovery candidates and histories, agent
executions, projects.

Each stored record has exactly one function from item to model, reading attributes through an `ItemReader`
(`runs.items`): listings, the CLI, the console and the worker all use these, and an item that is not as the
library writes it is a typed, skippable `MalformedItemError` here — never a KeyError three layers up. The
item side of a write is the lifecycle's (`runs.rules`), so a new session attribute touches its model and the
mapping below.
"""

from __future__ import annotations

from typing import Any

from tdev_state.exceptions import MalformedItemError, StateError
from tdev_state.layer import DynamoLayer
from tdev_state.lineage import ForkChild
from tdev_state.models import (
    AGENT_STEP,
    AgentExecution,
    AgentStatus,
    PipelineType,
    RecoveryCandidate,
    RecoveryEvent,
    RecoveryHistory,
    Session,
    SessionStatus,
    UserProject,
)
from tdev_state.payloads import PayloadContext, describe_payload
from tdev_state.runs.items import ItemReader
from tdev_state.schema import AGENT_EXECUTIONS, PIPELINE_SESSIONS, USER_PROJECTS
from tdev_state.storage import Item

#: "Not given" (a metadata value of None is a value).
UNSET: Any = object()


# --- sessions ------------------------------------------------------------------------------------------


def session_reader(item: Item) -> ItemReader:
    """Typed reads of a session item (its errors name the session)."""
    return ItemReader(item, PIPELINE_SESSIONS.logical_name, ("session_id",))


def candidate_from_item(item: Item) -> RecoveryCandidate:
    """The one mapping of a session item to a RecoveryCandidate; MalformedItemError if it is unreadable."""
    read = session_reader(item)
    return RecoveryCandidate(
        session_id=read.text("session_id"),
        status=read.enum(SessionStatus, "status"),
        last_updated=read.moment("last_updated"),
        progress=read.whole("progress"),
        current_agent=read.text("current_agent", None),
        version=read.whole("version"),
        lease_expires_at=read.moment("lease_expires_at", None),
        fencing_token=read.whole("fencing_token", 0),
        lease_owner=read.text("lease_owner", None),
        resume_attempts=read.whole("resume_attempts", 0),
        resume_count=read.whole("resume_count", 0),
        project_name=read.text("project_name", None),
        pipeline_type=read.enum(PipelineType, "pipeline_type", PipelineType.SIMPLE).value,
        failed_agents=_agents(read, "failed_agents"),
        expires_at=read.moment("expires_at", None),
        live_for=read.number("live_for"),
        beats=read.whole("beats", 0),
        last_resumed_at=read.moment("last_resumed_at", None),
    )


def history_from_item(item: Item) -> RecoveryHistory:
    """The one mapping of a session item to its RecoveryHistory (MalformedItemError if unreadable)."""
    read = session_reader(item)
    events = []
    for entry in read.entries("recovery_log"):
        step = ItemReader(entry, f"{PIPELINE_SESSIONS.logical_name} recovery_log", ())
        step.key = dict(read.key)
        events.append(
            RecoveryEvent(
                kind=step.text("k"),
                at=step.moment("at"),
                fencing_token=step.whole("t", 0),
                worker_id=step.text("w", ""),
                attempt=step.whole("n", None),
                detail=step.text("d", None),
            )
        )
    return RecoveryHistory(
        session_id=read.text("session_id"),
        status=read.enum(SessionStatus, "status"),
        fencing_token=read.whole("fencing_token", 0),
        resume_count=read.whole("resume_count", 0),
        resume_attempts=read.whole("resume_attempts", 0),
        lease_owner=read.text("lease_owner", None),
        lease_expires_at=read.moment("lease_expires_at", None),
        last_resumed_at=read.moment("last_resumed_at", None),
        last_resume_error=read.text("last_resume_error", None),
        abandon_reason=read.text("abandon_reason", None),
        events=tuple(events),
    )


def _agents(read: ItemReader, name: str) -> tuple[str, ...]:
    """A set of agent names, in pipeline order; an unknown name makes the item malformed."""
    names = read.texts(name)
    unknown = [a for a in names if a not in AGENT_STEP]
    if unknown:
        raise read.malformed(name, f"names {unknown[0][:40]!r}, which is not an agent")
    return tuple(sorted(names, key=AGENT_STEP.__getitem__))


def session_context(session_id: str) -> PayloadContext:
    """Where a session's metadata lives (the associated data of sealed metadata)."""
    return PayloadContext(PIPELINE_SESSIONS.logical_name, session_id)


def session_from_item(
    item: Item, layer: DynamoLayer, *, strict: bool = True, metadata: Any = UNSET, load_metadata: bool = True
) -> Session:
    """Build a Session from its stored item, decoding metadata (or taking the value already known).

    `strict=False` (listings, and the session an update returns): a metadata payload that cannot be read
    (its S3 object expired or vanished, a key the caller may not use) leaves `metadata` None and says why in
    `metadata_error`, instead of failing the whole page. `get()` is strict: the typed error is raised.
    MalformedItemError (whatever `strict` says) when the item itself is unreadable.
    """
    read = session_reader(item)
    sid = read.text("session_id")
    error: str | None = None
    stored = item.get("metadata")
    if metadata is UNSET and not load_metadata and not isinstance(stored, str | None):
        # Offloaded or sealed: reading it costs an S3 GET or a KMS call per session; a listing that does
        # not show metadata skips it (get() reads it).
        metadata, error = None, "not loaded: listed with load_metadata=False; get() the session to read it"
    if metadata is UNSET:
        try:
            metadata = layer.payloads.decode(
                item.get("metadata"),
                field="metadata",
                context=session_context(sid),
            )
        except StateError as exc:
            if strict:
                raise
            metadata, error = None, f"{type(exc).__name__}: {exc}"
    return Session(
        session_id=read.text("session_id"),
        user_id=read.text("user_id", None),
        project_name=read.text("project_name", None),
        pipeline_type=read.enum(PipelineType, "pipeline_type", PipelineType.SIMPLE),
        status=read.enum(SessionStatus, "status"),
        current_agent=read.text("current_agent", None),
        progress=read.whole("progress"),
        created_at=read.moment("created_at"),
        last_updated=read.moment("last_updated"),
        version=read.whole("version"),
        metadata=metadata,
        error_message=read.text("error_message", None),
        resume_count=read.whole("resume_count", 0),
        failed_agents=_agents(read, "failed_agents"),
        metadata_error=error,
        fail_count=read.whole("fail_count", 0),
        live_for=read.number("live_for"),
        refs=tuple(str(ref) for ref in item.get("refs") or ()),
        parent_id=read.text("parent_id", None),
        fork_point=_agent_or_none(read, "fork_point"),
        replay=item.get("replay") is True,
        fork_overrides=read.text("fork_overrides", None),
        children=fork_children(read),
    )


def _agent_or_none(read: ItemReader, name: str) -> str | None:
    value: str | None = read.text(name, None)
    if value is not None and value not in AGENT_STEP:
        raise read.malformed(name, f"is {value[:40]!r}, which is not an agent")
    return value


def fork_children(read: ItemReader) -> tuple[ForkChild, ...]:
    """The runs forked from a run, oldest first (`children`: maps of run_id, fork_point, created_at)."""
    children = []
    for entry in read.entries("children"):
        child = ItemReader(entry, PIPELINE_SESSIONS.logical_name, ("run_id",))
        try:
            point = child.text("fork_point")
            moment = child.moment("created_at")
            run_id = child.text("run_id")
        except MalformedItemError as exc:
            problem = f"holds an entry whose {exc.attribute!r} {exc.problem}"
            raise read.malformed("children", problem) from None
        if point not in AGENT_STEP:
            raise read.malformed("children", f"names fork point {point[:40]!r}, which is not an agent")
        children.append(ForkChild(run_id, point, moment))
    return tuple(children)


# --- agent executions ----------------------------------------------------------------------------------


def execution_reader(item: Item) -> ItemReader:
    """Typed reads of an agent item (its errors name the run and the agent's sort key)."""
    return ItemReader(item, AGENT_EXECUTIONS.logical_name, ("execution_id", "agent_name"))


def execution_context(session_id: str, agent: str) -> PayloadContext:
    """Where an agent's payloads live (the associated data of sealed input/output)."""
    return PayloadContext(AGENT_EXECUTIONS.logical_name, session_id, agent)


def execution_from_item(item: Item, layer: DynamoLayer, *, load_payloads: bool = True) -> AgentExecution:
    """The one mapping of an agent item to its model (MalformedItemError if the item is unreadable)."""
    read = execution_reader(item)
    sid = read.text("execution_id")
    agent = read.text("agent")
    if agent not in AGENT_STEP:
        raise read.malformed("agent", f"is {agent[:40]!r}, which is not an agent")

    # A fork's copied item holds its parent's payload attributes as stored: sealed ones stay bound to the run
    # that sealed them (`payload_origin`), so they open without being decoded and sealed again.
    origin = read.text("payload_origin", sid)

    def payload(name: str) -> Any:
        if not load_payloads:
            return None
        context = execution_context(origin, agent)
        return layer.payloads.decode(item.get(name), field=name, context=context)

    return AgentExecution(
        execution_id=sid,
        agent_name=agent,
        step=read.whole("step"),
        status=read.enum(AgentStatus, "status"),
        project_id=read.text("project_id", None),
        start_time=read.moment("start_time", None),
        end_time=read.moment("end_time", None),
        input_data=payload("input_data"),
        output_data=payload("output_data"),
        error_message=read.text("error_message", None),
        retry_count=read.whole("retry_count", 0),
        input_bytes=read.whole("input_bytes", 0),
        output_bytes=read.whole("output_bytes", 0),
        last_error=read.text("last_error", None),
        input_location=describe_payload(item.get("input_data")),
        output_location=describe_payload(item.get("output_data")),
        agent_version=_version(read, item.get("agent_version")),
        origin_run=read.text("payload_origin", None),
    )


def _version(read: ItemReader, value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise read.malformed("agent_version", "is not a map of texts")
    return {str(k): v for k, v in value.items()}


# --- projects ------------------------------------------------------------------------------------------


def project_from_item(item: Item) -> UserProject:
    """The one mapping of a project item to its model (MalformedItemError if the item is unreadable)."""
    read = ItemReader(item, USER_PROJECTS.logical_name, ("user_id", "project_id"))
    return UserProject(
        user_id=read.text("user_id"),
        project_id=read.text("project_id"),
        project_name=read.text("project_name"),
        description=read.text("description", ""),
        tech_stack=list(read.texts("tech_stack")),
        download_count=read.whole("download_count", 0),
        last_accessed=read.moment("last_accessed", None),
        created_at=read.moment("created_at", None),
        file_path=read.text("file_path", None),
        size_mb=read.number("size_mb"),
    )
