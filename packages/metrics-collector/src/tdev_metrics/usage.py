"""Usage counting: the collector's side of `tdev_state.usage` — aggregate, store compactly, read back.

Layout, per UTC day, in the metrics table (PK `date`), three items:

- `#usage#counts` — counters as numeric attributes: run events by pipeline type (`rs.SIMPLE` started,
  `rc.` completed, `rf.` failed, `ra.` abandoned, `rv.` recovered = completed after a resume, `rm.` resumes),
  the agent funnel by agent index (`as0` started, `ac0` completed, `af0` failed attempts, `ar0` retries,
  `at0` tolerated), runs started per hour (`h00`…`h23`), projects (`p.saved`, `p.downloads`) and tech stacks
  of new projects (`t.<name>`).
- `#usage#durations` — log-bucketed histograms (`rSIMPLE.17` runs, `a6.23` agent 6: bucket i holds seconds in
  [G^i, G^(i+1)), G = 1.2): percentiles within ±9.1 % of the true value.
- `#usage#users` — the day's active users as a Number Set of 48-bit hashes of their ids (no raw id stored).

Why this shape: a report over a range is one Query per day returning three items of a few KB whatever the
traffic — read cost depends on the days, not on how many runs there were. Counters use one sequence-guarded
UpdateItem per item per flush (`w_<writer> < :seq`, as the collector's metric items), so a retried write is
recognised and never counted twice. The user set is a DynamoDB set union, idempotent by nature, and gives
exact distinct counts (up to a 48-bit hash collision: about n²/2⁴⁹, 2·10⁻⁵ for 10⁵ users).

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from tdev_metrics._store import expires_at
from tdev_metrics.exceptions import MetricValidationError
from tdev_state import AGENTS, StateClient, StateError
from tdev_state._log import get_logger
from tdev_state.dynamo import ConditionFailed, DynamoLayer
from tdev_state.usage import UsageEvent

log = get_logger(__name__)

# Sort keys start with '#', which no metric name may contain: usage items never meet a metric's Query.
COUNTS = "#usage#counts"
DURATIONS = "#usage#durations"
USERS = "#usage#users"
PREFIX = "#usage#"
#: Histogram base: bucket i holds [GAMMA**i, GAMMA**(i+1)); the midpoint estimate is within ±9.1 %.
GAMMA = 1.2
RELATIVE_ERROR = (GAMMA - 1) / (GAMMA + 1)
PIPELINE_TYPES = ("SIMPLE", "PRODUCTION")
_RUN_CODES = {
    "run_started": "rs",
    "run_completed": "rc",
    "run_failed": "rf",
    "run_abandoned": "ra",
    "run_resumed": "rm",
}
_AGENT_CODES = {
    "agent_started": "as",
    "agent_completed": "ac",
    "agent_failed": "af",
    "agent_retried": "ar",
    "agent_tolerated": "at",
}
_ENDS = frozenset({"run_completed", "run_failed", "run_abandoned"})
_MAX_TECH_CHARS = 64


def bucket_of(seconds: float) -> int:
    """The histogram bucket of a duration (durations under 1 ms share the lowest bucket)."""
    return math.floor(math.log(max(seconds, 0.001)) / math.log(GAMMA))


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


@dataclass
class _Pending:
    """One write in flight: fixed sequence number, retried as is until confirmed or recognised."""

    day: str
    item: str
    seq: int
    delta: _Delta


class UsageBuffer:
    """The usage sink of one MetricsCollector: events in, a few exactly-once writes per flush out."""

    def __init__(
        self,
        layer: DynamoLayer,
        writer_id: str,
        next_seq: Callable[[], int],
        *,
        hold_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = UsageStore(layer, writer_id)
        self._next_seq = next_seq
        self._hold = hold_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[str, _Held] = {}
        self._ready: dict[str, _Delta] = defaultdict(_Delta)
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._users_sent: set[tuple[str, int]] = set()
        #: Events received, and events that could not be counted (each logged).
        self.events = 0
        self.rejected = 0
        #: Writes recognised as already applied (a retry after a timeout): not counted twice.
        self.duplicates_ignored = 0

    # --- events (the pipeline's thread) ---------------------------------------------------------------

    def usage(self, event: UsageEvent) -> None:
        """Add one event; never does I/O."""
        delta = _Delta()
        day = _day(event.at)
        kind = event.kind
        if kind in _RUN_CODES:
            kind_of_run = event.pipeline_type or "UNKNOWN"
            delta.counts[f"{_RUN_CODES[kind]}.{kind_of_run}"] += 1
            if kind == "run_started":
                delta.counts[f"h{event.at.astimezone(UTC).hour:02d}"] += 1
            if kind == "run_completed":
                if event.recovered:
                    delta.counts[f"rv.{kind_of_run}"] += 1
                if event.seconds is not None:
                    delta.durations[f"r{kind_of_run}.{bucket_of(event.seconds)}"] += 1
        elif kind in _AGENT_CODES:
            if event.agent not in AGENTS:
                self.rejected += 1
                log.warning("usage.unknown_agent", agent=event.agent)
                return
            index = AGENTS.index(event.agent)
            delta.counts[f"{_AGENT_CODES[kind]}{index}"] += 1
            if kind == "agent_completed" and event.seconds is not None:
                delta.durations[f"a{index}.{bucket_of(event.seconds)}"] += 1
        elif kind == "project_saved":
            delta.counts["p.saved"] += 1
            for name in sorted({t.strip()[:_MAX_TECH_CHARS] for t in event.tech_stack if t.strip()}):
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
                delta.users -= {h for h in delta.users if (day, h) in self._users_sent}
                parts = (
                    (COUNTS, _Delta(counts=delta.counts)),
                    (DURATIONS, _Delta(durations=delta.durations)),
                    (USERS, _Delta(users=delta.users)),
                )
                for item, part in parts:
                    if part.empty():
                        continue
                    waiting = self._pending.get((day, item))
                    if waiting is not None:  # behind a write not yet confirmed: joins the next one
                        self._ready[day].merge(part)
                    else:
                        self._pending[(day, item)] = _Pending(day, item, self._next_seq(), part)
            pending = list(self._pending.values())
        ok = True
        for write in pending:
            try:
                if not self._store.apply(write):
                    self.duplicates_ignored += 1
            except StateError as exc:
                ok = False
                log.warning("usage.flush_failed", item=write.item, day=write.day, error=str(exc))
                continue
            with self._lock:
                del self._pending[(write.day, write.item)]
                if write.item == USERS:
                    self._users_sent |= {(write.day, h) for h in write.delta.users}
        with self._lock:
            return ok and not self._pending and not (everything and (self._held or self._ready))

    def held_runs(self) -> int:
        with self._lock:
            return len(self._held)


class UsageStore:
    """The three usage items through the shared DynamoDB layer."""

    def __init__(self, layer: DynamoLayer, writer_id: str) -> None:
        self._layer = layer
        self._table = layer.tables.metrics
        self._writer_attr = f"w_{writer_id}"

    def apply(self, write: _Pending) -> bool:
        """Apply one write exactly once; False when it had been applied already (a retry)."""
        names: dict[str, str] = {"#kind": "kind"}
        values: dict[str, Any] = {":kind": "usage"}
        sets = ["#kind = :kind"]
        adds: list[str] = []
        condition = None
        if write.item == USERS:
            names["#u"] = "u"
            values[":u"] = {Decimal(h) for h in write.delta.users}
            adds.append("#u :u")
        else:
            names["#w"] = self._writer_attr
            values[":seq"] = write.seq
            sets.append("#w = :seq")
            condition = "attribute_not_exists(#w) OR #w < :seq"
            source = write.delta.counts if write.item == COUNTS else write.delta.durations
            for i, (attr, n) in enumerate(sorted(source.items())):
                names[f"#a{i}"] = attr
                values[f":a{i}"] = n
                adds.append(f"#a{i} :a{i}")
        expiry = expires_at(write.day, self._layer.config.retention_days)
        if expiry is not None:
            sets.append("#exp = :exp")
            names["#exp"] = "expires_at"
            values[":exp"] = expiry
        try:
            self._layer.update(
                self._table,
                {"date": write.day, "metric_name": write.item},
                update="SET " + ", ".join(sets) + " ADD " + ", ".join(adds),
                condition=condition,
                names=names,
                values=values,
            )
        except ConditionFailed:
            log.info("usage.duplicate_ignored", item=write.item, day=write.day, seq=write.seq)
            return False
        return True

    def day(self, day: str) -> dict[str, dict[str, Any]]:
        """The day's usage items by sort key (one consistent Query)."""
        items = self._layer.query_all(
            self._table,
            key_condition="#d = :d AND begins_with(metric_name, :p)",
            names={"#d": "date"},
            values={":d": day, ":p": PREFIX},
            consistent=True,
        )
        return {str(i["metric_name"]): i for i in items}


