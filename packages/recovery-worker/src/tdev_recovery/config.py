"""Worker configuration: a frozen dataclass; the entry point reads flags and environment once."""

from __future__ import annotations

import math
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from tdev_recovery.exceptions import RecoveryError
from tdev_state import RecoveryPolicy, RunPolicy, ValidationError
from tdev_state import validate as check


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Temporal-style: delay = initial * coefficient**(attempt-1), capped, with full jitter."""

    initial_interval: timedelta = timedelta(seconds=1)
    backoff_coefficient: float = 2.0
    maximum_interval: timedelta = timedelta(seconds=100)
    maximum_attempts: int = 5
    #: Resume errors (ResumeRejected kinds, by the HTTP status class or exception name) never retried.
    non_retryable: frozenset[str] = frozenset({"http_4xx", "ValueError"})

    def __post_init__(self) -> None:
        if isinstance(self.maximum_attempts, bool) or not isinstance(self.maximum_attempts, int):
            raise RecoveryError(f"maximum_attempts must be a whole number, got {self.maximum_attempts!r:.40}")
        if self.maximum_attempts < 1:
            raise RecoveryError("maximum_attempts must be >= 1")
        if (
            not isinstance(self.backoff_coefficient, int | float)
            or not 1 <= self.backoff_coefficient < math.inf
        ):
            raise RecoveryError("backoff_coefficient must be >= 1")
        _positive_duration("initial_interval", self.initial_interval)
        _positive_duration("maximum_interval", self.maximum_interval)
        if self.maximum_interval < self.initial_interval:
            raise RecoveryError("maximum_interval must be at least initial_interval")

    def delay(self, attempt: int) -> float:
        """The cap for the wait before attempt `attempt + 1`; callers draw uniformly below it."""
        raw = self.initial_interval.total_seconds() * self.backoff_coefficient ** (attempt - 1)
        return min(raw, self.maximum_interval.total_seconds())


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    """How one worker replica finds, claims and resumes runs."""

    #: The name every claim of this replica writes (the run's recovery history shows it). Default:
    #: HOST-PID-RANDOM (the host name, the process id and six hex digits), unique per start.
    worker_id: str = field(default_factory=_default_worker_id)
    #: Seconds between sweeps of the recovery index.
    poll_interval: float = 5.0
    #: FAILED runs are resumed once idle this long (the plan: one hour).
    retry_delay: timedelta = timedelta(hours=1)
    #: None (the default): a run is stalled once the window its pipeline declared has passed — its current
    #: agent's deadline (timeout x attempts + grace, the run policy's per-agent limits) or, if it
    #: heartbeats, the heartbeat timeout. A timedelta: one threshold for every agent (demos, tests).
    stall_threshold: timedelta | None = None
    #: After a hand-over the run is not taken again for this long (None: 120 s; with a stall threshold,
    #: the threshold).
    resume_cooldown: timedelta | None = None
    #: How long this replica must see a suspect run unchanged on its own monotonic clock before claiming
    #: it, so a pipeline host with a skewed clock never loses a live run (None: 45 s, or half the stall
    #: threshold; timedelta(0) trusts the pipeline's clock).
    confirm: timedelta | None = None
    #: How long a claim lasts without a lease heartbeat; heartbeats every third of it.
    lease: timedelta = timedelta(seconds=30)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: Successful hand-overs of one run before it is ABANDONED (a run that keeps failing).
    max_resumes: int = 3
    #: Resumes in flight at once in this replica.
    concurrency: int = 8
    #: On shutdown, how long in-flight resumes may finish before they are cancelled and released.
    grace_period: float = 20.0
    #: Candidates fetched per sweep.
    batch_size: int = 100
    #: How long one attempt may wait on a busy pipeline (429/503/timeout: back-pressure, which uses no
    #: attempt) before that wait counts as a failed attempt with the reason "pipeline busy".
    busy_timeout: timedelta = timedelta(minutes=10)

    def __post_init__(self) -> None:
        try:  # the id every claim writes: refused here, at start, rather than at each claim of each sweep
            check.identifier("worker_id", self.worker_id)
        except ValidationError as exc:
            raise RecoveryError(str(exc)) from None
        for name in ("retry_delay", "lease", "busy_timeout"):
            _positive_duration(name, getattr(self, name))
        for name in ("stall_threshold", "resume_cooldown"):
            if getattr(self, name) is not None:
                _positive_duration(name, getattr(self, name))
        if self.confirm is not None and (
            not isinstance(self.confirm, timedelta) or self.confirm < timedelta(0)
        ):
            raise RecoveryError(f"confirm must be a timedelta of 0 or more, got {self.confirm!r:.60}")
        for name in ("poll_interval", "grace_period"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise RecoveryError(f"{name} must be a positive number of seconds, got {value!r:.40}")
        if not isinstance(self.retry, RetryPolicy):
            raise RecoveryError(f"retry must be a RetryPolicy, got {type(self.retry).__name__}")
        for name in ("concurrency", "batch_size", "max_resumes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise RecoveryError(f"{name} must be a whole number, got {value!r:.40}")
        if self.lease < timedelta(seconds=1):
            raise RecoveryError("lease must be at least one second")
        if self.concurrency < 1 or self.batch_size < 1 or self.max_resumes < 1:
            raise RecoveryError("concurrency, batch_size and max_resumes must be >= 1")


def recovery_policy(config: WorkerConfig, run_policy: RunPolicy) -> RecoveryPolicy:
    """The one liveness rule (`tdev_state.RecoveryPolicy`) as this worker's settings shape it."""
    return RecoveryPolicy(
        run_policy=run_policy,
        stall_threshold=config.stall_threshold,
        resume_cooldown=config.resume_cooldown,
        confirm=config.confirm,
    )


def _positive_duration(name: str, value: object) -> None:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise RecoveryError(f"{name} must be a positive timedelta, got {value!r:.60}")
