"""Typed models of the three entities and the run policy (the agents are declared in tdev_state.agents)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, Generic, TypeVar

from tdev_state.agents import AGENT_STEP, AGENTS, PIPELINE
from tdev_state.exceptions import MalformedItemError
from tdev_state.lineage import ForkChild

# AGENTS and AGENT_STEP are declared in tdev_state.agents and stay importable from here.
__all__ = [
    "AGENTS",
    "AGENT_STEP",
    "TDEVELOPER_AGENT_LIMITS",
    "AgentExecution",
    "AgentStatus",
    "AgentTransition",
    "Page",
    "PipelineType",
    "RecoveryCandidate",
    "RecoveryEvent",
    "RecoveryHistory",
    "RunPolicy",
    "Session",
    "SessionStatus",
    "UserProject",
    "epoch",
    "epoch_float",
    "from_epoch",
    "utcnow",
]


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


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROS = Decimal(1_000_000)


def epoch(moment: datetime) -> Decimal:
    """A moment as the plan stores it: Number, epoch seconds, microseconds kept exactly.

    Computed in integers (not `datetime.timestamp()`'s float), so `from_epoch(epoch(t)) == t` bit for bit:
    conditions that compare a stored time with one read earlier (claims) need that exactness.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return Decimal(micros) / _MICROS


def from_epoch(value: Any) -> datetime:
    """Inverse of `epoch` (accepts the Decimal DynamoDB returns, or an int/float)."""
    micros = int((Decimal(value) * _MICROS).to_integral_value())
    return datetime.fromtimestamp(0, UTC) + timedelta(microseconds=micros)


def epoch_float(moment: datetime) -> float:
    """Epoch seconds as a float: what the plan's dicts carry (`time.time()` compares with it)."""
    return float(epoch(moment))


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return epoch_float(value)
    if isinstance(value, StrEnum):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class _DictMixin:
    def to_dict(self) -> dict[str, Any]:
        """A plain dict (epoch-second timestamps, string enums), the shape the plan's dict API returns."""
        return {k: _plain(v) for k, v in asdict(self).items()}  # type: ignore[call-overload]


#: Per agent (timeout of one attempt in seconds, attempts): T-Developer's `ProductionECSPipeline` profile, as
#: `tdev_state.agents.PIPELINE` declares it.
TDEVELOPER_AGENT_LIMITS: tuple[tuple[str, float, int], ...] = tuple(
    (a.name, a.timeout_seconds, a.attempts) for a in PIPELINE
)


@dataclass(frozen=True)
class RunPolicy:
    """When a run goes on after an agent fails for good, and when a finished run counts as successful.

    T-Developer's orchestrator records a failed agent and runs the next one, except for the critical agents
    (`generation`, `assembly`), whose failure stops the run; a run succeeds when at least `min_succeeded`
    agents succeeded and fewer than `max_failures` failed. Configurable per deployment
    (`TDEV_CRITICAL_AGENTS`, `StateConfig.run_policy`).
    """

    critical_agents: frozenset[str] = frozenset(a.name for a in PIPELINE if a.critical)
    min_succeeded: int = 7
    max_failures: int = 3
    #: Per agent: (timeout of one attempt in seconds, attempts in all = in-process retries + 1). The default
    #: is T-Developer's `ProductionECSPipeline` profile; an agent not listed gets `default_limits`.
    agent_limits: tuple[tuple[str, float, int], ...] = TDEVELOPER_AGENT_LIMITS
    default_limits: tuple[float, int] = (300.0, 1)
    #: Added to an agent's timeout * attempts before a RUNNING agent that never heartbeats is stalled.
    deadline_grace_seconds: float = 60.0
    #: A run whose last sign of life was a heartbeat is stalled once it is older than this. PipelineRun
    #: beats every 30 s: three missed beats.
    heartbeat_timeout_seconds: float = 90.0

    def limits(self, agent: str) -> tuple[float, int]:
        """(timeout of one attempt in seconds, attempts in all) for `agent`."""
        for name, timeout, attempts in self.agent_limits:
            if name == agent:
                return timeout, attempts
        return self.default_limits

    def attempts(self, agent: str) -> int:
        """How many attempts the pipeline makes at `agent` in process (retries + 1)."""
        return self.limits(agent)[1]

    def deadline_seconds(self, agent: str) -> float:
        """How long `agent` may legally stay RUNNING without a heartbeat: timeout * attempts + grace."""
        timeout, attempts = self.limits(agent)
        return timeout * attempts + self.deadline_grace_seconds

    def silence_seconds(self, agent: str | None) -> float:
        """How long a run may legally stay silent while `agent` is its current agent: the deadline of that
        agent or of the one after it, whichever is longer — after a failed attempt the pipeline either
        retries the agent in process or moves on to the next one, which the plan's calls record only when
        it ends."""
        if agent not in AGENT_STEP:
            return self.longest_silence_seconds
        step = AGENT_STEP[agent]
        following = AGENTS[step] if step < len(AGENTS) else agent
        return max(self.deadline_seconds(agent), self.deadline_seconds(following))

    @property
    def longest_silence_seconds(self) -> float:
        """The longest silence any agent may legally keep (generation's 2 x 300 s + grace by default)."""
        return max(self.deadline_seconds(a) for a in AGENTS)

    @property
    def shortest_silence_seconds(self) -> float:
        """The shortest window a run of this policy ever declares (a heartbeat's, or an agent's)."""
        return min(self.heartbeat_timeout_seconds, *(self.silence_seconds(a) for a in AGENTS))

    @property
    def tolerated_failures(self) -> int:
        """How many agents may fail for good in a run that still ends COMPLETED."""
        return max(0, min(len(AGENTS) - self.min_succeeded, self.max_failures - 1))

    def is_critical(self, agent: str) -> bool:
        """Whether `agent` failing for good stops the run (the session becomes FAILED)."""
        return agent in self.critical_agents


@dataclass(frozen=True)
class Session(_DictMixin):
    """A pipeline run as stored, including its optimistic-locking version.

    `user_id` and `project_name` are optional: T-Developer's orchestrator has no user id, and a run without
    one is simply absent from the by-user index. `failed_agents` lists the agents that failed for good and
    were tolerated (the run went on); a COMPLETED run with a non-empty list completed with tolerated
    failures.
    """

    session_id: str
    user_id: str | None
    project_name: str | None
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
    failed_agents: tuple[str, ...] = ()
    #: Why `metadata` is None in a listing although the run has some (its payload could not be read).
    metadata_error: str | None = None
    #: Times the run entered FAILED (failure events; a run that failed, was resumed and failed again
    #: counts 2). A run "failed" in the usage report when this is at least 1.
    fail_count: int = 0
    #: Seconds the run's last write said it may stay silent (its agent's deadline, the heartbeat timeout,
    #: or a resume's cool-down): what `RecoveryPolicy` judges "stalled" by, as for a RecoveryCandidate.
    live_for: float | None = None
    #: The caller's own ids for this run (unique per env; `sessions.resolve` finds the run by any of them).
    refs: tuple[str, ...] = ()
    #: A fork (`sessions.fork`): the run it was forked from, the agent it runs from, True when it has no
    #: overrides (a replay), and the overrides as JSON text; `children`: the runs forked from this one.
    parent_id: str | None = None
    fork_point: str | None = None
    replay: bool = False
    fork_overrides: str | None = None
    children: tuple[ForkChild, ...] = ()

    @property
    def recoveries(self) -> int:
        """Resumes that recovered the run: a fork's first resume is how it starts, not a recovery."""
        return max(0, self.resume_count - (1 if self.parent_id is not None else 0))


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
    #: The error of the attempt before the latest retry (kept when the retry succeeds).
    last_error: str | None = None
    #: Where each payload is stored ("inline", "inline, compressed", "S3 s3://…", "…, sealed"; "none").
    input_location: str = "none"
    output_location: str = "none"
    #: Which code, model and prompt made the latest attempt, as the pipeline said (None: not recorded).
    agent_version: dict[str, str] | None = None
    #: A fork's copy of a finished agent: the run that produced it (None: this run did). Counts of agent
    #: work leave copies out, or a fork would count its parent's agents again.
    origin_run: str | None = None

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
    #: True when the run went on past this agent's failure (a non-critical agent under the run policy).
    tolerated: bool = False
    #: What could not be stored exactly (lossy mode): one line per value stored in its marked lossy form.
    warnings: tuple[str, ...] = ()


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
    #: Who holds the lease, resume attempts of the current recovery, resumes accepted so far.
    lease_owner: str | None = None
    resume_attempts: int = 0
    resume_count: int = 0
    #: What the run is, for people looking at a backlog.
    project_name: str | None = None
    pipeline_type: str = "SIMPLE"
    #: How long the run's last writer said it may stay silent (seconds; None on items written before it).
    live_for: float | None = None
    #: Heartbeats so far: with `version`, the liveness signature a claimer watches (`LivenessObserver`).
    beats: int = 0
    #: When the last resume was handed over (the cool-down runs from it while nothing newer was written).
    last_resumed_at: datetime | None = None
    #: The agents the run policy tolerated as failed (never rerun), in pipeline order.
    failed_agents: tuple[str, ...] = ()
    #: When the run's items expire (its retention; None: kept for ever). See docs/data-model.md.
    expires_at: datetime | None = None

    @property
    def signature(self) -> tuple[str, int, int, datetime]:
        """What changes whenever the run shows a sign of life: any transition or heartbeat."""
        return (self.status.value, self.version, self.beats, self.last_updated)


@dataclass(frozen=True)
class RecoveryEvent(_DictMixin):
    """One step of a run's recovery, as the claim that made it recorded it on the session item."""

    #: "claimed", "attempt_failed", "resumed", "released" or "abandoned".
    kind: str
    at: datetime
    fencing_token: int
    worker_id: str
    #: The resume attempt this step belongs to (counted across lost claims); None for a claim, which
    #: learns its attempt number only from the write that makes it.
    attempt: int | None
    #: The error of a failed attempt, or an abandon's reason.
    detail: str | None = None


@dataclass(frozen=True)
class RecoveryHistory(_DictMixin):
    """What recovery did to one run: counters and lease as they stand now, and every step in order."""

    session_id: str
    status: SessionStatus
    #: Claims ever made on the run (each claim raises it by one).
    fencing_token: int
    #: Resumes the pipeline accepted.
    resume_count: int
    #: Attempts of the current (or last) recovery, reset when a resume is accepted.
    resume_attempts: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    last_resumed_at: datetime | None
    last_resume_error: str | None
    abandon_reason: str | None
    events: tuple[RecoveryEvent, ...] = ()


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
    #: Items of this page that could not be read (MalformedItemError each: key, attribute, problem); they
    #: are left out of `items`, logged, and the page goes on.
    skipped: tuple[MalformedItemError, ...] = ()


@dataclass(frozen=True)
class RunEvent(_DictMixin):
    """One transition of a run, as the live progress stream shows it (`tdev_state.events`).

    `seq` is the run's `version` after the transition: it goes up by one per versioned transition and never
    goes back, so a reader that saw `seq` n asks for everything after n and misses nothing, sees nothing
    twice — across processes and resumes. Events carry statuses, times and sizes, never payloads.
    `kind`: run_opened, run_updated, run_finished (the orchestrator's verdict, or a status it set that ends
    or fails the run), agent_started, agent_retried, agent_completed, agent_failed, agent_interrupted,
    claimed, resume_attempt_failed, resumed, abandoned — or `transition` for a run stored before events
    were (its details unknown).
    """

    run_id: str
    seq: int
    kind: str
    at: datetime | None
    agent: str | None = None
    #: The agent's attempt (1 for the first) for agent events.
    attempt: int | None = None
    #: The agent's status after an agent event; the run's status after a run event.
    status: str | None = None
    #: The run's status after this event, when the event changed it (the run ended or failed).
    run_status: str | None = None
    error: str | None = None
    #: Seconds from the attempt's start to this event (agent_completed, agent_failed, agent_interrupted).
    seconds: float | None = None
    output_bytes: int | None = None
    #: agent_failed: the run policy lets the run move past this agent. agent_started: the failed agent the
    #: run moved past with this start (its failure is final and tolerated).
    tolerated: str | None = None
    #: claimed, resume_attempt_failed, resumed, abandoned: the claim's fencing token.
    fencing_token: int | None = None


@dataclass(frozen=True)
class RunEvents(_DictMixin):
    """A run's events after a position, read at one moment: `seq` is the run's latest (every event up to
    it is in `events`, from `after` on), `ended` whether the run is COMPLETED or ABANDONED (no event can
    follow)."""

    run_id: str
    seq: int
    status: str
    ended: bool
    events: tuple[RunEvent, ...]
