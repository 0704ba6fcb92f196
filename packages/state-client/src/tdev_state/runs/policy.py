"""When a run counts as stalled: the one rule the recovery worker, the console and `resume_pipeline` share.

Three parts, each with the reason it exists:

- **The writer declares its silence.** Every sign of life (a transition, a heartbeat, a hand-over) stores
  `live_for`: how long the run may legally stay silent now — the current agent's deadline (timeout x
  attempts + grace, the run policy's per-agent limits) after a transition, the heartbeat timeout after a
  heartbeat, the resume cool-down after a hand-over. A run in generation's legal 2 x 300 s is therefore
  never taken, and a dead one is found soon after *its* agent's deadline instead of at one global threshold.
- **The sparse recovery index is sorted by `stalled_at`** (= the write's moment + `live_for`), so the sweep
  stays a Query of the runs whose window has passed, never a Scan. Rewriting an index key costs 4 write units
  inside a transaction, so a process rewrites it at most once per liveness interval per run — unless the new
  moment is earlier than the one it wrote, which keeps the stored key at or before the exact one: the index
  may name a run early (confirmed on the base table), never late.
- **Clocks are never compared for the decision.** `stalled_at` is in the writer's clock and the sweep reads it
  with its own, so a pipeline host whose clock is behind looks stalled early. The index hit is only a
  suspicion: `LivenessObserver` records the run's liveness signature (status, version, heartbeat count,
  last write) and the claimer takes the run only after it has seen that signature unchanged for the
  confirmation window on its *own monotonic clock*. A live pipeline heartbeats (or writes) well within that
  window, whatever its clock says, so a skewed host's heartbeating runs are never taken.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from tdev_state.exceptions import ConfigurationError
from tdev_state.models import RecoveryCandidate, RunPolicy, Session, SessionStatus

#: The default confirmation window: longer than PipelineRun's 30 s heartbeat interval, with room for a slow
#: store; shortened to half the stall threshold when one is set (demos, tests).
DEFAULT_CONFIRM = timedelta(seconds=45)
#: The default cool-down after a hand-over: the resumed pipeline's first write comes well within it.
DEFAULT_COOLDOWN = timedelta(seconds=120)


class LivenessStamps:
    """A bounded, thread-safe LRU of session_id -> (when this process last wrote `stalled_at`, the value).

    A write refreshes the run's index key when this process never wrote it, when the liveness interval has
    passed since, or when the new key is earlier than the one written (a shorter window): the stored key then
    never lies after the exact one.
    """

    def __init__(self, interval: timedelta, capacity: int = 10_000) -> None:
        self._interval = interval
        self._capacity = capacity
        self._written: OrderedDict[str, tuple[datetime, datetime | None]] = OrderedDict()
        self._lock = threading.Lock()

    def due(self, session_id: str, now: datetime, stalled_at: datetime | None = None) -> bool:
        """True if a write at `now` (declaring `stalled_at`) should rewrite the run's index key."""
        with self._lock:
            last = self._written.get(session_id)
        if last is None or now - last[0] >= self._interval:
            return True
        return stalled_at is not None and (last[1] is None or stalled_at < last[1])

    def mark(self, session_id: str, written: datetime, stalled_at: datetime | None = None) -> None:
        """Record that the index key was written (after the write succeeded)."""
        with self._lock:
            self._written[session_id] = (written, stalled_at)
            self._written.move_to_end(session_id)
            while len(self._written) > self._capacity:
                self._written.popitem(last=False)


def declared_silence(policy: RunPolicy, status: SessionStatus, agent: str | None, *, ended: bool) -> float:
    """The `live_for` a writer declares: how long the run may stay silent after this write.

    `agent` is the run's current agent after the write; `ended`: the pipeline is done driving the run (its
    last agent finished over the failure budget, or it set the status itself), so only the orchestrator's
    verdict may still come — the deadline grace covers it. A FAILED run whose critical agent just failed an
    attempt keeps the agent's window: the pipeline may still retry it in process.
    """
    if ended or agent is None:
        return policy.deadline_grace_seconds
    return policy.silence_seconds(agent)


def _duration(name: str, value: object, *, zero: bool = False) -> None:
    if value is None:
        return
    if not isinstance(value, timedelta) or value < timedelta(0) or (value == timedelta(0) and not zero):
        kind = "timedelta" if zero else "positive timedelta"
        raise ConfigurationError(f"{name} must be a {kind}, got {value!r:.60}")


class Run(Protocol):
    """What the policy reads of a run: a `Session` or a `RecoveryCandidate` (which also carries the window
    its last writer declared, `live_for`)."""

    @property
    def status(self) -> SessionStatus: ...
    @property
    def last_updated(self) -> datetime: ...
    @property
    def current_agent(self) -> str | None: ...


_OPEN = (SessionStatus.ACTIVE, SessionStatus.FAILED)


