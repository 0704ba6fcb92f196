"""Reading metrics back: hourly and daily summaries with percentiles, and A/B comparisons.

The plan's `avg_response_time` and `error_rate` are ratios. Two collectors cannot update a stored ratio
atomically, so the table keeps their exact parts (`value` = sum, `count`, `errors`) and they are computed
here. Percentiles come from the stored DDSketch buckets, merged across hours for daily figures (1 %
relative accuracy).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from tdev_metrics._aggregate import sketch_from_buckets
from tdev_metrics._store import MetricsStore
from tdev_metrics.exceptions import MetricValidationError
from tdev_state import StateClient
from tdev_state.log import get_logger

log = get_logger(__name__)

#: Numeric attributes of a stored metric item (besides its sketch buckets `b_*`).
_NUMBERS = ("count", "value", "sumsq", "errors", "min_value", "max_value")

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Summary:
    """One metric of one agent (and variant) over one hour, or one day when `hour` is None."""

    date: str
    hour: int | None
    metric: str
    agent: str
    variant: str | None
    count: int
    total: float
    errors: int
    avg_response_time: float | None
    error_rate: float | None
    stddev: float | None
    min: float | None
    max: float | None
    p50: float | None
    p95: float | None
    p99: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Interval:
    """A difference (B - A) with its 95 % confidence interval."""

    difference: float
    low: float
    high: float

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class Comparison:
    """Variant B against variant A of one agent's metric."""

    a: Summary
    b: Summary
    mean: Interval | None
    error_rate: Interval | None


