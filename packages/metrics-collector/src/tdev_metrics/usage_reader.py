"""`UsageReader`: a date range's usage report from the compact per-day items `tdev_metrics.usage` writes.

One Query per day, whatever the traffic; counters stored under an agent's name and under the legacy
positional keys of days written before agents were keyed by name add up (see `tdev_metrics.usage`).
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from tdev_metrics._usage_store import COUNTS, DURATIONS, USERS, UsageStore
from tdev_metrics.exceptions import MetricValidationError
from tdev_metrics.usage import (
    AGENT_CODES,
    CLAMPED_DURATIONS,
    LEGACY_AGENTS,
    LEGACY_COUNTER,
    LEGACY_SERIES,
    OTHER_STACKS,
    PIPELINE_TYPES,
    RELATIVE_ERROR,
    bucket_value,
)
from tdev_state import AGENTS, StateClient
from tdev_state.log import get_logger

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
        items_read = 0
        day = start
        while day <= end:
            key = day.isoformat()
            shards = self._store.day(key)  # every shard of the three families
            today: Counter[str] = Counter()
            for item in shards[COUNTS]:
                for attr, n in item.items():
                    if _counter(attr) and _whole(attr, n):
                        today[_named(attr)] += int(n)  # an old key and its named one add up
            counts.update(today)
            for item in shards[DURATIONS]:
                for attr, n in item.items():
                    ours = attr[:1] in ("a", "r") and "." in attr  # short names keep a shard small
                    if ours and _whole(attr, n) and _whole(attr, attr.rpartition(".")[2]):
                        series, _, bucket = attr.rpartition(".")
                        durations[_named_series(series)][int(bucket)] += int(n)
            users = {int(h) for item in shards[USERS] for h in item.get("u", set())}
            items_read += sum(len(v) for v in shards.values())
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
        report = _shape(start, end, counts, durations, users_total, by_day_users, per_day)
        report["capped"]["usage_items_read"] = items_read
        return report


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


def _named_series(series: str) -> str:
    """A duration series with the agent named: a legacy positional series (`a6`) becomes `a.generation`."""
    legacy = LEGACY_SERIES.fullmatch(series)
    if legacy is None:
        return series
    position = int(legacy.group(1))
    if position >= len(LEGACY_AGENTS):
        log.warning("usage.item_malformed", attribute=series[:80], value="no agent at this position")
        return f"a.#{position}"
    return f"a.{LEGACY_AGENTS[position]}"


def _agents_in(counts: Counter[str], durations: Mapping[str, Counter[int]]) -> list[str]:
    """The agents to report: the declared ones in pipeline order, then any other agent the stored days
    name (an agent removed or renamed since), sorted — stored counts are never silently left out."""
    stored = {k[3:] for k in counts if k[:3] in {f"{code}." for code in AGENT_CODES.values()}}
    stored |= {s[2:] for s in durations if s.startswith("a.")}
    return [*AGENTS, *sorted(stored - set(AGENTS))]


def _counter(attr: str) -> bool:
    return attr[:1] in {"r", "a", "h", "p", "t", "x"} and not attr.startswith("w_") and attr != "kind"


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
    agents = _agents_in(counts, durations)
    funnel = [
        {
            "agent": agent,
            "started": counts[f"as.{agent}"],
            "completed": counts[f"ac.{agent}"],
            "failed": counts[f"af.{agent}"],
            "retries": counts[f"ar.{agent}"],
            "tolerated": counts[f"at.{agent}"],
        }
        for agent in agents
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
            agent: _histogram_quantiles(durations.get(f"a.{agent}", Counter()), quantiles) for agent in agents
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
            "tech_stack_other": counts[OTHER_STACKS],
        },
        "capped": {
            # What the bounds on usage items (tdev_metrics._usage_store) counted without its detail.
            "tech_stack_entries_as_other": counts[OTHER_STACKS],
            "durations_clamped": counts[CLAMPED_DURATIONS],
        },
        "active_users": {"total_distinct": len(users), "by_day": by_day_users},
        "busiest_hours_utc": [{"hour": hour, "runs_started": n} for hour, n in hours],
        "runs_per_day": per_day,
    }
