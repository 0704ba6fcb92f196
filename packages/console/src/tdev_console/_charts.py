"""Charts for the metrics and usage pages, drawn server-side with matplotlib.

The metrics chart is SVG (sharp at any zoom, and shown through <img>, so no script in it could ever run);
the usage charts are tdev_metrics' own report figure. pyplot keeps global state, so drawing is serialised.
"""

from __future__ import annotations

import io
import threading
from contextlib import AbstractContextManager
from datetime import UTC, datetime, time, timedelta
from typing import Any

from tdev_metrics import MetricsReader
from tdev_metrics.report import Comparison, Summary
from tdev_metrics.usage_report import render_png
from tdev_state import AGENTS
from tdev_state.dates import DateRange

_DRAWING = threading.Lock()


def period_by_agent(reader: MetricsReader, metric: str, span: DateRange) -> list[Summary]:
    """One summary per (agent, variant) over the range's days, in pipeline order."""
    order = {a: i for i, a in enumerate(AGENTS)}
    rows = reader.period(metric, start=span.first_day, end=span.last_day)
    return sorted(rows, key=lambda s: (order.get(s.agent, 99), s.agent, s.variant or ""))


def comparisons(
    reader: MetricsReader, metric: str, span: DateRange, period: list[Summary]
) -> list[Comparison]:
    """B against A for every agent that recorded two or more variants in the range (first two, sorted)."""
    variants: dict[str, set[str]] = {}
    for summary in period:
        if summary.variant is not None:
            variants.setdefault(summary.agent, set()).add(summary.variant)
    out = []
    for agent, names in sorted(variants.items()):
        if len(names) >= 2:
            a, b = sorted(names)[:2]
            out.append(
                reader.compare(
                    metric, agent=agent, variant_a=a, variant_b=b, start=span.first_day, end=span.last_day
                )
            )
    return out


def metrics_svg(summaries: list[Summary], metric: str, span: DateRange) -> bytes:
    """Two panels over the range's hours: p50/p95/p99 per agent (p95 drawn, band p50..p99), error rate.
    The x axis counts hours from the range's first day at 00:00 UTC (the hour of day, for one day)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    origin = datetime.combine(span.first_day, time(), UTC)
    per_agent: dict[str, dict[int, list[Summary]]] = {}
    for s in summaries:
        if s.hour is None:
            continue
        start = datetime.fromisoformat(s.date).replace(hour=s.hour, tzinfo=UTC)
        if span.overlaps(start, timedelta(hours=1)):
            x = int((start - origin).total_seconds() // 3600)
            per_agent.setdefault(s.agent, {}).setdefault(x, []).append(s)
    days = len(span.days())
    with _DRAWING, _plain_text():
        fig = Figure(figsize=(11, 6.5))
        times, errors = fig.subplots(2, 1, sharex=True)
        fig.suptitle(f"{metric}, {span.label()} (UTC), per agent and hour")
        drawn = False
        for agent in sorted(per_agent, key=lambda a: (AGENTS.index(a) if a in AGENTS else 99, a)):
            hours = sorted(per_agent[agent])
            rows = [_merged(per_agent[agent][h]) for h in hours]
            p95 = [r["p95"] for r in rows]
            if any(v is not None for v in p95):
                line = times.plot(hours, [_nan(v) for v in p95], marker="o", label=agent)[0]
                times.fill_between(
                    hours,
                    [_nan(r["p50"]) for r in rows],
                    [_nan(r["p99"]) for r in rows],
                    color=line.get_color(),
                    alpha=0.12,
                )
                drawn = True
            errors.plot(hours, [_nan(r["error_rate"]) for r in rows], marker=".", label=agent)
        times.set_ylabel("seconds (p95; band p50..p99)")
        errors.set_ylabel("error rate")
        if days == 1:
            errors.set_xlabel("hour of day (UTC)")
        else:
            step = max(1, days // 10)
            ticks = list(range(0, days * 24, 24 * step))
            errors.set_xticks(ticks, [(span.first_day + timedelta(hours=t)).isoformat() for t in ticks])
            errors.set_xlabel("day (UTC), 00:00")
        errors.set_xlim(-0.5, days * 24 - 0.5)
        if drawn:
            times.legend(fontsize="small", ncol=3)
        else:
            times.text(0.5, 0.5, "no data", ha="center", va="center", transform=times.transAxes)
        out = io.BytesIO()
        fig.savefig(out, format="svg")
    return out.getvalue()


def usage_png(report: dict[str, Any]) -> bytes:
    """tdev_metrics' usage figure (funnel, runs per day by outcome, durations, tech stacks) as PNG."""
    out = io.BytesIO()
    with _DRAWING, _plain_text():
        render_png(report, out)
    return out.getvalue()


def _plain_text() -> AbstractContextManager[None]:
    """Stored names (metrics, agents, variants, tech stacks) drawn as written: a `$…$` in one is text, not
    mathtext to parse (which fails, or draws something else)."""
    import matplotlib

    return matplotlib.rc_context({"text.parse_math": False})


def _merged(rows: list[Summary]) -> dict[str, float | None]:
    """Variants of one agent-hour together: quantiles of the largest variant (an approximation only when
    an agent ran an A/B test that hour, and then the comparison table gives the exact figures)."""
    count = sum(r.count for r in rows)
    errors = sum(r.errors for r in rows)
    main = max(rows, key=lambda r: r.count)
    return {
        "p50": main.p50,
        "p95": main.p95,
        "p99": main.p99,
        "error_rate": errors / count if count else None,
    }


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value
