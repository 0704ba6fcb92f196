"""Usage counts of the facts the tables hold, counted from the tables: durable, whatever happened to the
processes that wrote them.

Why: the usage buffer (`tdev_metrics.usage`) counts a transition in the memory of the process that applied
it; a pipeline process SIGKILLed before its next flush takes those counts with it, and the report then
disagreed with the tables (16 runs started counted, 32 stored). Runs started, completed, failed, abandoned,
resumed and the agent funnel are facts the tables keep, so they are counted *from* the tables:

- a day's runs are the sessions the `by-day` index lists under that `created_day` (keys only, then one
  consistent BatchGetItem per page), each run's agents one consistent Query of its partition;
- every number is counted *by the day the run was created* (a run that ends after midnight counts on its
  first day), so each day is a closed set of runs and every figure of it is bounded by `runs.started`;
- the recovery worker folds each past day into one item, `#usage#tables`, once every run of that day is
  final (COMPLETED or ABANDONED) or the day is `SETTLE_DAYS` old. A closed fold is never written again
  (the write is conditioned on it), so folding twice counts once — it is a snapshot, not an addition — and a
  report reads a closed day as that one item, in the day's one Query: the report's cost stays flat in
  history. A day not folded closed yet (today, yesterday while runs are open) is counted at report time.

One definition per figure (docs/data-model.md, "Figures, one definition each"):

| figure | counts |
|---|---|
| `started` | runs created that day |
| `completed` | of those, runs now COMPLETED |
| `failed` | runs that entered FAILED at least once (`fail_count >= 1`) |
| `failure_events` | times those runs entered FAILED (the sum of `fail_count`) |
| `abandoned` | runs now ABANDONED |
| `recovered` | runs COMPLETED after a resume that recovered them (`Session.recoveries`) |
| `resumes` | resumes handed to the pipeline (the sum of `resume_count`; a fork's start is one) |
| agent `started` | runs with a stored item for the agent (it began at least once) |
| agent `completed` | of those, items COMPLETED — never more than `started` |
| agent `failed` | failed attempts: `retry_count`, plus 1 when the item is FAILED now |
| agent `retries` | `retry_count` |
| agent `tolerated` | runs listing the agent in `failed_agents` (a fork's: only from its fork point on) |
| agent `forks` | runs forked from another run at this agent (`fork_point`), with or without overrides |
| agent `replays` | of those, forks with no overrides (`replay`): the same inputs run again |

A fork's copies of its parent's agents (`origin_run`) and its fork point not started yet are not agent
items of its own: counted with the parent, not again.

A session or agent item the mapping cannot read is counted in `skipped`, logged, and left out; the others
are counted.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from tdev_metrics._store import expires_at
from tdev_metrics._usage_store import TABLES
from tdev_metrics.exceptions import MetricValidationError
from tdev_metrics.report import MetricsReader
from tdev_metrics.usage import duration_bucket
from tdev_state import (
    AgentStatus,
    MalformedItemError,
    Session,
    SessionStatus,
    StateClient,
    StateError,
)
from tdev_state.agents import AGENT_STEP
from tdev_state.log import get_logger
from tdev_state.storage import ConditionFailed

log = get_logger(__name__)

# A day's fold is the item TABLES (`#usage#tables`) of the metrics table (PK `date`): under the usage
# prefix, so the report's one Query per day returns it with the buffer's shards.
#: A day whose runs are not all final is folded closed anyway once it is this many days old: a run still
#: open then counts as it stood (the worker abandons open runs long before; docs/operations.md).
SETTLE_DAYS = 7
#: The worker folds a day only this long after it ended: a run stamped with that day by a process whose
#: clock lags, a session still on its way into the by-day index, a metric flushed late into the day's
#: items — all land before a fold can close the day for good.
CLOSE_GRACE = timedelta(hours=1)
RUN_OUTCOMES = ("started", "completed", "failed", "failure_events", "abandoned", "recovered", "resumes")
AGENT_OUTCOMES = ("started", "completed", "failed", "retries", "tolerated")
#: Forks counted by fork point, under the agent forked from (a fork is a run like any other: it also counts
#: in RUN_OUTCOMES and, from its fork point on, in the funnel).
FORK_OUTCOMES = ("forks", "replays")
#: Where a day's run and agent counts came from (the report says it per day).
FOLDED, COUNTED, BUFFER = "tables (folded)", "tables", "usage buffer (before folding)"
#: The metric whose percentiles are an agent's durations, in the usage report as in the metrics report.
AGENT_TIME = "agent_execution_time"
_PAGE = 100


@dataclass
class DayCount:
    """The run and agent counts of one UTC day's runs (by creation day)."""

    day: str
    #: pipeline type -> outcome (RUN_OUTCOMES) -> runs
    runs: dict[str, Counter[str]] = field(default_factory=dict)
    #: agent -> outcome (AGENT_OUTCOMES) -> count
    agents: dict[str, Counter[str]] = field(default_factory=dict)
    #: hour of creation (UTC) -> runs started
    hours: Counter[int] = field(default_factory=Counter)
    #: pipeline type -> duration bucket (tdev_metrics.usage.duration_bucket) -> COMPLETED runs
    run_seconds: dict[str, Counter[int]] = field(default_factory=dict)
    #: agent -> the day's `agent_execution_time` sketch buckets (MetricsReader.buckets_by_agent): kept in
    #: a closed fold, so a report of history reads no metric item. Empty when not folded.
    agent_time: dict[str, Counter[str]] = field(default_factory=dict)
    #: Runs still ACTIVE or FAILED when counted.
    open_runs: int = 0
    #: Items the mapping could not read (each logged): left out of every count.
    skipped: int = 0
    source: str = COUNTED
    closed: bool = False

    def run(self, pipeline_type: str) -> Counter[str]:
        return self.runs.setdefault(pipeline_type, Counter())

    def agent(self, name: str) -> Counter[str]:
        return self.agents.setdefault(name, Counter())

    def total(self, outcome: str) -> int:
        return sum(c[outcome] for c in self.runs.values())

    def add_run(self, session: Session) -> None:
        """Count one run (its agents are `add_agents`); ValueError, counting nothing, when it names an agent
        that is not one (a model built without the mapping, which refuses such an item)."""
        named = [*session.failed_agents, *([session.fork_point] if session.fork_point is not None else [])]
        unknown = [a for a in named if a not in AGENT_STEP]
        if unknown:
            name = unknown[0][:40]
            raise ValueError(f"run {session.session_id[:80]!r} names {name!r}, which is not an agent")
        counts = self.run(session.pipeline_type.value)
        counts["started"] += 1
        status = session.status
        if status is SessionStatus.COMPLETED:
            counts["completed"] += 1
            counts["recovered"] += 1 if session.recoveries > 0 else 0
            seconds = (session.last_updated - session.created_at).total_seconds()
            self.run_seconds.setdefault(session.pipeline_type.value, Counter())[duration_bucket(seconds)] += 1
        elif status is SessionStatus.ABANDONED:
            counts["abandoned"] += 1
        else:
            self.open_runs += 1
        counts["failed"] += 1 if session.fail_count > 0 else 0
        counts["failure_events"] += session.fail_count
        counts["resumes"] += session.resume_count
        self.hours[session.created_at.astimezone(UTC).hour] += 1
        for agent in session.failed_agents:
            if session.fork_point is None or AGENT_STEP[agent] >= AGENT_STEP[session.fork_point]:
                self.agent(agent)["tolerated"] += 1  # a fork's copies were counted with its parent
        if session.fork_point is not None:
            fork = self.agent(session.fork_point)
            fork["forks"] += 1
            fork["replays"] += 1 if session.replay else 0

    def add_agents(self, executions: Iterable[Any]) -> None:
        """Count one run's agent items (`AgentExecution`s)."""
        for execution in executions:
            if execution.origin_run is not None or execution.status is AgentStatus.PENDING:
                continue  # a fork's copy (its parent's work), or a fork point not started yet
            counts = self.agent(execution.agent_name)
            counts["started"] += 1
            counts["completed"] += 1 if execution.status is AgentStatus.COMPLETED else 0
            counts["retries"] += execution.retry_count
            counts["failed"] += execution.retry_count + (1 if execution.status is AgentStatus.FAILED else 0)

    # --- the stored fold --------------------------------------------------------------------------------

    def to_item(self) -> dict[str, Any]:
        """The fold's attributes (besides its key): nested maps of whole numbers."""
        return {
            "runs": {t: dict(c) for t, c in self.runs.items()},
            "agents": {a: dict(c) for a, c in self.agents.items()},
            "hours": {f"{h:02d}": n for h, n in self.hours.items()},
            "run_seconds": {t: {str(b): n for b, n in c.items()} for t, c in self.run_seconds.items()},
            "agent_time": {a: dict(c) for a, c in self.agent_time.items()},
            "open_runs": self.open_runs,
            "skipped": self.skipped,
        }

    @classmethod
    def from_item(cls, day: str, item: Mapping[str, Any]) -> DayCount:
        """A stored fold; ValueError or TypeError when it is not one (edited by hand, say)."""
        return cls(
            day=day,
            runs={str(t): _counter(c) for t, c in _map(item.get("runs")).items()},
            agents={str(a): _counter(c) for a, c in _map(item.get("agents")).items()},
            hours=Counter({int(h): _whole(n) for h, n in _map(item.get("hours")).items()}),
            run_seconds={
                str(t): Counter({int(b): _whole(n) for b, n in _map(c).items()})
                for t, c in _map(item.get("run_seconds")).items()
            },
            agent_time={str(a): _counter(c) for a, c in _map(item.get("agent_time")).items()},
            open_runs=_whole(item.get("open_runs", 0)),
            skipped=_whole(item.get("skipped", 0)),
            source=FOLDED,
            closed=bool(item.get("closed")),
        )


