"""The report pages: agent metrics for a day (page and SVG chart) and the usage report for the last N days
(page and PNG chart)."""

from __future__ import annotations

import re
from datetime import date, timedelta

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tdev_console import _charts
from tdev_console._pages import Pages
from tdev_console._runs import DEFAULT_METRIC
from tdev_console._settings import ConsoleSettings
from tdev_metrics import MetricsReader
from tdev_metrics.usage_reader import UsageReader
from tdev_state import ValidationError

#: What a metric name may be (tdev_metrics refuses to record any other): the metrics pages' query check.
_METRIC_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


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
        metric, day = metric_and_day(request, self.settings.clock().date())
        daily = _charts.daily_by_agent(self.metrics, metric, day)
        return self.pages.render(
            request,
            "metrics.html",
            metric=metric,
            day=day,
            daily=daily,
            comparisons=_charts.comparisons(self.metrics, metric, day, daily),
        )

    def metrics_chart(self, request: Request) -> Response:
        metric, day = metric_and_day(request, self.settings.clock().date())
        svg = _charts.metrics_svg(self.metrics.hourly(metric, start=day), metric, day)
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


def metric_and_day(request: Request, today: date) -> tuple[str, date]:
    """The metric and day asked for (the pipeline's per-agent metric and today by default)."""
    metric = (request.query_params.get("metric") or DEFAULT_METRIC).strip()
    if not _METRIC_NAME.fullmatch(metric):
        raise ValidationError(
            f"metric {metric!r:.60} is not a metric name: type one as recorded, 1-64 letters, digits, "
            f"'_', '-' or '.' (e.g. {DEFAULT_METRIC})"
        )
    text = (request.query_params.get("day") or "").strip()
    try:
        day = date.fromisoformat(text) if text else today
    except ValueError:
        raise ValidationError(f"day {text!r:.40} is not a date: use YYYY-MM-DD") from None
    return metric, day
