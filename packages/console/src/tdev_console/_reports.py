"""The report pages: agent metrics over a date range, with a picker of the metrics recorded in it (page and
SVG chart), and the usage report for the last N days (page and PNG chart)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tdev_console import _charts
from tdev_console._pages import Pages
from tdev_console._runs import DEFAULT_METRIC
from tdev_console._settings import ConsoleSettings
from tdev_metrics import MetricsReader
from tdev_metrics.usage_reader import UsageReader
from tdev_state import ValidationError, dates
from tdev_state.dates import DateRange

#: What a metric name may be (tdev_metrics refuses to record any other): the metrics pages' query check.
_METRIC_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")

#: The longest range the metrics page reads: the picker reads every item of each day (one Query per day),
#: so a page costs at most this many Queries of it.
MAX_PAGE_DAYS = 31


class ReportPages:
    """/metrics/view and its chart, /usage and its chart."""

    def __init__(
        self, settings: ConsoleSettings, pages: Pages, metrics: MetricsReader, usage: UsageReader
    ) -> None:
        self.settings = settings
        self.pages = pages
        self.metrics = metrics
        self.usage = usage

    def routes(self) -> list[Route]:
        return [
            Route("/metrics/view", self.metrics_page, name="metrics_view"),
            Route("/charts/metrics.svg", self.metrics_chart, name="metrics_chart"),
            Route("/usage", self.usage_page, name="usage"),
            Route("/charts/usage.png", self.usage_chart, name="usage_chart"),
        ]

    def metrics_page(self, request: Request) -> Response:
        query = MetricsQuery.parse(request.query_params, self.settings.clock())
        span, metric = query.span, query.metric
        period = _charts.period_by_agent(self.metrics, metric, span)
        # Only names the page accepts back: an item written by hand under another name is not offered.
        recorded = self.metrics.metric_names(start=span.first_day, end=span.last_day)
        names = [name for name in recorded if _METRIC_NAME.fullmatch(name)]
        return self.pages.render(
            request,
            "metrics.html",
            query=query,
            metric=metric,
            span=span,
            names=sorted({*names, metric}),
            recorded=metric in names,
            daily=period,
            comparisons=_charts.comparisons(self.metrics, metric, span, period),
            max_days=MAX_PAGE_DAYS,
        )

    def metrics_chart(self, request: Request) -> Response:
        query = MetricsQuery.parse(request.query_params, self.settings.clock())
        span = query.span
        hours = self.metrics.hourly(query.metric, start=span.first_day, end=span.last_day)
        svg = _charts.metrics_svg(hours, query.metric, span)
        return Response(svg, media_type="image/svg+xml")

    def usage_range(self, request: Request) -> tuple[date, date]:
        text = request.query_params.get("days", "7").strip()
        # ASCII digits only: str.isdigit() also accepts '²', which int() refuses.
        if not re.fullmatch(r"[0-9]{1,3}", text) or not 1 <= int(text) <= 366:
            raise ValidationError(f"days {text!r:.20} must be a whole number from 1 to 366, e.g. days=7")
        end = self.settings.clock().date()
        return end - timedelta(days=int(text) - 1), end

    def usage_page(self, request: Request) -> Response:
        start, end = self.usage_range(request)
        report = self.usage.report(start, end)
        return self.pages.render(request, "usage.html", report=report, days=(end - start).days + 1)

    def usage_chart(self, request: Request) -> Response:
        start, end = self.usage_range(request)
        return Response(_charts.usage_png(self.usage.report(start, end)), media_type="image/png")


@dataclass(frozen=True)
class MetricsQuery:
    """The metrics page's query: a metric and a date range, read as every command reads one
    (`tdev_state.dates`: since/until as a UTC day, a UTC time or a time ago like 7d); `day=D`, the page's
    former one-day form, still means since=D&until=D. Default: the pipeline's per-agent metric, today."""

    metric: str
    span: DateRange
    since: str  # as given (or the first day): the form shows it and the chart's link carries it
    until: str

    @classmethod
    def parse(cls, params: Any, now: datetime) -> MetricsQuery:
        """From request query parameters; ValidationError (a 400 page) on a value that is not one."""
        metric = (params.get("metric") or DEFAULT_METRIC).strip()
        if not _METRIC_NAME.fullmatch(metric):
            raise ValidationError(
                f"metric {metric!r:.60} is not a metric name: pick one recorded in the range, 1-64 letters, "
                f"digits, '_', '-' or '.' (e.g. {DEFAULT_METRIC})"
            )
        day = (params.get("day") or "").strip()
        since, until = (params.get("since") or "").strip(), (params.get("until") or "").strip()
        if day:
            try:
                date.fromisoformat(day)
            except ValueError:
                raise ValidationError(f"day {day!r:.40} is not a date: use YYYY-MM-DD") from None
            since, until = since or day, until or day
        span = DateRange.resolve(
            since=dates.parse_when(since) if since else None,
            until=dates.parse_when(until) if until else None,
            days=None,
            now=now,
        )
        if len(span.days()) > MAX_PAGE_DAYS:
            raise ValidationError(f"the metrics page shows at most {MAX_PAGE_DAYS} days: narrow since/until")
        return cls(metric, span, since or span.first_day.isoformat(), until or span.last_day.isoformat())

    def params(self, **changes: str) -> dict[str, str]:
        """This query as query-string parameters (the chart's link, the picker's form)."""
        return {"metric": self.metric, "since": self.since, "until": self.until, **changes}