@dataclass(frozen=True)
class Verdict:
    """What the rule says about one run now."""

    claimable: bool
    #: Why not (or "stalled"), for logs and the operator's error page.
    reason: str
    #: Seconds of own-clock observation still needed before the run may be taken (0 when none).
    confirm_left: float = 0.0


@dataclass(frozen=True, kw_only=True)
class RecoveryPolicy:
    """When an open run may be taken over: one rule for the worker, the console and `resume_pipeline`.

    A run is *live* — never claimed unless the caller forces it — while a worker's lease on it holds, or
    while it is inside the window its last writer declared (`live_for`; the cool-down after a hand-over).
    `stall_threshold` replaces the declared windows with one threshold for every agent (demos and tests
    with fast fake agents); the cool-down still applies. A claimer that watches the run (`LivenessObserver`)
    also needs its liveness signature unchanged for `confirm` on its own clock.
    """

    run_policy: RunPolicy = field(default_factory=RunPolicy)
    stall_threshold: timedelta | None = None
    #: After a hand-over the run is live this long (the resumed pipeline's first write comes within it):
    #: a second "resume" — a double click, another operator, a reload — is refused meanwhile. With a
    #: stall threshold, the threshold is the cool-down.
    resume_cooldown: timedelta | None = None
    #: Own-clock observation a watching claimer needs; timedelta(0) trusts the writers' clocks.
    confirm: timedelta | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.run_policy, RunPolicy):
            raise ConfigurationError(f"run_policy must be a RunPolicy, got {type(self.run_policy).__name__}")
        _duration("stall_threshold", self.stall_threshold)
        _duration("resume_cooldown", self.resume_cooldown)
        _duration("confirm", self.confirm, zero=True)

    @property
    def cooldown(self) -> timedelta:
        """The cool-down a hand-over declares. With a stall threshold, that threshold is every window —
        the cool-down included."""
        if self.stall_threshold is not None:
            return self.stall_threshold
        return self.resume_cooldown if self.resume_cooldown is not None else DEFAULT_COOLDOWN

    @property
    def confirm_window(self) -> timedelta:
        """How long a watching claimer must see the run unchanged (half the stall threshold if shorter)."""
        if self.confirm is not None:
            return self.confirm
        if self.stall_threshold is not None:
            return min(DEFAULT_CONFIRM, self.stall_threshold / 2)
        return DEFAULT_CONFIRM

    @property
    def longest_window(self) -> timedelta:
        """The longest window any run can be given: how far the index key may lie after `last_updated`."""
        declared = timedelta(seconds=self.run_policy.longest_silence_seconds)
        return max(self.cooldown, self.stall_threshold or timedelta(0), declared)

    def window(self, run: Run) -> timedelta:
        """How long `run` may stay silent after its last write before it is stalled: what that write
        declared (`live_for`; a hand-over declares the cool-down), or the stall threshold when one is set.
        Never a comparison of two machines' clocks: the window counts from the writer's own stamp."""
        if self.stall_threshold is not None:
            return self.stall_threshold
        # A Session carries it too: a listing judges a run by the window its last write declared, as the
        # sweep does (a resume's cool-down, a heartbeat's timeout), not by its agent's deadline alone.
        declared = run.live_for if isinstance(run, RecoveryCandidate | Session) else None
        if declared is not None:
            return timedelta(seconds=declared)
        return timedelta(seconds=self.run_policy.silence_seconds(run.current_agent))

    def stalled_at(self, run: Run) -> datetime:
        """When `run` becomes stalled if nothing else is written (in its last writer's clock)."""
        return run.last_updated + self.window(run)

    def stalled(self, run: Run, *, now: datetime) -> bool:
        """Is `run` ACTIVE and silent past its window? What the console's "stalled" badge and filter show
        (a FAILED run is failed, not stalled; whether either may be taken over is `judge`)."""
        return run.status is SessionStatus.ACTIVE and now >= self.stalled_at(run)

    def due_at(self, run: Run, *, idle_floor: timedelta = timedelta(0)) -> datetime:
        """When `run` becomes eligible, by its last writer's clock: its window passed and, with an
        `idle_floor` (the worker's retry delay for FAILED runs), that much silence too."""
        return run.last_updated + max(self.window(run), idle_floor)

    def index_cutoff(self, now: datetime, idle: timedelta) -> datetime:
        """The recovery index's sort-key cutoff (`stalled_at < cutoff`) that finds every run eligible at
        `now` after `idle` of silence: the stored key lies at or before last_updated + the declared window,
        and no window is longer than `longest_window`, so every such run sorts before it."""
        cutoff = now - max(idle, self.stall_threshold or timedelta(0)) + self.longest_window
        return cutoff if self.stall_threshold is not None else min(cutoff, now)

    def listed(self, run: Run, *, now: datetime, idle: timedelta, live: bool) -> bool:
        """Does a sweep's hit belong in its answer: open, silent for `idle` at least, and stalled under
        this policy (or any open run silent that long, with `live`: what an operator's listing shows)."""
        if run.status not in _OPEN or now - run.last_updated < idle:
            return False
        return live or now >= self.stalled_at(run)

    def judge(
        self,
        run: RecoveryCandidate,
        *,
        now: datetime,
        idle_floor: timedelta = timedelta(0),
        unchanged_for: float | None = None,
    ) -> Verdict:
        """May `run` be claimed now? `idle_floor`: a further minimum silence (the worker's retry delay for
        FAILED runs); `unchanged_for`: the caller's own-clock observation of the run's signature (None: the
        caller does not watch, and trusts the writers' clocks)."""
        if run.status not in _OPEN:
            return Verdict(False, f"the run is {run.status.value}")
        if run.lease_expires_at is not None and run.lease_expires_at > now:
            return Verdict(False, f"worker {run.lease_owner} holds it until {run.lease_expires_at:%H:%M:%S}")
        window = self.window(run)
        if now < self.due_at(run, idle_floor=idle_floor):
            silent = _seconds(max(timedelta(0), now - run.last_updated))
            cooling = run.last_resumed_at is not None and run.last_resumed_at >= run.last_updated
            what = "its resume's cool-down" if cooling else "its window"
            return Verdict(
                False,
                f"the run is live: silent for {silent} of {what} of {_seconds(max(window, idle_floor))} "
                f"(at {run.current_agent or 'no agent'})",
            )
        if unchanged_for is not None:
            left = self.confirm_window.total_seconds() - unchanged_for
            if left > 0:
                return Verdict(False, f"confirming it is stalled: watched {unchanged_for:.0f} s", left)
        return Verdict(True, "stalled")


