"""The buffered, aggregating collector that runs inside the pipeline process.

`record()` touches only memory: the calling thread's own shard (a dict and a lock nobody else takes except
a flush), so it costs about a microsecond and never blocks an event loop. A flusher thread writes one
UpdateItem per key per flush — on an interval, when the buffer grows past a size, on `flush()`, on exit of
`with`, and at interpreter exit (atexit). SIGTERM/SIGINT are the entry point's to handle:
`install_signal_handlers(collector)` flushes and then defers to the previous handler.

fork(): a child process forked after the collector started (os.fork, multiprocessing's "fork" start
method, a pre-forking server) becomes a new writer with an empty buffer: what was buffered before the fork
is the parent's to deliver; the child gets its own writer id and sequence, new locks, its own flusher
(started at its first record), and a final flush at exit — multiprocessing children included, which end
without atexit. Without that, parent and child wrote under one writer id and took each other's writes for
retries (issue 23.7: 120 of 300 records stored).

Delivery is exactly once (see `_store`): a batch that failed is kept and re-sent as the same write, before
anything newer for its key, with exponential backoff; new records keep aggregating meanwhile. Memory is
bounded by `max_keys`; past it, the overflow policy applies and every dropped record is counted and logged.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import random
import signal
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from types import FrameType
from typing import Any, Literal

from tdev_metrics._aggregate import Aggregate, Key
from tdev_metrics._store import MetricsStore, Write, plan_writes
from tdev_metrics._usage_store import ITEM_BUDGET
from tdev_metrics._validate import (
    LARGEST,
    SMALLEST,
    checked_name,
    epoch_seconds,
    exact_float,
    out_of_range,
    show,
)
from tdev_metrics.exceptions import BufferFullError, CollectorClosedError, MetricValidationError
from tdev_metrics.usage import UsageBuffer
from tdev_state import PayloadTooLargeError, StateClient, StateError, ValidationError
from tdev_state.log import get_logger
from tdev_state.models import AGENTS
from tdev_state.usage import UsageEvent

log = get_logger(__name__)


@dataclass(frozen=True, kw_only=True)
class CollectorConfig:
    """Buffering and delivery settings."""

    flush_interval: float = 10.0
    #: Records since the last flush that trigger an early one.
    flush_at_records: int = 50_000
    #: Distinct keys held in memory at most (buffered + awaiting delivery).
    max_keys: int = 10_000
    overflow: Literal["drop", "raise"] = "drop"
    #: Agents accepted; None accepts any well-formed name (the declared agents by default).
    agents: frozenset[str] | None = frozenset(AGENTS)
    max_backoff: float = 60.0
    #: Usage events of a run are held in memory until the run ends here, or this many seconds pass, so one
    #: flush writes a whole run's usage (tdev_metrics.usage).
    usage_hold_seconds: float = 300.0
    #: Bytes past which a usage item is marked full and writers go on in its next shard (a smaller item
    #: also makes each usage write cheaper: DynamoDB bills a write per KB of the item).
    usage_item_budget: int = ITEM_BUDGET

    def __post_init__(self) -> None:
        for name in ("flush_interval", "max_backoff", "usage_hold_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise MetricValidationError(
                    f"{name} must be a positive number of seconds, got {show(value, 40)}"
                )
        budget = self.usage_item_budget
        if isinstance(budget, bool) or not isinstance(budget, int) or not 1024 <= budget <= 256 * 1024:
            raise MetricValidationError(
                f"usage_item_budget must be a whole number of bytes in 1024..262144, got {show(budget, 40)}"
            )
        for name in ("flush_at_records", "max_keys"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MetricValidationError(f"{name} must be a whole number >= 1, got {show(value, 40)}")
        if self.overflow not in ("drop", "raise"):
            raise MetricValidationError(f"overflow must be 'drop' or 'raise', got {show(self.overflow, 40)}")
        agents: object = self.agents
        if agents is not None and (
            not isinstance(agents, set | frozenset) or not all(isinstance(a, str) and a for a in agents)
        ):
            raise MetricValidationError(
                f"agents must be a set of agent names or None, got {show(agents, 60)}"
            )


@dataclass(slots=True)
class _Shard:
    """One thread's buffer. Only its thread writes it; a flush swaps `aggs` out under `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    aggs: dict[tuple[int, str, str, str | None], Aggregate] = field(default_factory=dict)
    records: int = 0
    #: True while its thread is inside record() (a signal handler on that thread must not flush).
    busy: bool = False


