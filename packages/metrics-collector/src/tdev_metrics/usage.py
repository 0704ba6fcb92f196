"""Usage counting: the collector's side of `tdev_state.usage` — aggregate, store compactly, read back.

Layout, per UTC day, in the metrics table (PK `date`), three items:

- `#usage#counts` — counters as numeric attributes: run events by pipeline type (`rs.SIMPLE` started,
  `rc.` completed, `rf.` failed, `ra.` abandoned, `rv.` recovered = completed after a resume, `rm.` resumes),
  the agent funnel by agent name (`as.parser` started, `ac.parser` completed, `af.parser` failed attempts,
  `ar.parser` retries, `at.parser` tolerated), runs started per hour (`h00`…`h23`), projects (`p.saved`,
  `p.downloads`) and tech stacks of new projects (`t.<name>`).
- `#usage#durations` — log-bucketed histograms (`rSIMPLE.17` runs, `a.generation.23` an agent: bucket i holds
  seconds in [G^i, G^(i+1)), G = 1.2): percentiles within ±9.1 % of the true value.

Agents are keyed by name, so adding, removing or moving an agent (tdev_state.agents) leaves every stored day
as it was. Days written before that (until December 2026) keyed agents by their position in the nine-agent
pipeline (`as0`, `a6.23`); the reader maps those through LEGACY_AGENTS, the order in force then — never
through today's declaration — and adds them to the same agent's named counters (docs/data-model.md,
"Usage counters keyed by agent name").
- `#usage#users` — the day's active users as a Number Set of 48-bit hashes of their ids (no raw id stored).

Why this shape: a report over a range is one Query per day returning three items of a few KB whatever the
traffic — read cost depends on the days, not on how many runs there were. Counters use one sequence-guarded
UpdateItem per item per flush (`w_<writer> < :seq`, as the collector's metric items), so a retried write is
recognised and never counted twice. The user set is a DynamoDB set union, idempotent by nature, and gives
exact distinct counts (up to a 48-bit hash collision: about n²/2⁴⁹, 2·10⁻⁵ for 10⁵ users).

Bounded under any input (issue 23.8): each family is a chain of shards of bounded size
(`tdev_metrics._usage_store`); a counts shard takes at most TECH_NAMES_PER_ITEM distinct tech-stack names
(the entries of further new names are counted in `xo`, "other"), durations outside [1 ms, MAX_SECONDS] are
clamped into the end buckets (counted in `xd`), an unknown pipeline type counts as OTHER, and one
UpdateItem carries at most ATTRS_PER_WRITE attributes. The report shows what was capped.

Why the per-run hold: a run's events (its start excepted) are kept in memory until the run ends here
(completed, failed, abandoned) or `hold_seconds` pass, then merged into the day's deltas. One flush then
carries a whole run instead of a piece of it every flush interval, which is what keeps usage counting a few
percent of a run's write units (docs/benchmarks.md). A SIGKILLed process loses what it held, as it loses
unflushed metrics.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tdev_metrics._usage_store import (
    ATTRS_PER_WRITE,
    COUNTS,
    DURATIONS,
    ITEM_BUDGET,
    USERS,
    USERS_PER_WRITE,
    UsageStore,
    UsageWrite,
)
from tdev_state import AGENTS, PayloadTooLargeError, StateError, ValidationError
from tdev_state.log import get_logger
from tdev_state.storage import DynamoDoor
from tdev_state.usage import UsageEvent

log = get_logger(__name__)

# Sort keys start with '#', which no metric name may contain: usage items never meet a metric's Query.
#: Histogram base: bucket i holds [GAMMA**i, GAMMA**(i+1)); the midpoint estimate is within ±9.1 %.
GAMMA = 1.2
RELATIVE_ERROR = (GAMMA - 1) / (GAMMA + 1)
#: Durations are clamped to [MIN_SECONDS, MAX_SECONDS] (11.6 days): a fixed range of ~115 buckets per series.
MIN_SECONDS = 0.001
MAX_SECONDS = 1e6
#: Distinct tech-stack names one counts shard takes (by the writer's view of it); the rest count as other.
TECH_NAMES_PER_ITEM = 100
PIPELINE_TYPES = ("SIMPLE", "PRODUCTION")
_RUN_CODES = {
    "run_started": "rs",
    "run_completed": "rc",
    "run_failed": "rf",
    "run_abandoned": "ra",
    "run_resumed": "rm",
}
AGENT_CODES = {
    "agent_started": "as",
    "agent_completed": "ac",
    "agent_failed": "af",
    "agent_retried": "ar",
    "agent_tolerated": "at",
}
_ENDS = frozenset({"run_completed", "run_failed", "run_abandoned"})
#: The pipeline's order when usage counters were keyed by agent position (`as0` … `at8`, `a0.17` … `a8.17`).
#: Fixed for ever: it is how days stored then are read, whatever tdev_state.agents declares now.
LEGACY_AGENTS: tuple[str, ...] = (
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
LEGACY_COUNTER = re.compile(r"(as|ac|af|ar|at)([0-9]{1,2})")
_MAX_TECH_CHARS = 64
#: Counters of what was capped (in the counts item; never a tech-stack name, which is stored as "t.<name>").
OTHER_STACKS = "xo"
CLAMPED_DURATIONS = "xd"


def duration_bucket(seconds: float) -> int:
    """The histogram bucket index of a duration, clamped to [MIN_SECONDS, MAX_SECONDS] (NaN: the lowest)."""
    clamped = min(max(seconds, MIN_SECONDS), MAX_SECONDS) if seconds == seconds else MIN_SECONDS  # noqa: PLR0124
    return math.floor(math.log(clamped) / math.log(GAMMA))


def _duration(delta: _Delta, series: str, seconds: float) -> None:
    """Count one duration in its series' histogram; a clamped one is also counted as such."""
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:  # NaN included
        delta.counts[CLAMPED_DURATIONS] += 1
    delta.durations[f"{series}.{duration_bucket(seconds)}"] += 1


