"""The recovery worker: sweep the sparse recovery index, claim, resume from the first unfinished agent.

Lifecycle (after temporalio's Worker): `run()` until `shutdown()`; `shutdown()` is idempotent, stops claiming,
lets in-flight resumes finish within the grace period, then cancels them and releases their claims so other
replicas take over at once. `async with RecoveryWorker(...)` runs and shuts down around a block. Signal
handlers belong to the entry point (`tdev_recovery.cli`), never to this class.

An operator's action on one run is public too: `resume_now(session_id)` and `abandon_now(session_id, reason)`
claim the run through the sweep's own `claims.claim`, after the same `RecoveryPolicy` verdict, and then
resume it (tracked with the sweep's resumes, so `shutdown()` drains it) or abandon it under that claim.
`wait_for_inflight()` waits for the resumes in flight now (tests, and callers that sweep by hand).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from tdev_recovery._handover import build_request
from tdev_recovery.config import WorkerConfig, recovery_policy
from tdev_recovery.exceptions import (
    ClaimLostError,
    IncompleteRecordError,
    LiveRunError,
    NotRecoverableError,
    PipelineBusy,
    RecoveryError,
    ResumeRejected,
)
from tdev_recovery.metrics import WorkerMetrics
from tdev_recovery.outcomes import ActionResult, Outcome
from tdev_recovery.resumers import BusyWait, Resumer, ResumeRequest
from tdev_state import (
    Claim,
    LivenessObserver,
    MalformedItemError,
    SessionStatus,
    StateClient,
    StateError,
    StorageUnavailableError,
    ValidationError,
)
from tdev_state import validate as check
from tdev_state.log import get_logger
from tdev_state.models import RecoveryCandidate

log = get_logger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


class RecoveryWorker:
    """One replica. Several replicas may run against the same tables; claims keep them apart."""

    def __init__(
        self,
        client: StateClient,
        resumer: Resumer,
        config: WorkerConfig | None = None,
        *,
        metrics: WorkerMetrics | None = None,
        clock: Callable[[], datetime] | None = None,
        publish_backlog: Callable[[int], None] | None = None,
        observer: LivenessObserver | None = None,
        fold_usage: Callable[[], object] | None = None,
    ) -> None:
        """`fold_usage`: called after each sweep, on this worker's pool and in the background (one at a
        time): the usage fold of past days (tdev_metrics.usage_tables.UsageFolder, which keeps its own
        interval and survives a bad day)."""
        self.config = config or WorkerConfig()
        self.metrics = metrics or WorkerMetrics()
        #: The one liveness rule, shaped by this worker's settings (shared with the console and
        #: resume_pipeline); the observer is this replica's own-clock view of the runs it suspects.
        self.policy = recovery_policy(self.config, client.config.run_policy)
        self.observer = observer or LivenessObserver()
        self._client = client
        self._resumer = resumer
        self._clock = clock or client.clock
        self._claims = client.claims
        self._publish_backlog = publish_backlog
        self._fold_usage = fold_usage
        self._folding: asyncio.Future[None] | None = None
        self._pool = ThreadPoolExecutor(
            max_workers=self.config.concurrency + 2, thread_name_prefix="tdev-recovery"
        )
        self._inflight: dict[str, asyncio.Task[Outcome]] = {}
        # Created here, not in run(): shutdown() may come first (an Event binds to a loop only when used).
        self._stopping = asyncio.Event()
        self._finished = asyncio.Event()
        self._running = False
        self._stopped = False
        #: When the loop last began or ended a turn (monotonic seconds): what /healthz reads. It moves on
        #: failed sweeps too — a DynamoDB outage is not something a restart fixes.
        self.last_turn_monotonic = time.monotonic()

    @property
    def client(self) -> StateClient:
        """The state client this worker reads and claims through."""
        return self._client

    @property
    def is_running(self) -> bool:
        """True from `run()`'s start until shutdown has drained it."""
        return self._running and not self._finished.is_set()

    @property
    def is_shutdown(self) -> bool:
        """True once `shutdown()` was called: the worker claims nothing more."""
        return self._stopping.is_set()

    @property
    def inflight(self) -> frozenset[str]:
        """The runs this worker is resuming now (session ids)."""
        return frozenset(self._inflight)

    # --- lifecycle ------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Sweep every poll interval until shutdown() is called."""
        if self._running or self._stopped:
            raise RecoveryError("RecoveryWorker.run() runs once per worker; create another worker")
        self._running = True
        log.info("worker.started", worker_id=self.config.worker_id)
        try:
            await self._loop()
        finally:
            await self._drain()
            self._finished.set()
            log.info("worker.stopped", worker_id=self.config.worker_id)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            self.last_turn_monotonic = time.monotonic()
            try:
                await self.sweep()
                if self._fold_usage is not None and (self._folding is None or self._folding.done()):
                    self._folding = asyncio.ensure_future(self._fold(self._fold_usage))
            except StateError as exc:
                self.metrics.sweep_errors.inc()
                log.error("sweep.failed", error=str(exc))  # noqa: TRY400 - expected, no traceback
            except Exception as exc:  # a bug must not end the loop either: counted, logged, next turn
                self.metrics.sweep_errors.inc()
                log.exception("sweep.crashed", error=f"{type(exc).__name__}: {exc}")
            self.last_turn_monotonic = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self.config.poll_interval)

    async def shutdown(self) -> None:
        """Stop claiming; in-flight resumes get the grace period, then are released; returns once that
        drain is done. Idempotent, and safe in any order: before run() started, it just closes the worker."""
        self._stopping.set()
        if self._running:
            await self._finished.wait()
        else:
            await self._drain()

    async def __aenter__(self) -> RecoveryWorker:
        self._runner = asyncio.create_task(self.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()
        await self._runner

    async def _drain(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        tasks = list(self._inflight.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.config.grace_period)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._folding is not None:  # a fold under way ends with its current day (it is idempotent)
            await self._folding
        self._pool.shutdown(wait=True)

    async def _fold(self, fold: Callable[[], object]) -> None:
        """The usage fold on this worker's pool. It keeps its own errors per day (UsageFolder); anything
        else it raises is counted as a sweep error and logged, never left unretrieved on the loop."""
        try:
            await self._io(fold)
        except Exception as exc:
            self.metrics.sweep_errors.inc()
            log.exception("usage.fold_crashed", error=f"{type(exc).__name__}: {exc}")

    # --- sweeping and claiming ------------------------------------------------------------------------

    async def sweep(self) -> int:
        """One pass: find candidates, claim what this replica has room for, start their resumes."""
        self.metrics.sweeps.inc()
        # The backlog gauge counts what the console and `tdev backlog list` show (FAILED runs of any age,
        # stalled ones: sessions.backlog); this replica claims those of them that are due — FAILED ones
        # once the retry delay has passed too.
        moment = self._clock()
        backlog = await self._io(
            self._client.sessions.backlog,
            policy=self.policy,
            now=moment,
            limit=self.config.batch_size,
            on_malformed=lambda _: self.metrics.malformed_items.inc(),
        )
        floor = {SessionStatus.FAILED: self.config.retry_delay}
        candidates = [
            c
            for c in backlog
            if self.policy.listed(c, now=moment, idle=floor.get(c.status, timedelta(0)), live=False)
        ]
        self.metrics.backlog.set(len(backlog))
        self.metrics.candidates.inc(len(candidates))
        if self._publish_backlog is not None:
            await self._io(self._publish_backlog, len(backlog))
        started = 0
        now = self._clock()
        # Every suspect is watched on this replica's own clock, even when it has no room to claim now: the
        # index says a run *looks* stalled by its writer's clock; only an unchanged signature says it is.
        watched = {c.session_id: self.observer.unchanged_for(c) for c in candidates}
        # Replicas see the same candidates; walking them in the same order makes them collide on every
        # claim. Each replica takes the oldest ones in its own random order.
        candidates = random.sample(candidates, len(candidates))
        for candidate in candidates:
            if self._stopping.is_set():
                break
            if len(self._inflight) >= self.config.concurrency:
                break
            if candidate.session_id in self._inflight:
                continue
            verdict = self.policy.judge(
                candidate,
                now=now,
                idle_floor=self._idle_floor(candidate),
                unchanged_for=watched[candidate.session_id],
            )
            if not verdict.claimable:  # live, leased, or not yet confirmed: a claim would fail or be wrong
                if verdict.confirm_left > 0:
                    self.metrics.confirming.inc()
                continue
            try:
                claim = await self._io(
                    self._claims.claim,
                    candidate,
                    worker_id=self.config.worker_id,
                    lease=self.config.lease,
                )
            except StorageUnavailableError:
                raise  # an outage, not this run: the sweep fails once (sweep_errors), not per candidate
            except Exception as exc:  # one run's claim failing never costs the others their turn
                self.metrics.candidate_errors.inc()
                log.error(  # noqa: TRY400 - one line per skipped candidate, no traceback
                    "claim.failed", session_id=candidate.session_id, error=f"{type(exc).__name__}: {exc}"
                )
                continue
            if claim is None:
                self.metrics.claim_conflicts.inc()
                continue
            self.observer.forget(candidate.session_id)
            self.metrics.claims.inc()
            self.metrics.detection_lag.observe(self._detection_lag(candidate, now))
            self._start(claim)
            started += 1
        return started

    def _start(self, claim: Claim) -> asyncio.Task[Outcome]:
        task = asyncio.create_task(self.resume_claimed(claim))
        self._inflight[claim.session_id] = task
        self.metrics.inflight.set(len(self._inflight))

        def done(_: asyncio.Task[Outcome]) -> None:
            self._inflight.pop(claim.session_id, None)
            self.metrics.inflight.set(len(self._inflight))

        task.add_done_callback(done)
        return task

    async def wait_for_inflight(self) -> list[Outcome]:
        """Wait until every resume in flight now has ended; their outcomes (in no particular order)."""
        return list(await asyncio.gather(*self._inflight.values()))

    # --- an operator's action on one run --------------------------------------------------------------

    async def resume_now(
        self, session_id: str, *, force: bool = False, observer: LivenessObserver | None = None
    ) -> ActionResult:
        """Claim the open run `session_id` now and resume it once, as a sweep would — unless it is live.

        The worker's `policy` decides (no retry delay: an operator acts on a FAILED run as soon as its
        pipeline is done with it). A run inside its declared window or a resume's cool-down raises
        `LiveRunError`; `force=True` takes it anyway, but never from a worker whose lease holds it
        (`NotRecoverableError`, as for a COMPLETED or ABANDONED run). With an `observer` (a long-lived
        `LivenessObserver`), the run must also have been seen unchanged for the confirmation window. The
        resume is tracked with the sweep's own, so `shutdown()` drains (or releases) it.
        """
        claim = await self._claim_now(session_id, "resume", force=force, observer=observer)
        outcome = await self._start(claim)
        return ActionResult(session_id, outcome, claim.fencing_token)

    async def abandon_now(
        self,
        session_id: str,
        reason: str,
        *,
        force: bool = False,
        observer: LivenessObserver | None = None,
    ) -> ActionResult:
        """Give up on the open run `session_id` now: claim it as `resume_now` does (same verdict, same
        errors), then ABANDON it with `reason` under that claim (a fenced write)."""
        why = check.error_text(reason)  # refused before the claim, which would hold the run for a lease
        claim = await self._claim_now(session_id, "abandon", force=force, observer=observer)
        outcome = await self._abandon(claim, why)
        return ActionResult(session_id, outcome, claim.fencing_token)

    async def _claim_now(
        self, session_id: str, what: str, *, force: bool, observer: LivenessObserver | None
    ) -> Claim:
        """The operator's claim: the run as it is now, judged by `policy`, through the sweep's claim."""
        if not isinstance(force, bool):
            raise ValidationError(f"force must be True or False, got {force!r:.40}")
        if observer is not None and not isinstance(observer, LivenessObserver):
            raise ValidationError(f"observer must be a LivenessObserver, got {type(observer).__name__}")
        if self._stopping.is_set():
            raise RecoveryError(f"this worker is shut down: nothing to {what} with it; create another worker")
        candidate = await self._io(self._client.sessions.candidate, session_id)
        if candidate.status not in (SessionStatus.ACTIVE, SessionStatus.FAILED):
            status = candidate.status.value
            raise NotRecoverableError(f"session {session_id!r} is {status}; nothing to {what}")
        if not force:
            watched = observer.unchanged_for(candidate) if observer is not None else None
            verdict = self.policy.judge(candidate, now=self._clock(), unchanged_for=watched)
            if not verdict.claimable:
                wait = f"; watch it {verdict.confirm_left:.0f} s more" if verdict.confirm_left else ""
                raise LiveRunError(
                    f"session {session_id!r} is not stalled — {verdict.reason}{wait}. Nothing was changed; "
                    f"pass force=True to {what} it anyway",
                    reason=f"{verdict.reason}{wait}",
                )
        claim = await self._io(
            self._claims.claim, candidate, worker_id=self.config.worker_id, lease=self.config.lease
        )
        if claim is None:
            raise NotRecoverableError(
                f"session {session_id!r} is held by another worker or changed meanwhile; try again later"
            )
        return claim

    def _idle_floor(self, candidate: RecoveryCandidate) -> timedelta:
        """FAILED runs also wait the retry delay (the plan: one hour); stalled ones only their window."""
        return self.config.retry_delay if candidate.status is SessionStatus.FAILED else timedelta(0)

    def _detection_lag(self, candidate: RecoveryCandidate, now: datetime) -> float:
        """Seconds between the moment the run became eligible (by its writer's clock) and its claim."""
        due = self.policy.due_at(candidate, idle_floor=self._idle_floor(candidate))
        return max(0.0, (now - due).total_seconds())

    # --- resuming -------------------------------------------------------------------------------------

    async def resume_claimed(self, claim: Claim) -> Outcome:
        """Resume a run this worker has claimed, heartbeating the lease until it ends."""
        bound = log.bind(session_id=claim.session_id, fencing_token=claim.fencing_token)
        holder = {"claim": claim}
        current = asyncio.current_task()
        assert current is not None
        heartbeat = asyncio.create_task(self._heartbeat(holder, current))
        try:
            outcome = await self._resume(holder, bound, heartbeat)
        except asyncio.CancelledError:
            lost = (
                heartbeat.done()
                and not heartbeat.cancelled()
                and isinstance(heartbeat.exception(), ClaimLostError)
            )
            heartbeat.cancel()
            if lost:
                outcome = Outcome.LOST
            else:  # shutdown after the grace period: hand the run back for another replica
                await self._io(self._claims.release, holder["claim"])
                outcome = Outcome.RELEASED
        except ClaimLostError:
            outcome = Outcome.LOST
        except Exception as exc:  # one bad run never stops the worker: counted, logged, and it expires
            bound.error("resume.crashed", error=f"{type(exc).__name__}: {exc}")
            self.metrics.failures.inc()
            outcome = Outcome.ERROR
        finally:
            heartbeat.cancel()
        self.metrics.resumes.labels(outcome=outcome.value).inc()
        bound.info("resume.finished", outcome=outcome.value, attempt=holder["claim"].attempt)
        return outcome

    async def _resume(  # noqa: PLR0911 - one return per outcome
        self, holder: dict[str, Claim], bound: Any, heartbeat: asyncio.Task[None]
    ) -> Outcome:
        """Resume attempts under one claim. Every failure on this path — building the request (an unreadable
        payload, an agent that cannot be closed) or sending it — is an attempt with its reason; when the
        attempts run out the run is ABANDONED with the last reason, so no run can be claimed forever.
        A busy pipeline (PipelineBusy) is waited out without using an attempt, up to `busy_timeout`."""
        claim = holder["claim"]
        policy = self.config.retry

        async def abandon(reason: str) -> Outcome:
            # The final write is fenced itself. A lease heartbeat racing it would see the lease gone and
            # cancel this task mid-write: stopped first, so the outcome is the write's.
            heartbeat.cancel()
            return await self._abandon(holder["claim"], reason)

        if claim.recoveries >= self.config.max_resumes:  # a fork's start is not one of them
            return await abandon(f"resumed {claim.recoveries} times and failed again; giving up")
        if claim.attempt > policy.maximum_attempts:
            # Earlier claims ended without an outcome (their worker died mid-attempt): that counts.
            return await abandon(
                f"{claim.attempt - 1} resume attempts exhausted; last error: {claim.last_error or 'unknown'}",
            )
        request: ResumeRequest | None = None
        busy = BusyWait(self.config.busy_timeout.total_seconds())
        while True:
            retryable, error = True, ""
            try:
                if request is None:
                    request = await self._io(self._build_request, holder["claim"])
                    if request is None:
                        return await abandon(
                            "nothing left to resume: every agent has finished (the run policy failed it)"
                        )
                    bound.info(
                        "resume.requested",
                        next_agent=request.next_agent,
                        attempt=request.attempt,
                        completed=len(request.completed),
                    )
                await self._resumer(request)
            except ClaimLostError:
                raise
            except IncompleteRecordError as exc:
                return await abandon(str(exc))
            except MalformedItemError as exc:  # retrying cannot make a hand-edited item readable
                return await abandon(f"record unreadable: {exc}")
            except PipelineBusy as exc:
                delay = busy.next_delay(exc.retry_after, policy)
                if delay is not None:  # back-pressure: the same request again later, no attempt used
                    self.metrics.busy_waits.inc()
                    bound.info("resume.busy", attempt=request.attempt if request else None, wait=delay)
                    await asyncio.sleep(delay)
                    continue
                error = f"pipeline busy for {busy.waited():.0f} s (longer than busy_timeout): {exc}"
            except ResumeRejected as exc:
                if exc.stale:
                    return Outcome.STALE
                retryable, error = exc.retryable, str(exc)
            except StateError as exc:
                error = f"could not prepare the resume: {type(exc).__name__}: {exc}"
            except Exception as exc:  # a pluggable resumer may raise anything
                retryable = type(exc).__name__ not in policy.non_retryable
                error = f"{type(exc).__name__}: {exc}"
            else:
                heartbeat.cancel()  # as in abandon(): the hand-over's outcome is the write's, not a race's
                await self._io(self._claims.handed_over, holder["claim"], cooldown=self.policy.cooldown)
                return Outcome.RESUMED
            self.metrics.failures.inc()
            claim = holder["claim"]
            bound.warning("resume.failed", attempt=claim.attempt, retryable=retryable, error=error)
            if not retryable or claim.attempt >= policy.maximum_attempts:
                why = "not retryable" if not retryable else f"{claim.attempt} attempts exhausted"
                return await abandon(f"resume failed ({why}): {error}")
            # Counted (with its reason) before the wait, so a worker dying now still leaves the count.
            holder["claim"] = await self._io(self._claims.next_attempt, claim, error=error)
            request, busy = None, BusyWait(self.config.busy_timeout.total_seconds())
            await asyncio.sleep(random.uniform(0, policy.delay(claim.attempt)))

    async def _abandon(self, claim: Claim, reason: str) -> Outcome:
        await self._io(self._claims.abandon, claim, reason=reason)
        self.metrics.abandoned.inc()
        return Outcome.ABANDONED

    def _build_request(self, claim: Claim) -> ResumeRequest | None:
        return build_request(self._client, claim)

    async def _heartbeat(self, holder: dict[str, Claim], owner: asyncio.Task[Any]) -> None:
        interval = self.config.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            try:
                holder["claim"] = await self._io(
                    self._claims.extend, holder["claim"], lease=self.config.lease
                )
                if holder["claim"].ended:
                    return  # the resumer ran the run to its end: no lease left to keep, nothing lost
            except ClaimLostError:
                log.warning("claim.lost", session_id=holder["claim"].session_id)
                owner.cancel()
                raise

    async def _io(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run blocking DynamoDB work on this worker's pool, never on the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))