class MetricsReader:
    """Query API over the metrics table."""

    def __init__(self, client: StateClient) -> None:
        self._store = MetricsStore(client.layer, writer_id="reader")

    def hourly(
        self,
        metric: str,
        *,
        start: date,
        end: date | None = None,
        agent: str | None = None,
        variant: str | None = None,
    ) -> list[Summary]:
        """One summary per (date, hour, agent, variant) in [start, end], ordered by time then agent."""
        return [self._summary(*group) for group in self._groups(metric, start, end, agent, variant)]

    def daily(
        self,
        metric: str,
        *,
        start: date,
        end: date | None = None,
        agent: str | None = None,
        variant: str | None = None,
    ) -> list[Summary]:
        """Hours merged per (date, agent, variant): counts add, sketches merge."""
        days: dict[tuple[str, str, str | None], list[dict[str, Any]]] = defaultdict(list)
        for day, _hour, _metric, agent_name, var, items in self._groups(metric, start, end, agent, variant):
            days[(day, agent_name, var)].extend(items)
        return [
            self._summary(day, None, metric, agent_name, var, items)
            for (day, agent_name, var), items in sorted(
                days.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or "")
            )
        ]

    def by_agent(self, metric: str, *, start: date, end: date | None = None) -> dict[str, Summary]:
        """One summary per agent over the whole range, every hour and variant merged: the one definition
        of an agent's duration percentiles, which the usage report shows too (docs/data-model.md,
        "Figures, one definition each"). One Query per day."""
        agents: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for _day, _hour, _metric, agent_name, _var, items in self._groups(metric, start, end, None, None):
            agents[agent_name].extend(items)
        first = start.isoformat()
        return {
            agent: self._summary(first, None, metric, agent, None, items)
            for agent, items in sorted(agents.items())
        }

    def buckets_by_agent(self, metric: str, day: date) -> dict[str, Counter[str]]:
        """A day's sketch buckets per agent, every hour and variant added up (one Query): what the usage
        fold keeps of a closed day, so a report reads one item instead of the day's metric items.
        `quantiles(buckets)` of them is what `by_agent` gives for that day."""
        agents: dict[str, Counter[str]] = defaultdict(Counter)
        for _day, _hour, _metric, agent_name, _var, items in self._groups(metric, day, day, None, None):
            agents[agent_name].update(sketch_buckets(items))
        return dict(agents)

    def compare(
        self,
        metric: str,
        *,
        agent: str,
        variant_a: str,
        variant_b: str,
        start: date,
        end: date | None = None,
    ) -> Comparison:
        """B against A over the period: difference of means (Welch, normal approximation) and of error
        rates (Wald), each with a 95 % confidence interval."""
        a, b = (self._total(metric, agent, v, start, end) for v in (variant_a, variant_b))
        return Comparison(a=a, b=b, mean=_mean_interval(a, b), error_rate=_rate_interval(a, b))

    def period(
        self,
        metric: str,
        *,
        start: date,
        end: date | None = None,
        agent: str | None = None,
        variant: str | None = None,
    ) -> list[Summary]:
        """One summary per (agent, variant) over the whole period (its `date` is the first day): counts
        add and sketches merge across days, as `daily` merges hours."""
        merged: dict[tuple[str, str | None], list[dict[str, Any]]] = defaultdict(list)
        for _day, _hour, _metric, agent_name, var, items in self._groups(metric, start, end, agent, variant):
            merged[(agent_name, var)].extend(items)
        return [
            self._summary(start.isoformat(), None, metric, agent_name, var, items)
            for (agent_name, var), items in sorted(merged.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))
        ]

    def metric_names(self, *, start: date, end: date | None = None) -> list[str]:
        """The names of the metrics recorded on the days [start, end], sorted — what a picker offers instead
        of a free-text box. One Query per day (each day is one partition of the metrics table); the usage
        counters kept in the same partitions are not metrics and are left out."""
        names: set[str] = set()
        for day in _days(start, end):
            for sort_key in self._store.sort_keys_of_day(day.isoformat()):
                name = sort_key.split("#", 1)[0]
                if name and not sort_key.startswith("#"):
                    names.add(name)
        return sorted(names)

    # --- helpers --------------------------------------------------------------------------------------

    def _total(self, metric: str, agent: str, variant: str, start: date, end: date | None) -> Summary:
        items = [i for *_, items in self._groups(metric, start, end, agent, variant) for i in items]
        return self._summary(start.isoformat(), None, metric, agent, variant, items)

    def _groups(
        self, metric: str, start: date, end: date | None, agent: str | None, variant: str | None
    ) -> list[tuple[str, int, str, str, str | None, list[dict[str, Any]]]]:
        for name, value in (("metric", metric), ("agent", agent), ("variant", variant)):
            if value is None and name != "metric":
                continue
            if not isinstance(value, str) or not value or "#" in value:
                raise MetricValidationError(
                    f"{name} name {value!r:.60} is not valid: a non-empty string without '#'"
                )
        prefix = f"{metric}#" + (f"{agent}#" if agent else "")
        out = []
        for day in _days(start, end):
            for item in self._store.query_day(day.isoformat(), prefix):
                if not _readable(item):
                    continue
                parts = str(item["metric_name"]).split("#")
                item_variant = parts[3] if len(parts) > 3 else None
                if variant is not None and item_variant != variant:
                    continue
                out.append((day.isoformat(), int(parts[2]), parts[0], parts[1], item_variant, [item]))
        out.sort(key=lambda g: (g[0], g[1], g[3], g[4] or ""))
        return out

    @staticmethod
    def _summary(  # noqa: PLR0917 - mirrors the group tuple it is applied to
        day: str, hour: int | None, metric: str, agent: str, variant: str | None, items: list[dict[str, Any]]
    ) -> Summary:
        count = sum(int(i.get("count", 0)) for i in items)
        total = sum(float(i.get("value", 0)) for i in items)
        sumsq = sum(float(i.get("sumsq", 0)) for i in items)
        errors = sum(int(i.get("errors", 0)) for i in items)
        lows = [float(i["min_value"]) for i in items if "min_value" in i]
        highs = [float(i["max_value"]) for i in items if "max_value" in i]
        sketch = None
        for item in items:
            part = sketch_from_buckets({k[2:]: float(v) for k, v in item.items() if k.startswith("b_")})
            if sketch is None:
                sketch = part
            else:
                sketch.merge(part)

        def quantile(q: float) -> float | None:
            if sketch is None or sketch.count == 0:
                return None
            value = sketch.get_quantile_value(q)
            return float(value) if value is not None else None

        mean = total / count if count else None
        variance = (sumsq / count - (mean or 0.0) ** 2) * count / (count - 1) if count > 1 else None
        return Summary(
            date=day,
            hour=hour,
            metric=metric,
            agent=agent,
            variant=variant,
            count=count,
            total=total,
            errors=errors,
            avg_response_time=mean,
            error_rate=errors / count if count else None,
            stddev=math.sqrt(max(variance, 0.0)) if variance is not None else None,
            min=min(lows) if lows else None,
            max=max(highs) if highs else None,
            p50=quantile(0.50),
            p95=quantile(0.95),
            p99=quantile(0.99),
        )