def _stack_name(name: str) -> str:
    """A tech-stack entry as an attribute name: trimmed, at most 64 characters, valid UTF-8 (a lone
    surrogate cannot be sent to DynamoDB at all and would fail the whole write it rides in)."""
    return name.strip()[:_MAX_TECH_CHARS].encode("utf-8", "replace").decode("utf-8")


def bucket_value(bucket: int) -> float:
    """The bucket's representative: the point with equal relative error to both edges."""
    return 2 * GAMMA**bucket / (GAMMA + 1) * GAMMA


def user_hash(user_id: str) -> int:
    """48 bits of SHA-256 of the user id: distinct counts without storing ids."""
    return int.from_bytes(hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).digest()[:6], "big")


def _day(moment: datetime) -> str:
    return moment.astimezone(UTC).date().isoformat()


@dataclass
class _Delta:
    """What is to be added to the day's items."""

    counts: Counter[str] = field(default_factory=Counter)
    durations: Counter[str] = field(default_factory=Counter)
    users: set[int] = field(default_factory=set)

    def merge(self, other: _Delta) -> None:
        self.counts.update(other.counts)
        self.durations.update(other.durations)
        self.users |= other.users

    def empty(self) -> bool:
        return not (self.counts or self.durations or self.users)


@dataclass
class _Held:
    """A run's events held until it ends here, per day."""

    since: float
    days: dict[str, _Delta] = field(default_factory=lambda: defaultdict(_Delta))


