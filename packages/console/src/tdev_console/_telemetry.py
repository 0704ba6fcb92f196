"""The console's own Prometheus metrics, served at /metrics: requests (by route, method and status, with
their durations), actions (by action and outcome) and errors (by kind), plus the process, platform and GC
collectors the worker registers too.

Requests are counted by the route's path template (`/runs/{session_id:runid}`), never by the path itself, so
the series stay a handful whatever ids are asked for; a request no route matched is `unmatched`. The page
of agent metrics moved to /metrics/view.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tdev_recovery.ops import register_process_collectors

#: Where the innermost middleware leaves the matched route for the outermost one (scopes are copied on
#: the way in, the holder is shared).
_ROUTE_KEY = "tdev_console.route"


class ConsoleMetrics:
    """One console's metrics, in a registry of its own (tests and several apps never share one)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        register_process_collectors(r)
        self.requests = Counter(
            "tdev_console_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "tdev_console_request_duration_seconds",
            "Time to answer a request, by route template",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.actions = Counter(
            "tdev_console_actions",
            "Resume now / Abandon / Rerun from here (fork) requests, by action and outcome (the worker's: "
            "resumed, abandoned, released, stale, lost, error; refused: sign-in, CSRF, origin or no "
            "resumer; live and not_recoverable: the recovery rule said no; failed: another error)",
            ["action", "outcome"],
            registry=r,
        )
        self.errors = Counter(
            "tdev_console_errors",
            "Requests answered with an error page, by the error's kind (unhandled: a crash, answered 500)",
            ["kind"],
            registry=r,
        )

    def action(self, action: str, outcome: str) -> None:
        self.actions.labels(action=action, outcome=outcome).inc()

    def error(self, kind: str) -> None:
        self.errors.labels(kind=kind).inc()

    def exposition(self, request: Request) -> Response:
        """GET /metrics: the text format, or OpenMetrics when the scraper asks; `name[]` picks series."""
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        names = request.query_params.getlist("name[]")
        registry: Any = self.registry.restricted_registry(names) if names else self.registry
        return Response(encoder(registry), headers={"Content-Type": content_type})


class CountRequests:
    """Pure ASGI, outermost: counts every HTTP request once its answer has started, whatever answered it
    (a route, the Host check, the crash page)."""

    def __init__(self, app: ASGIApp, metrics: ConsoleMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        holder: dict[str, str] = {}
        status = [500]  # what a request that never answers counts as
        started = time.perf_counter()

        async def record_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app({**scope, _ROUTE_KEY: holder}, receive, record_status)
        finally:
            route = holder.get("route", "unmatched")
            self.metrics.requests.labels(route=route, method=scope["method"], status=str(status[0])).inc()
            self.metrics.latency.labels(route=route).observe(time.perf_counter() - started)


class NoteRoute:
    """Pure ASGI, innermost: after the router ran, leaves the matched route's template for CountRequests."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            holder = scope.get(_ROUTE_KEY)
            route = scope.get("route")
            if isinstance(holder, dict) and route is not None:
                holder["route"] = str(getattr(route, "path", "unmatched"))
