"""`UsageReader`: a date range's usage report.

Per day, one Query of the usage items: the buffer's counters (`tdev_metrics.usage`: projects, downloads,
tech stacks, users) and the day's fold (`tdev_metrics.usage_tables`: runs, the agent funnel, durations).
Runs and the funnel are the tables' counts — a closed fold as stored, another day counted from the tables
now — so they equal the tables whatever a pipeline process lost. Counters stored under an agent's name and
under the legacy positional keys of days written before agents were keyed by name add up (see
`tdev_metrics.usage`).
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from tdev_metrics._usage_store import COUNTS, DURATIONS, TABLES, USERS, UsageStore
from tdev_metrics.exceptions import MetricValidationError
from tdev_metrics.report import MetricsReader, quantiles
from tdev_metrics.usage import (
    CLAMPED_DURATIONS,
    LEGACY_AGENTS,
    LEGACY_COUNTER,
    OTHER_STACKS,
    PIPELINE_TYPES,
    RELATIVE_ERROR,
    bucket_value,
)
from tdev_metrics.usage_tables import (
    AGENT_OUTCOMES,
    AGENT_TIME,
    BUFFER,
    FORK_OUTCOMES,
    RUN_OUTCOMES,
    DayCount,
    count_day,
    fold_from_item,
)
from tdev_state import AGENTS, StateClient
from tdev_state.log import get_logger
from tdev_state.storage import Item

log = get_logger(__name__)

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
    """`report(start, end)`: the usage of a date range, from one Query per day (plus, for a day not folded
    closed yet, the count of its runs from the tables: `tdev_metrics.usage_tables`)."""

    def __init__(self, client: StateClient) -> None:
        self._client = client
        self._store = UsageStore(client.layer, "reader")

    def report(self, start: date, end: date) -> dict[str, Any]:
        """The report as a dict in the documented shape (docs/usage.md); `None` where nothing was measured.

        Runs and the agent funnel are counted from the tables, by the day each run was created (a closed
        day from its fold, another day now); projects, downloads, tech stacks and users from the usage
        buffer's items; agent durations from the `agent_execution_time` metric (`MetricsReader.by_agent`)."""
        for name, day in (("start", start), ("end", end)):
            if not isinstance(day, date) or isinstance(day, datetime):
                raise MetricValidationError(f"{name} must be a date (YYYY-MM-DD), got {type(day).__name__}")
        if end < start:
            raise MetricValidationError(f"--to {end} is before --from {start}")
        if (end - start).days > 366:
            raise MetricValidationError("a usage report covers at most 366 days; split the range")
        counts: Counter[str] = Counter()
        users_total: set[int] = set()
        by_day_users: dict[str, int] = {}
        days: list[DayCount] = []
        items_read = 0
        day = start
        while day <= end:
            key = day.isoformat()
            shards = self._store.day(key)  # every shard of the three families, and the day's fold
            today: Counter[str] = Counter()
            for item in shards[COUNTS]:
                for attr, n in item.items():
                    if _counter(attr) and _whole(attr, n):
                        today[_named(attr)] += int(n)  # an old key and its named one add up
            counts.update(today)
            users = {int(h) for item in shards[USERS] for h in item.get("u", set())}
            items_read += sum(len(v) for v in shards.values())
            users_total |= users
            by_day_users[key] = len(users)
            days.append(self._day_count(day, shards, today))
            day += timedelta(days=1)
        report = _shape(start, end, counts, days, users_total, by_day_users)
        report["capped"]["usage_items_read"] = items_read
        return report

    def _day_count(self, day: date, shards: Mapping[str, list[Item]], buffered: Counter[str]) -> DayCount:
        """The day's runs and funnel: its closed fold; else the tables counted now; the buffer's counters
        only for a day whose runs the tables no longer hold (expired, or from before folding)."""
        key = day.isoformat()
        fold = fold_from_item(key, shards[TABLES][0]) if shards[TABLES] else None
        if fold is not None and fold.closed:
            counted = fold
        else:
            counted = count_day(self._client, day)
            counted.agent_time = MetricsReader(self._client).buckets_by_agent(AGENT_TIME, day)
        # Only runs *started* that day (`rs.`) say the tables lost its runs: the buffer counts an end, a
        # resume or an agent on the day it happened, so a day with no run of its own still holds those of
        # the runs of the days before (a run resumed or failed after midnight) — counted on their own day.
        if counted.total("started") == 0 and any(k.startswith("rs.") and n > 0 for k, n in buffered.items()):
            durations: Counter[str] = Counter()
            for item in shards[DURATIONS]:
                for attr, n in item.items():
                    bucket = attr.rpartition(".")[2]
                    if attr[:1] == "r" and "." in attr and _whole(attr, n) and _whole(attr, bucket):
                        durations[attr] += int(n)
            legacy = _from_buffer(key, buffered, durations)
            legacy.agent_time = counted.agent_time
            return legacy
        return counted


def _from_buffer(day: str, counts: Counter[str], durations: Counter[str]) -> DayCount:
    """A day counted by the usage buffer alone (its runs are no longer in the tables). The buffer counted
    failure events only: `failed` (runs) shows that number too, and the day's source says so."""
    out = DayCount(day=day, source=BUFFER, closed=True)
    runs = {
        "rs": ("started",),
        "rc": ("completed",),
        "rf": ("failed", "failure_events"),
        "ra": ("abandoned",),
        "rv": ("recovered",),
        "rm": ("resumes",),
    }
    agents = dict(zip(("as", "ac", "af", "ar", "at"), AGENT_OUTCOMES, strict=True))
    for name, n in counts.items():
        code, _, rest = name.partition(".")
        if code in runs and rest:
            for outcome in runs[code]:
                out.run(rest)[outcome] += n
        elif code in agents and rest:
            out.agent(rest)[agents[code]] += n
        elif len(name) == 3 and name[0] == "h" and name[1:].isdecimal():
            out.hours[int(name[1:])] += n
    for series, n in durations.items():
        name, _, bucket = series.rpartition(".")
        out.run_seconds.setdefault(name[1:], Counter())[int(bucket)] += n
    return out


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