class UsageBuffer:
    """The usage sink of one MetricsCollector: events in, a few exactly-once writes per flush out."""

    def __init__(
        self,
        layer: DynamoDoor,
        writer_id: str,
        next_seq: Callable[[], int],
        *,
        hold_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        item_budget: int = ITEM_BUDGET,
    ) -> None:
        self._store = UsageStore(layer, writer_id, item_budget=item_budget)
        self._next_seq = next_seq
        self._hold = hold_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[str, _Held] = {}
        self._ready: dict[str, _Delta] = defaultdict(_Delta)
        #: Writes handed to the store, per (day, family), sent in order (one sequence number each).
        self._pending: dict[tuple[str, str], list[UsageWrite]] = {}
        self._users_sent: dict[str, set[int]] = defaultdict(set)
        #: Events received, and events that could not be counted (each logged).
        self.events = 0
        self.rejected = 0
        #: Writes recognised as already applied (a retry after a timeout): not counted twice.
        self.duplicates_ignored = 0
        #: Writes the store can never apply (refused as invalid) or that crashed: dropped, counted, logged.
        self.dropped_writes = 0
        #: Tech-stack entries counted as "other" because their shard had its share of distinct names.
        self.capped_stacks = 0

    @property
    def store(self) -> UsageStore:
        return self._store

    # --- events (the pipeline's thread) ---------------------------------------------------------------

    def usage(self, event: UsageEvent) -> None:
        """Add one event; never does I/O."""
        delta = _Delta()
        day = _day(event.at)
        kind = event.kind
        if kind in _RUN_CODES:
            kind_of_run = event.pipeline_type or "UNKNOWN"
            if kind_of_run not in PIPELINE_TYPES and kind_of_run != "UNKNOWN":
                kind_of_run = "OTHER"  # types are an enum today; a free-text one must not add attributes
            delta.counts[f"{_RUN_CODES[kind]}.{kind_of_run}"] += 1
            if kind == "run_started":
                delta.counts[f"h{event.at.astimezone(UTC).hour:02d}"] += 1
            if kind == "run_completed":
                if event.recovered:
                    delta.counts[f"rv.{kind_of_run}"] += 1
                if event.seconds is not None:
                    _duration(delta, f"r{kind_of_run}", event.seconds)
        elif kind in AGENT_CODES:
            if event.agent not in AGENTS:
                self.rejected += 1
                log.warning("usage.unknown_agent", agent=event.agent)
                return
            delta.counts[f"{AGENT_CODES[kind]}.{event.agent}"] += 1
            if kind == "agent_completed" and event.seconds is not None:
                _duration(delta, f"a.{event.agent}", event.seconds)
        elif kind == "project_saved":
            delta.counts["p.saved"] += 1
            names = {_stack_name(t) for t in event.tech_stack if isinstance(t, str) and t.strip()}
            for name in sorted(names):
                delta.counts[f"t.{name}"] += 1
        elif kind == "project_downloaded":
            delta.counts["p.downloads"] += 1
        elif kind == "user_active" and event.user_id:
            delta.users.add(user_hash(event.user_id))
        else:
            self.rejected += 1
            log.warning("usage.unknown_event", kind=kind)
            return
        with self._lock:
            self.events += 1
            sid = event.session_id
            if sid is None or kind == "run_started":
                # Not held: a run's start is counted even if this process dies before the run ends (one
                # more small write for runs spanning a flush; measured in docs/benchmarks.md).
                self._ready[day].merge(delta)
                return
            held = self._held.get(sid)
            if held is None:
                held = self._held[sid] = _Held(self._clock())
            held.days[day].merge(delta)
            if kind in _ENDS:
                self._release(sid)

    def _release(self, sid: str) -> None:
        held = self._held.pop(sid)
        for day, delta in held.days.items():
            self._ready[day].merge(delta)

    # --- flushing (the collector's flusher thread) ----------------------------------------------------

    def flush(self, *, everything: bool = False) -> bool:
        """Write what is ready (with `everything`, also runs still held). True when nothing is left
        undelivered; failed writes stay pending with their sequence number and are retried next time."""
        with self._lock:
            now = self._clock()
            for sid in [s for s, h in self._held.items() if everything or now - h.since >= self._hold]:
                self._release(sid)
            ready, self._ready = self._ready, defaultdict(_Delta)
            for day, delta in ready.items():
                delta.users -= self._users_sent.get(day, set())
                for family, part in (
                    (COUNTS, _Delta(counts=delta.counts)),
                    (DURATIONS, _Delta(durations=delta.durations)),
                    (USERS, _Delta(users=delta.users)),
                ):
                    if part.empty():
                        continue
                    if self._pending.get((day, family)):  # behind a write not yet confirmed
                        self._ready[day].merge(part)
                    else:
                        self._pending[(day, family)] = self._plan(day, family, part)
            queues = list(self._pending.items())
        ok = True
        for (day, family), writes in queues:
            while writes:
                write = writes[0]
                try:
                    if family == COUNTS and write.shard is None:
                        self._cap_stacks(write)
                    if not self._store.apply(write):
                        self.duplicates_ignored += 1
                except (ValidationError, PayloadTooLargeError) as exc:
                    self._drop(write, exc)  # refused as sent: it would be refused forever
                except StateError as exc:
                    ok = False
                    log.warning("usage.flush_failed", item=family, day=day, error=str(exc))
                    break
                except Exception as exc:  # a bug, not the store: counted, logged, the others go on
                    self._drop(write, exc, crashed=True)
                if family == USERS:
                    with self._lock:
                        self._users_sent[day] |= write.users
                writes.pop(0)
        with self._lock:
            for key in [k for k, w in self._pending.items() if not w]:
                del self._pending[key]
            self._forget_old_days()
            return ok and not self._pending and not (everything and (self._held or self._ready))

    def _plan(self, day: str, family: str, part: _Delta) -> list[UsageWrite]:
        """Writes of at most ATTRS_PER_WRITE attributes (USERS_PER_WRITE hashes), each its own seq."""
        if family == USERS:
            hashes = sorted(part.users)
            return [
                UsageWrite(day, family, self._next_seq(), users=set(hashes[i : i + USERS_PER_WRITE]))
                for i in range(0, len(hashes), USERS_PER_WRITE)
            ]
        source = part.counts if family == COUNTS else part.durations
        attrs = sorted(source.items())
        return [
            UsageWrite(day, family, self._next_seq(), attrs=dict(attrs[i : i + ATTRS_PER_WRITE]))
            for i in range(0, len(attrs), ATTRS_PER_WRITE)
        ]

    def _cap_stacks(self, write: UsageWrite) -> None:
        """Before a counts write is first sent: names new to its shard past TECH_NAMES_PER_ITEM count as
        other (`xo`). The view is this writer's last sight of the shard, so the cap is approximate under
        concurrent writers; the shard's size bound is not (it is enforced by the store)."""
        view = self._store.target(write)
        named = sum(1 for n in view.names if n.startswith("t."))
        for attr in sorted(a for a in write.attrs if a.startswith("t.") and a not in view.names):
            if named < TECH_NAMES_PER_ITEM:
                named += 1
                continue
            n = write.attrs.pop(attr)
            write.attrs[OTHER_STACKS] = write.attrs.get(OTHER_STACKS, 0) + n
            self.capped_stacks += n

    def _drop(self, write: UsageWrite, exc: Exception, *, crashed: bool = False) -> None:
        self.dropped_writes += 1
        fields = {"item": write.family, "day": write.day, "error": repr(exc)[:300]}
        if crashed:
            log.exception("usage.write_crashed", **fields, dropped=self.dropped_writes)
        else:
            log.error("usage.write_dropped", **fields, dropped=self.dropped_writes)

    def _forget_old_days(self) -> None:
        """Users already sent, and the store's shard views, are kept for the last two days written only
        (a long-running process)."""
        days = sorted(set(self._users_sent) | self._store.days())
        if len(days) > 2:
            cutoff = days[-2]
            for day in [d for d in self._users_sent if d < cutoff]:
                del self._users_sent[day]
            self._store.forget_days_before(cutoff)

    def held_runs(self) -> int:
        with self._lock:
            return len(self._held)