# --- reading ----------------------------------------------------------------------------------------


def _histogram_quantiles(buckets: Mapping[int, int], qs: Iterable[float]) -> dict[str, float | None]:
    total = sum(buckets.values())
    out: dict[str, float | None] = {}
    for q in qs:
        label = f"p{round(q * 100)}"
        if total == 0:
            out[label] = None
            continue
        rank = max(1, math.ceil(q * total))
        seen = 0
        for bucket in sorted(buckets):
            seen += buckets[bucket]
            if seen >= rank:
                out[label] = round(bucket_value(bucket), 3)
                break
    return out


class UsageReader:
    """`report(start, end)`: the usage of a date range, from one Query per day."""

    def __init__(self, client: StateClient) -> None:
        self._store = UsageStore(client.layer, "reader")

    def report(self, start: date, end: date) -> dict[str, Any]:
        """The report as a dict in the documented shape (docs/usage.md); `None` where nothing was measured."""
        for name, day in (("start", start), ("end", end)):
            if not isinstance(day, date) or isinstance(day, datetime):
                raise MetricValidationError(f"{name} must be a date (YYYY-MM-DD), got {type(day).__name__}")
        if end < start:
            raise MetricValidationError(f"--to {end} is before --from {start}")
        if (end - start).days > 366:
            raise MetricValidationError("a usage report covers at most 366 days; split the range")
        counts: Counter[str] = Counter()
        durations: dict[str, Counter[int]] = defaultdict(Counter)
        users_total: set[int] = set()
        by_day_users: dict[str, int] = {}
        per_day: dict[str, dict[str, int]] = {}
        day = start
        while day <= end:
            key = day.isoformat()
            items = self._store.day(key)
            stored = items.get(COUNTS, {}).items()
            today = Counter({k: int(v) for k, v in stored if _counter(k) and _whole(k, v)})
            counts.update(today)
            for attr, n in items.get(DURATIONS, {}).items():
                ours = attr[:1] in ("a", "r") and "." in attr  # short names: the day must fit in 4 KB
                if ours and _whole(attr, n) and _whole(attr, attr.rpartition(".")[2]):
                    series, _, bucket = attr.rpartition(".")
                    durations[series][int(bucket)] += int(n)
            users = {int(h) for h in items.get(USERS, {}).get("u", set())}
            users_total |= users
            by_day_users[key] = len(users)
            per_day[key] = {
                outcome: sum(n for k, n in today.items() if k.startswith(code + "."))
                for outcome, code in (
                    ("started", "rs"),
                    ("completed", "rc"),
                    ("failed", "rf"),
                    ("abandoned", "ra"),
                    ("recovered", "rv"),
                )
            }
            day += timedelta(days=1)
        return _shape(start, end, counts, durations, users_total, by_day_users, per_day)