def _named(attr: str) -> str:
    """A counter's name with the agent named: a legacy positional key (`ac6`) becomes `ac.generation`."""
    legacy = LEGACY_COUNTER.fullmatch(attr)
    if legacy is None:
        return attr
    code, position = legacy.group(1), int(legacy.group(2))
    if position >= len(LEGACY_AGENTS):  # never written: positions went 0..8
        log.warning("usage.item_malformed", attribute=attr[:80], value="no agent at this position")
        return f"{code}.#{position}"
    return f"{code}.{LEGACY_AGENTS[position]}"


def _agents_in(stored: Iterable[str]) -> list[str]:
    """The agents to report: the declared ones in pipeline order, then any other agent the counted days
    name (an agent removed or renamed since), sorted — counted agents are never silently left out."""
    return [*AGENTS, *sorted(set(stored) - set(AGENTS))]


def _counter(attr: str) -> bool:
    return attr[:1] in {"r", "a", "h", "p", "t", "x"} and not attr.startswith("w_") and attr != "kind"


def _shape(  # noqa: PLR0917 - the report's parts, gathered by report()
    start: date,
    end: date,
    counts: Counter[str],
    days: list[DayCount],
    users: set[int],
    by_day_users: dict[str, int],
) -> dict[str, Any]:
    runs: dict[str, Counter[str]] = defaultdict(Counter)
    agents_counted: dict[str, Counter[str]] = defaultdict(Counter)
    hours: Counter[int] = Counter()
    run_seconds: dict[str, Counter[int]] = defaultdict(Counter)
    agent_time: dict[str, Counter[str]] = defaultdict(Counter)
    for one in days:
        for agent, buckets in one.agent_time.items():
            agent_time[agent].update(buckets)
        for kind, c in one.runs.items():
            runs[kind].update(c)
        for agent, c in one.agents.items():
            agents_counted[agent].update(c)
        hours.update(one.hours)
        for kind, hist in one.run_seconds.items():
            run_seconds[kind].update(hist)
    total: Counter[str] = Counter()
    for outcomes in runs.values():
        total.update(outcomes)
    by_type = {t: {o: runs[t][o] for o in RUN_OUTCOMES} for t in sorted(set(PIPELINE_TYPES) | set(runs))}
    agents = _agents_in(agents_counted)
    funnel = [{"agent": agent, **{o: agents_counted[agent][o] for o in AGENT_OUTCOMES}} for agent in agents]
    # Forks by fork point (docs/fork.md): the agents some run was forked from, in pipeline order.
    by_point = {
        agent: {o: agents_counted[agent][o] for o in FORK_OUTCOMES}
        for agent in agents
        if agents_counted[agent]["forks"]
    }
    forks = {**{o: sum(c[o] for c in by_point.values()) for o in FORK_OUTCOMES}, "by_fork_point": by_point}
    all_runs: Counter[int] = Counter()
    for hist in run_seconds.values():
        all_runs.update(hist)
    qs = (0.50, 0.95)
    duration = {
        "run": _histogram_quantiles(all_runs, qs),
        "runs_by_pipeline_type": {
            kind: _histogram_quantiles(hist, qs) for kind, hist in sorted(run_seconds.items())
        },
        # The agent_execution_time metric's percentiles, every hour and variant (MetricsReader.by_agent):
        # one definition, the metrics report's (DDSketch, 1 % relative accuracy).
        "agents": {agent: _rounded(quantiles(agent_time.get(agent, Counter()), qs)) for agent in agents},
        "relative_error": round(RELATIVE_ERROR, 4),
    }
    stacks = sorted(
        ((k[2:], n) for k, n in counts.items() if k.startswith("t.")), key=lambda s: (-s[1], s[0])
    )
    busiest = sorted(((h, n) for h, n in hours.items() if n), key=lambda h: (-h[1], h[0]))
    return {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "runs": {**{o: total[o] for o in RUN_OUTCOMES}, "by_pipeline_type": by_type},
        "funnel": funnel,
        "forks": forks,
        "duration_seconds": duration,
        "projects": {
            "saved": counts["p.saved"],
            "downloads": counts["p.downloads"],
            "tech_stack": [{"name": name, "projects": n} for name, n in stacks],
            "tech_stack_other": counts[OTHER_STACKS],
        },
        "capped": {
            # What the bounds on usage items (tdev_metrics._usage_store) counted without its detail.
            "tech_stack_entries_as_other": counts[OTHER_STACKS],
            "durations_clamped": counts[CLAMPED_DURATIONS],
            # Session or agent items the tables' count could not read (each logged) and left out.
            "items_skipped": sum(one.skipped for one in days),
        },
        "active_users": {"total_distinct": len(users), "by_day": by_day_users},
        "busiest_hours_utc": [{"hour": hour, "runs_started": n} for hour, n in busiest],
        "runs_per_day": {one.day: {o: one.total(o) for o in RUN_OUTCOMES} for one in days},
        "counted_from": {one.day: one.source for one in days},
    }


def _rounded(values: Mapping[str, float | None]) -> dict[str, float | None]:
    return {k: None if v is None else round(v, 3) for k, v in values.items()}