def sketch_buckets(items: Iterable[Mapping[str, Any]]) -> Counter[str]:
    """The DDSketch bucket counts of metric items added up (merging sketches of one mapping is adding
    their buckets): hours into days, variants into one, days into a range."""
    out: Counter[str] = Counter()
    for item in items:
        for name, count in item.items():
            if name.startswith("b_"):
                out[name[2:]] += int(count)
    return out


def quantiles(buckets: Mapping[str, float], qs: Iterable[float] = (0.50, 0.95)) -> dict[str, float | None]:
    """`p50`, `p95`… of merged sketch buckets (DDSketch, 1 % relative accuracy); None without data."""
    sketch = sketch_from_buckets(dict(buckets)) if buckets else None
    out: dict[str, float | None] = {}
    for q in qs:
        value = sketch.get_quantile_value(q) if sketch is not None and sketch.count else None
        out[f"p{round(q * 100)}"] = float(value) if value is not None else None
    return out


def _mean_interval(a: Summary, b: Summary) -> Interval | None:
    if a.count < 2 or b.count < 2 or a.stddev is None or b.stddev is None:
        return None
    diff = (b.avg_response_time or 0.0) - (a.avg_response_time or 0.0)
    half = Z95 * math.sqrt(a.stddev**2 / a.count + b.stddev**2 / b.count)
    return Interval(diff, diff - half, diff + half)


def _rate_interval(a: Summary, b: Summary) -> Interval | None:
    if not a.count or not b.count or a.error_rate is None or b.error_rate is None:
        return None
    pa, pb = a.error_rate, b.error_rate
    diff = pb - pa
    half = Z95 * math.sqrt(pa * (1 - pa) / a.count + pb * (1 - pb) / b.count)
    return Interval(diff, diff - half, diff + half)


def _days(start: date, end: date | None) -> list[date]:
    """The days [start, end] a read covers (end defaults to start); MetricValidationError if they are not
    dates, run backwards, or span more than 366 days."""
    for name, day in (("start", start), ("end", end)):
        if day is not None and (not isinstance(day, date) or isinstance(day, datetime)):
            raise MetricValidationError(f"{name} must be a date (YYYY-MM-DD), got {type(day).__name__}")
    last = end or start
    if last < start:
        raise MetricValidationError(f"end {last} is before start {start}")
    if (last - start).days > 366:
        raise MetricValidationError("at most 366 days per query")
    return [start + timedelta(days=n) for n in range((last - start).days + 1)]


def _readable(item: dict[str, Any]) -> bool:
    """Whether a metric item is as the collector writes it; one edited by hand (a count typed as text, a
    name without its hour) is skipped with a warning instead of failing the whole report."""
    name = item.get("metric_name")
    parts = name.split("#") if isinstance(name, str) else []
    problem = None
    if len(parts) < 3 or not parts[2].isdecimal() or not parts[2].isascii():
        problem = "metric_name is not metric#agent#hour[#variant]"
    else:
        for attr, value in item.items():
            if (attr in _NUMBERS or attr.startswith("b_")) and (
                isinstance(value, bool) or not isinstance(value, int | float | Decimal)
            ):
                problem = f"{attr} is not a Number"
                break
    if problem is not None:
        log.warning("metric.item_malformed", day=item.get("date"), name=str(name)[:120], problem=problem)
    return problem is None
