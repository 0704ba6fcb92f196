"""Typed models of the three entities, the pipeline's agents, and the legal state transitions."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

#: The nine agents, in pipeline order. Progress N means agents 1..N completed.
AGENTS: tuple[str, ...] = (
    "nl_input",
    "ui_selection",
    "parser",
    "component_decision",
    "match_rate",
    "search",
    "generation",
    "assembly",
    "download",
)
AGENT_STEP: dict[str, int] = {name: i + 1 for i, name in enumerate(AGENTS)}


class PipelineType(StrEnum):
    """How much of the pipeline a run uses (the plan's two kinds)."""

    SIMPLE = "SIMPLE"
    PRODUCTION = "PRODUCTION"


class SessionStatus(StrEnum):
    """A run's lifecycle. ACTIVE and FAILED are open (visible to recovery); the others are final."""

    ACTIVE = "ACTIVE"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    ABANDONED = "ABANDONED"


class AgentStatus(StrEnum):
    """One agent's lifecycle within a run; a missing item reads as PENDING."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


#: Legal session status changes. FAILED -> ACTIVE is a retry or a recovery resume.
SESSION_TRANSITIONS: dict[SessionStatus, frozenset[SessionStatus]] = {
    SessionStatus.ACTIVE: frozenset(
        {
            SessionStatus.ACTIVE,
            SessionStatus.COMPLETED,
            SessionStatus.FAILED,
            SessionStatus.ABANDONED,
        }
    ),
    SessionStatus.FAILED: frozenset({SessionStatus.FAILED, SessionStatus.ACTIVE, SessionStatus.ABANDONED}),
    SessionStatus.COMPLETED: frozenset(),
    SessionStatus.ABANDONED: frozenset(),
}

#: Legal agent status changes; a FAILED agent runs again only through a retry (retry_count + 1).
AGENT_TRANSITIONS: dict[AgentStatus, frozenset[AgentStatus]] = {
    AgentStatus.PENDING: frozenset({AgentStatus.RUNNING}),
    AgentStatus.RUNNING: frozenset({AgentStatus.COMPLETED, AgentStatus.FAILED}),
    AgentStatus.FAILED: frozenset({AgentStatus.RUNNING}),
    AgentStatus.COMPLETED: frozenset(),
}

OPEN_STATUSES = frozenset({SessionStatus.ACTIVE, SessionStatus.FAILED})


def predecessors(target: SessionStatus) -> list[SessionStatus]:
    """Statuses from which `target` may be reached, in a stable order (for condition expressions)."""
    return sorted(s for s, allowed in SESSION_TRANSITIONS.items() if target in allowed)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def format_ts(moment: datetime) -> str:
    """Fixed-width ISO-8601 UTC with microseconds, so stored timestamps sort as strings."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(text: str) -> datetime:
    """Inverse of format_ts."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_ts(value)
    if isinstance(value, StrEnum):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class _DictMixin:
    def to_dict(self) -> dict[str, Any]:
        """A plain dict (ISO timestamps, string enums), the shape the plan's dict API returns."""
        return {k: _plain(v) for k, v in asdict(self).items()}  # type: ignore[call-overload]


@dataclass(frozen=True)
class Session(_DictMixin):
    """A pipeline run as stored, including its optimistic-locking version."""

    session_id: str
    user_id: str
    project_name: str
    pipeline_type: PipelineType
    status: SessionStatus
    current_agent: str | None
    progress: int
    created_at: datetime
    last_updated: datetime
    version: int
    metadata: Any = None
    error_message: str | None = None
    resume_count: int = 0


@dataclass(frozen=True)
class AgentExecution(_DictMixin):
    """One agent of one run. `execution_id` is the run's session_id; payloads are decoded JSON."""

    execution_id: str
    agent_name: str
    step: int
    status: AgentStatus
    project_id: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    input_data: Any = None
    output_data: Any = None
    error_message: str | None = None
    retry_count: int = 0
    input_bytes: int = 0
    output_bytes: int = 0

    @property
    def duration_seconds(self) -> float | None:
        """Wall time of the last attempt, when it has finished."""
        if self.start_time and self.end_time:
            return (self.end_time - self.start_time).total_seconds()
        return None


@dataclass(frozen=True)
class AgentTransition(_DictMixin):
    """What a start/complete/fail/retry did: the agent's new status and the session it moved."""

    execution_id: str
    agent_name: str
    status: AgentStatus
    session_status: SessionStatus
    progress: int
    at: datetime
    #: True when this call repeated one that had already been applied, so nothing changed.
    duplicate: bool = False


@dataclass(frozen=True)
class RecoveryCandidate(_DictMixin):
    """An open run seen on the (eventually consistent) recovery index; claim it on the base table."""

    session_id: str
    status: SessionStatus
    last_updated: datetime
    progress: int
    current_agent: str | None
    version: int
    #: Until when a recovery worker holds the run (None: nobody does).
    lease_expires_at: datetime | None = None
    fencing_token: int = 0


@dataclass(frozen=True)
class UserProject(_DictMixin):
    """A generated project of a user."""

    user_id: str
    project_id: str
    project_name: str
    description: str = ""
    tech_stack: list[str] = field(default_factory=list)
    download_count: int = 0
    last_accessed: datetime | None = None
    created_at: datetime | None = None
    file_path: str | None = None
    size_mb: float | None = None


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing; pass `next_cursor` back to get the next page (None: this was the last)."""

    items: list[T]
    next_cursor: str | None = None