@dataclass
class _Pending:
    """A key's data handed to delivery: writes not yet confirmed (kept verbatim for retries)."""

    writes: list[Write]


class MetricsCollector:
    """Buffered, aggregated metrics for one process. Thread-safe; create one and share it."""

    def __init__(
        self,
        client: StateClient,
        config: CollectorConfig | None = None,
        *,
        writer_id: str | None = None,
        start: bool = True,
        clock: Callable[[], float] = time.time,
        usage: bool = True,
    ) -> None:
        """`usage`: count the client's usage (runs, agents, projects, users) too: its stores send their
        events here (tdev_state.usage). Off, the collector only records what record() is given."""
        self.config = config or CollectorConfig()
        # Unique by construction: two collectors given the same id would otherwise guard each other's
        # writes with one sequence attribute and drop each other's data as "duplicates".
        self._writer_prefix = checked_name("writer_id", writer_id) + "-" if writer_id is not None else ""
        self._layer = client.layer
        self._clock = clock
        # Names already checked, one set per kind: a name valid as a metric is not thereby a valid agent.
        self._valid_metrics: set[str] = set()
        self._valid_agents: set[str] = set()
        self._valid_variants: set[str] = set()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._exit_hook = False
        #: The writer id of the process this one was forked from (None in the process that built it).
        self.forked_from: str | None = None
        self._fresh_state()
        _live.add(self)
        self._usage_emitter = client.layer.usage if usage else None
        if self._usage_emitter is not None:
            self._usage_emitter.attach(self)
        if start:
            self.start()

    def _fresh_state(self) -> None:
        """Identity, buffers, locks and counters of a collector that has recorded nothing: at construction,
        and again in a forked child (`_after_fork_in_child`)."""
        self.writer_id = self._writer_prefix + uuid.uuid4().hex[:12]
        self._store = MetricsStore(self._layer, self.writer_id)
        self._local = threading.local()
        self._shards: list[_Shard] = []
        self._shards_lock = threading.Lock()
        self._keys: set[Key] = set()  # keys buffered in shards, for the max_keys bound
        self._pending: dict[Key, _Pending] = {}  # handed to delivery, not yet confirmed
        self._staged: dict[Key, Aggregate] = {}  # collected, waiting behind a pending write
        self._flush_lock = threading.Lock()
        self._seq = int(time.time() * 1000)  # strictly increasing across restarts of this writer id
        self._wake = threading.Event()
        self.dropped = 0
        #: Writes that could never be applied (the store refused their values): dropped, counted, logged.
        self.dropped_writes = 0
        #: Exceptions the flusher thread survived (each logged).
        self.flusher_errors = 0
        self.flushes = 0
        self.failed_flushes = 0
        self.duplicates_ignored = 0
        self.records = 0
        self._backoff = 0.0
        self._deferred_signal: Callable[[], None] | None = None
        self._flush_at = self.config.flush_at_records
        #: A forked child starts its own flusher on its first record/usage event (not in the fork hook:
        #: a child that only exec()s or never records gets no thread).
        self._start_on_use = False
        self._usage = UsageBuffer(
            self._layer,
            self.writer_id,
            self._next_seq,
            hold_seconds=self.config.usage_hold_seconds,
            item_budget=self.config.usage_item_budget,
        )

    def _after_fork_in_child(self) -> None:
        """In the child of os.fork(): become a new writer with nothing buffered.

        What was buffered before the fork belongs to the parent, which flushes it: the child drops its
        copy. Sharing the parent's writer id and sequence would make the parent's and the child's writes
        look like retries of each other (one side's data dropped as duplicates), so the child takes a new
        id. Locks are replaced, not released: another thread of the parent may have held one at the
        fork, and that thread does not exist here. The HTTP connections inherited from the parent are
        closed in the child (the parent keeps them): two processes reading responses from one socket
        would read each other's.
        """
        parent = self.writer_id
        flusher_wanted = self._thread is not None and not self._closed
        self._thread = None
        self._fresh_state()
        self.forked_from = parent
        self._start_on_use = flusher_wanted
        with contextlib.suppress(Exception):  # best effort: an unusable pool is rebuilt on next use anyway
            self._layer.dynamodb.close()
        mp_util = sys.modules.get("multiprocessing.util")
        if mp_util is not None and not self._closed:
            # A multiprocessing child ends with os._exit() after its finalizers, never running atexit:
            # register the final flush there (after multiprocessing clears the inherited finalizers).
            mp_util.register_after_fork(self, _flush_at_multiprocessing_exit)
        log.info("metrics.forked", writer_id=self.writer_id, forked_from=parent)

    def _start_after_fork(self) -> None:
        with self._shards_lock:
            if not self._start_on_use:
                return
            self._start_on_use = False
        self.start()

    def usage(self, event: UsageEvent) -> None:
        """Take one usage event from the state client (memory only; tdev_state.usage.UsageSink)."""
        if self._closed:
            self._usage.rejected += 1
            log.warning("usage.after_close", kind=event.kind)
            return
        if self._start_on_use:
            self._start_after_fork()
        self._usage.usage(event)

    @property
    def usage_buffer(self) -> UsageBuffer:
        return self._usage

    # --- recording (hot path) -------------------------------------------------------------------------

    def record(
        self,
        metric_name: str,
        value: float,
        *,
        agent_name: str,
        timestamp: datetime | float | None = None,
        error: bool = False,
        variant: str | None = None,
    ) -> None:
        """Add one observation to its (hour, metric, agent, variant) aggregate. Never does I/O."""
        if self._closed:
            raise CollectorClosedError("record() after close(); create a new collector")
        number = value if type(value) is float else exact_float(value)
        if not (number == 0 or SMALLEST <= abs(number) <= LARGEST):
            if not math.isfinite(number):  # NaN/inf (too large ints were refused above)
                raise MetricValidationError(f"value is {number!r}; metrics must be finite numbers")
            raise out_of_range(value)
        try:  # the hot path: one set lookup per name seen before (try costs nothing when nothing raises)
            known = metric_name in self._valid_metrics and agent_name in self._valid_agents
            known_variant = variant is None or variant in self._valid_variants
        except TypeError:  # unhashable (a list, a dict): certainly not a name; say which one below
            known = known_variant = False
        if not known:
            self._check_names(metric_name, agent_name)
        if not known_variant:
            self._valid_variants.add(checked_name("variant", variant))
        if type(error) is not bool:
            raise MetricValidationError(
                f"error must be True or False, got {type(error).__name__} {show(error, 20)}"
            )
        moment = self._clock() if timestamp is None else epoch_seconds(timestamp, self._clock())
        key = (int(moment // 3600), metric_name, agent_name, variant)  # a plain tuple: Key() is 10x dearer
        shard: _Shard | None = getattr(self._local, "shard", None)
        if shard is None:
            shard = self._new_shard()
        shard.busy = True  # a signal handler arriving now must not flush (we may hold the shard lock)
        lock = shard.lock
        lock.acquire()
        try:
            agg = shard.aggs.get(key)
            if agg is None:
                if not self._admit(Key(*key)):
                    return
                agg = shard.aggs[key] = Aggregate()
            agg.add(number, error)
            shard.records += 1
            if shard.records >= self._flush_at:
                shard.records = 0
                self._wake.set()
        finally:
            lock.release()
            shard.busy = False
        if self._deferred_signal is not None:
            self._run_deferred_signal()

    def _new_shard(self) -> _Shard:
        if self._start_on_use:  # the first record of a forked child (its thread-local shard is new)
            self._start_after_fork()
        shard = _Shard()
        with self._shards_lock:
            self._shards.append(shard)
        self._local.shard = shard
        return shard

    def _admit(self, key: Key) -> bool:
        with self._shards_lock:
            if key in self._keys:
                return True
            if len(self._keys) + len(self._pending) + len(self._staged) < self.config.max_keys:
                self._keys.add(key)
                return True
            self.dropped += 1
        if self.config.overflow == "raise":
            raise BufferFullError(
                f"the metrics buffer holds {self.config.max_keys} keys; raise max_keys or flush more often"
            )
        if self.dropped == 1 or self.dropped % 10_000 == 0:
            log.warning("metrics.overflow_dropped", dropped=self.dropped, max_keys=self.config.max_keys)
        return False

    def _check_names(self, metric_name: str, agent_name: str) -> None:
        self._valid_metrics.add(checked_name("metric_name", metric_name))
        agent = checked_name("agent_name", agent_name)
        if self.config.agents is not None and agent not in self.config.agents:
            raise MetricValidationError(
                f"unknown agent {agent!r}; agents are: {', '.join(sorted(self.config.agents))}"
            )
        self._valid_agents.add(agent)

    # --- flushing -------------------------------------------------------------------------------------

    def flush(self) -> bool:
        """Deliver everything buffered now. True if all of it was confirmed; on failure the data stays
        and is retried (by the next flush, or the flusher thread after a backoff)."""
        busy_before = getattr(self._local, "busy", False)
        self._local.busy = True
        try:
            with self._flush_lock:
                self._collect()
                ok = True
                for key in list(self._pending):
                    if not self._deliver(key):
                        ok = False
                if not self._usage.flush(everything=self._closed):
                    ok = False
                self.flushes += 1
                if not ok:
                    self.failed_flushes += 1
        finally:
            self._local.busy = busy_before
        if not busy_before and self._deferred_signal is not None:
            self._run_deferred_signal()
        return ok

    def _collect(self) -> None:
        with self._shards_lock:
            shards = list(self._shards)
        taken: dict[Key, Aggregate] = {}
        for shard in shards:
            with shard.lock:
                aggs, shard.aggs, shard.records = shard.aggs, {}, 0
            for raw_key, agg in aggs.items():
                key = Key(*raw_key)
                agg.fold()  # here, on the flusher's thread, not in record()
                if key in taken:
                    taken[key].merge(agg)
                else:
                    taken[key] = agg
        with self._shards_lock:
            self._keys.difference_update(taken)
            for key, agg in taken.items():
                self.records += agg.count
                if key in self._staged:
                    self._staged[key].merge(agg)
                else:
                    self._staged[key] = agg
            for key in list(self._staged):
                if key not in self._pending:
                    self._pending[key] = _Pending(plan_writes(self._staged.pop(key), self._next_seq))

    def _deliver(self, key: Key) -> bool:
        pending = self._pending[key]
        while pending.writes:
            try:
                applied = self._store.apply(key, pending.writes[0])
            except (ValidationError, PayloadTooLargeError) as exc:
                # This write can never be applied: keeping it first in line would block its key forever.
                self.dropped_writes += pending.writes[0].count or 1
                log.error(  # noqa: TRY400 - a refused value, not a bug: no traceback
                    "flush.write_dropped",
                    metric_name=key.metric,
                    agent_name=key.agent,
                    records=pending.writes[0].count,
                    error=str(exc),
                    tdev_metrics_dropped_total=self.dropped_writes,
                )
                pending.writes.pop(0)
                continue
            except StateError as exc:
                log.warning("flush.failed", metric_name=key.metric, agent_name=key.agent, error=str(exc))
                return False
            except Exception as exc:  # a bug, not the store: retrying the same write would fail forever
                self.dropped_writes += pending.writes[0].count or 1
                log.exception(
                    "flush.write_crashed",
                    metric_name=key.metric,
                    agent_name=key.agent,
                    records=pending.writes[0].count,
                    error=repr(exc),
                    tdev_metrics_dropped_total=self.dropped_writes,
                )
                pending.writes.pop(0)
                continue
            if not applied:
                self.duplicates_ignored += 1
            pending.writes.pop(0)
        with self._shards_lock:
            del self._pending[key]
            if key in self._staged:  # newer data waited behind this write: it goes next time
                self._pending[key] = _Pending(plan_writes(self._staged.pop(key), self._next_seq))
        return True

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def buffered_keys(self) -> int:
        """Keys in memory: collecting, staged or awaiting delivery."""
        with self._shards_lock:
            return len(self._keys) + len(self._pending) + len(self._staged)

    # --- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the flusher thread and register the atexit flush. Idempotent."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="tdev-metrics-flusher", daemon=True)
        self._thread.start()
        if not self._exit_hook:  # a forked child inherits the parent's registration
            self._exit_hook = True
            atexit.register(self.close)

    def _run(self) -> None:
        while True:
            self._wake.wait(timeout=self._backoff or self.config.flush_interval)
            self._wake.clear()
            if self._closed:  # close() delivers the rest itself
                return
            try:
                delivered = self.flush()
            except Exception as exc:  # the flusher survives anything: counted, logged, retried later
                self.flusher_errors += 1
                log.exception("flush.crashed", error=repr(exc), flusher_errors=self.flusher_errors)
                delivered = False
            if delivered:
                self._backoff = 0.0
            else:  # exponential backoff with jitter, capped
                cap = min(self.config.max_backoff, max(0.5, self._backoff * 2))
                self._backoff = random.uniform(cap / 2, cap)

    def close(self, timeout: float = 10.0) -> bool:
        """Stop the flusher and deliver what is left (retrying until `timeout`). Idempotent.
        Returns True if nothing is left undelivered."""
        if self._closed:
            return self.buffered_keys() == 0
        self._closed = True
        if self._usage_emitter is not None and self._usage_emitter.sink is self:
            self._usage_emitter.attach(None)  # the client counts nothing into a closed collector
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            if self.flush():
                return True
            if time.monotonic() + delay > deadline:
                log.error("metrics.undelivered_at_close", keys=self.buffered_keys())
                return False
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _run_deferred_signal(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals are the main thread's business; it runs the action itself
        action, self._deferred_signal = self._deferred_signal, None
        if action is not None:
            action()

    def in_critical_section(self) -> bool:
        """True while the calling thread is inside record() or flush() (signal handlers defer then)."""
        shard: _Shard | None = getattr(self._local, "shard", None)
        return bool(getattr(self._local, "busy", False)) or (shard is not None and shard.busy)

    def defer_until_safe(self, action: Callable[[], None]) -> None:
        """Run `action` as soon as the calling thread leaves record()/flush() (for signal handlers)."""
        self._deferred_signal = action

    def __enter__(self) -> MetricsCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Every collector of this process, for the fork hook (weak: a collector nobody holds is not kept alive).
_live: weakref.WeakSet[MetricsCollector] = weakref.WeakSet()


def _reset_collectors_in_child() -> None:
    for collector in list(_live):
        try:
            collector._after_fork_in_child()
        except Exception as exc:  # never let a hook fail a fork; the collector says so when used
            log.error("metrics.fork_reset_failed", error=repr(exc))  # noqa: TRY400


def _flush_at_multiprocessing_exit(collector: MetricsCollector) -> None:
    import multiprocessing.util  # only here, where multiprocessing is already in use

    multiprocessing.util.Finalize(collector, collector.close, exitpriority=10)


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    os.register_at_fork(after_in_child=_reset_collectors_in_child)


def install_signal_handlers(
    collector: MetricsCollector, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)
) -> None:
    """For the process's entry point: on SIGTERM/SIGINT flush the collector, then do what the previous
    handler would have done (the default: terminate). Must be called from the main thread.

    A signal that lands while the main thread is inside record() or flush() is handled the moment it
    leaves them: flushing from inside would wait forever on the lock the main thread itself holds.
    """
    for signum in signals:
        previous = signal.getsignal(signum)

        def terminate(num: int, frame: FrameType | None, previous: Any = previous) -> None:
            collector.close()
            if callable(previous):
                previous(num, frame)
            elif previous == signal.SIG_DFL:
                signal.signal(num, signal.SIG_DFL)
                signal.raise_signal(num)

        def handler(num: int, frame: FrameType | None, terminate: Any = terminate) -> None:
            if collector.in_critical_section():
                collector.defer_until_safe(lambda: terminate(num, frame))
            else:
                terminate(num, frame)

        signal.signal(signum, handler)