class ListedRun(Run, Protocol):
    """What a listing's filter reads of a run: the rule's fields and the tolerated failures."""

    @property
    def failed_agents(self) -> Sequence[str]: ...


class RunFilter(StrEnum):
    """The statuses an operator filters runs by — the console's runs list and `tdev sessions list --status`
    alike: the stored ones, and two read off a run. They partition the runs: ACTIVE means ACTIVE and not
    stalled, COMPLETED means COMPLETED without tolerated failures. "Stalled" is `RecoveryPolicy.stalled`,
    the worker's own rule, so a filter never disagrees with the worker or the backlog about a run."""

    ACTIVE = "ACTIVE"
    STALLED = "STALLED"  # ACTIVE, but silent past its window (RecoveryPolicy.stalled)
    FAILED = "FAILED"
    COMPLETED = "COMPLETED"
    TOLERATED = "TOLERATED"  # COMPLETED with tolerated agent failures
    ABANDONED = "ABANDONED"

    @property
    def label(self) -> str:
        """How a person reads it: the two derived ones spelled out."""
        return {
            RunFilter.STALLED: "stalled",
            RunFilter.TOLERATED: "COMPLETED with tolerated failures",
        }.get(self, self.value)

    @property
    def stored(self) -> SessionStatus:
        """The stored status every run this filter selects has (what an index read may ask for)."""
        derived = {RunFilter.STALLED: SessionStatus.ACTIVE, RunFilter.TOLERATED: SessionStatus.COMPLETED}
        return derived.get(self) or SessionStatus(self.value)

    def matches(self, run: ListedRun, *, now: datetime, policy: RecoveryPolicy) -> bool:
        """Does `run` (a Session or a RecoveryCandidate) belong under this filter now, by `policy`'s rule?"""
        if run.status is not self.stored:
            return False
        if self in (RunFilter.ACTIVE, RunFilter.STALLED):
            return policy.stalled(run, now=now) == (self is RunFilter.STALLED)
        if self in (RunFilter.COMPLETED, RunFilter.TOLERATED):
            return bool(run.failed_agents) == (self is RunFilter.TOLERATED)
        return True


def _seconds(delta: timedelta) -> str:
    return f"{delta.total_seconds():.0f} s"


class LivenessObserver:
    """What this claimer has seen of each run: its liveness signature and since when (own monotonic clock).

    The claimer's interval is measured on its own clock, the pipeline's on the pipeline's; only "did the
    signature change" crosses between them, so no two machines' wall clocks are ever compared.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, capacity: int = 10_000) -> None:
        self._clock = clock
        self._capacity = capacity
        self._seen: OrderedDict[str, tuple[object, float]] = OrderedDict()
        self._lock = threading.Lock()

    def unchanged_for(self, run: RecoveryCandidate) -> float:
        """Seconds (own clock) this observer has seen `run` with its current signature; 0 when new."""
        now = self._clock()
        with self._lock:
            seen = self._seen.get(run.session_id)
            if seen is None or seen[0] != run.signature:
                seen = (run.signature, now)
            self._seen[run.session_id] = seen
            self._seen.move_to_end(run.session_id)
            while len(self._seen) > self._capacity:
                self._seen.popitem(last=False)
        return now - seen[1]

    def forget(self, session_id: str) -> None:
        """Drop what was seen of a run (after claiming it: its signature changes with the claim)."""
        with self._lock:
            self._seen.pop(session_id, None)