def _whole(attr: str, value: Any) -> bool:
    """Whether a stored counter (a Number) or a bucket index (text) is a whole number; an item edited by
    hand is skipped attribute by attribute, with a warning, instead of failing the whole report."""
    if isinstance(value, str):
        ok = re.fullmatch(r"-?[0-9]{1,6}", value) is not None
    else:
        ok = isinstance(value, int | Decimal) and not isinstance(value, bool) and value == int(value)
    if not ok:
        log.warning("usage.item_malformed", attribute=attr[:80], value=str(value)[:40])
    return ok


def _counter(attr: str) -> bool:
    return attr[:1] in {"r", "a", "h", "p", "t"} and not attr.startswith("w_") and attr != "kind"


def _shape(  # noqa: PLR0917 - the report's parts, gathered by report()
    start: date,
    end: date,
    counts: Counter[str],
    durations: Mapping[str, Counter[int]],
    users: set[int],
    by_day_users: dict[str, int],
    per_day: dict[str, dict[str, int]],
) -> dict[str, Any]:
    def total(code: str) -> int:
        return sum(n for k, n in counts.items() if k.startswith(code + "."))

    types = sorted(
        {k.split(".", 1)[1] for k in counts if k[:3] in {"rs.", "rc.", "rf.", "ra.", "rv.", "rm."}}
    )
    by_type = {
        t: {
            "started": counts[f"rs.{t}"],
            "completed": counts[f"rc.{t}"],
            "failed": counts[f"rf.{t}"],
            "abandoned": counts[f"ra.{t}"],
            "recovered": counts[f"rv.{t}"],
        }
        for t in sorted(set(PIPELINE_TYPES) | set(types))
    }
    funnel = [
        {
            "agent": agent,
            "started": counts[f"as{i}"],
            "completed": counts[f"ac{i}"],
            "failed": counts[f"af{i}"],
            "retries": counts[f"ar{i}"],
            "tolerated": counts[f"at{i}"],
        }
        for i, agent in enumerate(AGENTS)
    ]
    run_hist: Counter[int] = Counter()
    for series, hist in durations.items():
        if series.startswith("r"):
            run_hist.update(hist)
    quantiles = (0.50, 0.95)
    duration = {
        "run": _histogram_quantiles(run_hist, quantiles),
        "runs_by_pipeline_type": {
            series[1:]: _histogram_quantiles(hist, quantiles)
            for series, hist in sorted(durations.items())
            if series.startswith("r")
        },
        "agents": {
            agent: _histogram_quantiles(durations.get(f"a{i}", Counter()), quantiles)
            for i, agent in enumerate(AGENTS)
        },
        "relative_error": round(RELATIVE_ERROR, 4),
    }
    stacks = sorted(
        ((k[2:], n) for k, n in counts.items() if k.startswith("t.")), key=lambda s: (-s[1], s[0])
    )
    hours = sorted(
        ((int(k[1:]), n) for k, n in counts.items() if len(k) == 3 and k[0] == "h" and n),
        key=lambda h: (-h[1], h[0]),
    )
    return {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "runs": {
            "started": total("rs"),
            "completed": total("rc"),
            "failed": total("rf"),
            "abandoned": total("ra"),
            "recovered": total("rv"),
            "resumes": total("rm"),
            "by_pipeline_type": by_type,
        },
        "funnel": funnel,
        "duration_seconds": duration,
        "projects": {
            "saved": counts["p.saved"],
            "downloads": counts["p.downloads"],
            "tech_stack": [{"name": name, "projects": n} for name, n in stacks],
        },
        "active_users": {"total_distinct": len(users), "by_day": by_day_users},
        "busiest_hours_utc": [{"hour": hour, "runs_started": n} for hour, n in hours],
        "runs_per_day": per_day,
    }