def _map(value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a map, got {type(value).__name__}")
    return value


def _whole(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | Decimal) or value != int(value) or value < 0:
        raise ValueError(f"{value!r:.40} is not a whole number")
    return int(value)


def _counter(value: Any) -> Counter[str]:
    return Counter({str(k): _whole(n) for k, n in _map(value).items()})


# --- counting ---------------------------------------------------------------------------------------------


def count_day(client: StateClient, day: date) -> DayCount:
    """Count `day`'s runs from the tables now: the by-day index, the sessions, each run's agents.

    Cost: one index Query and one BatchGetItem per 100 runs, plus one Query per run for its agents — paid
    once per day by the worker's fold; a report pays it only for days not folded closed yet."""
    _check_day("day", day)
    count = DayCount(day=day.isoformat())
    cursor: str | None = None
    while True:
        page = client.sessions.list_by_day(day, limit=_PAGE, cursor=cursor, load_metadata=False)
        for bad in page.skipped:
            count.skipped += 1
            log.warning("usage.tables_item_skipped", day=count.day, error=str(bad)[:300])
        for session in page.items:
            try:
                count.add_run(session)
                count.add_agents(client.executions.list(session.session_id, load_payloads=False))
            except (MalformedItemError, ValueError) as exc:
                count.skipped += 1
                sid = session.session_id
                log.warning("usage.tables_item_skipped", day=count.day, session_id=sid, error=str(exc)[:300])
        cursor = page.next_cursor
        if cursor is None:
            return count


# --- folding ----------------------------------------------------------------------------------------------


def _check_day(name: str, value: Any) -> None:
    if not isinstance(value, date) or isinstance(value, datetime):
        raise MetricValidationError(f"{name} must be a date (YYYY-MM-DD), got {type(value).__name__}")


def read_fold(client: StateClient, day: date) -> DayCount | None:
    """The stored fold of `day`, or None (none yet, or unreadable: logged, and counted again)."""
    _check_day("day", day)
    layer = client.layer
    item = layer.get(layer.tables.metrics, {"date": day.isoformat(), "metric_name": TABLES})
    return fold_from_item(day.isoformat(), item)


def fold_from_item(day: str, item: Mapping[str, Any] | None) -> DayCount | None:
    """A day's fold from its stored item; None when there is none, or it is malformed (logged)."""
    if item is None:
        return None
    try:
        return DayCount.from_item(day, item)
    except (TypeError, ValueError, ArithmeticError) as exc:
        log.warning("usage.fold_malformed", day=day, error=str(exc)[:300])
        return None


def fold_day(client: StateClient, day: date, *, today: date) -> DayCount:
    """Count `day` from the tables and store it as the day's fold; closed (never written again) when every
    run of the day is readable and final and the day is over, or the day is SETTLE_DAYS old. A day already
    folded closed is returned as stored, with no count. Idempotent: the fold is the count itself, not an
    addition."""
    _check_day("day", day)
    _check_day("today", today)
    stored = read_fold(client, day)
    if stored is not None and stored.closed:
        return stored
    count = count_day(client, day)
    count.agent_time = MetricsReader(client).buckets_by_agent(AGENT_TIME, day)
    age = (today - day).days
    # A skipped (unreadable) item may be an open run's: the day is not known final until it settles.
    count.closed = age >= SETTLE_DAYS or (age >= 1 and count.open_runs == 0 and count.skipped == 0)
    layer = client.layer
    values: dict[str, Any] = {":kind": "usage", ":at": time.time(), ":closed": count.closed}
    names = {"#kind": "kind", "#at": "folded_at", "#closed": "closed"}
    sets = ["#kind = :kind", "#at = :at", "#closed = :closed"]
    for i, (name, value) in enumerate(count.to_item().items()):
        names[f"#f{i}"], values[f":f{i}"] = name, value
        sets.append(f"#f{i} = :f{i}")
    expiry = expires_at(count.day, layer.config.retention_days)
    if expiry is not None:
        names["#exp"], values[":exp"] = "expires_at", expiry
        sets.append("#exp = :exp")
    try:
        layer.update(
            layer.tables.metrics,
            {"date": count.day, "metric_name": TABLES},
            update="SET " + ", ".join(sets),
            condition="attribute_not_exists(#closed) OR #closed = :no",
            names=names,
            values={**values, ":no": False},
        )
    except ConditionFailed:  # another replica closed it meanwhile: its fold stands
        log.info("usage.fold_already_closed", day=count.day)
    log.info("usage.folded", day=count.day, runs=count.total("started"), closed=count.closed)
    return count


@dataclass
class UsageFolder:
    """The recovery worker's periodic fold, at most once per `interval` seconds: every day of the last
    `history_days` (today excluded) not yet folded closed, newest first, at most `days_per_call` per call —
    the settle window each time, and older days (history from before the worker ran) a few at a time until
    every one is closed. A day seen closed is not read again. Each day is its own attempt: a day that fails
    is counted, logged, and the others go on (it is tried again next time)."""

    client: StateClient
    interval: float = 600.0
    monotonic: Callable[[], float] = time.monotonic
    history_days: int = 366
    days_per_call: int = 14
    #: Days folded (closed or not), and days that failed, since the start.
    folded: int = 0
    failures: int = 0
    _last: float | None = None
    _closed: set[date] = field(default_factory=set)
    _stopping: bool = False

    def stop(self) -> None:
        """Fold no further day (a call under way ends after its current day): the worker is stopping."""
        self._stopping = True

    def __call__(self) -> int:
        """Fold the days due if the interval has passed; the number of days folded now."""
        moment = self.monotonic()
        if self._last is not None and moment - self._last < self.interval:
            return 0
        self._last = moment
        # A day counts as past (foldable, closable) only CLOSE_GRACE after its midnight.
        return self.fold((self.client.clock() - CLOSE_GRACE).astimezone(UTC).date())

    def fold(self, today: date) -> int:
        """Fold the days due before `today`, newest first; the number folded."""
        _check_day("today", today)
        oldest = today - timedelta(days=self.history_days)
        self._closed = {d for d in self._closed if d >= oldest}
        due = [today - timedelta(days=back) for back in range(1, self.history_days + 1)]
        done = 0
        for day in [d for d in due if d not in self._closed][: self.days_per_call]:
            if self._stopping:
                break
            try:
                count = fold_day(self.client, day, today=today)
            except StateError as exc:
                self.failures += 1
                log.warning("usage.fold_failed", day=day.isoformat(), error=str(exc)[:300])
                continue
            except Exception as exc:  # a bug: counted, logged, the other days go on
                self.failures += 1
                log.exception("usage.fold_crashed", day=day.isoformat(), error=f"{type(exc).__name__}: {exc}")
                continue
            if count.closed:
                self._closed.add(day)
            done += 1
        self.folded += done
        return done
