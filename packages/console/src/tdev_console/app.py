"""The console's ASGI application (Starlette + Jinja2): pages, live fragments, charts, the two actions and
its own Prometheus metrics. `create_app` only assembles it; each route group lives in a module of its own:

- `_runs` — the runs list, one run, its payloads; `_recovery` — the backlog and the actions;
  `_fork` — Rerun from here (fork a run at an agent, start the child) and the diff of two runs;
  `_reports` — agent metrics and usage; `_guard` — headers, crash page, sign-in; `_telemetry` — /metrics;
  `_pages` — templates and filters; `_views` — what each page shows, read through the public client.

Security, in the order a request meets it:

- every response carries a strict Content-Security-Policy (scripts and styles from this server only, no
  inline code, no framing), `nosniff`, a same-origin referrer policy and `no-store`;
- every stored string reaches the page through Jinja2 with autoescaping on; charts are images;
- reads need nothing but the state client's read grants;
- the actions (Resume now, Abandon, Rerun from here) exist only when the console was started with
  `allow_actions`; a browser must first present the per-start token (once, at /login, which sets a signed
  SameSite=Strict session cookie), and each action form carries that session's CSRF token, checked in
  constant time, as is the Origin header when the browser sends one. Actions go through `tdev_recovery`'s
  `resume_pipeline` and `abandon_pipeline`: the worker's own claim, fencing token and attempt counting, and
  its RecoveryPolicy (Rerun from here forks with `tdev_state`, then starts the child with `resume_pipeline`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from tdev_console._fork import ForkPages
from tdev_console._guard import SecurityHeaders, SignIn
from tdev_console._http import AllowedHosts, HostCheck, RawPath
from tdev_console._pages import HERE, Pages
from tdev_console._recovery import RecoveryPages
from tdev_console._reports import ReportPages
from tdev_console._runs import RunPages
from tdev_console._settings import ConsoleSettings
from tdev_console._telemetry import ConsoleMetrics, CountRequests, NoteRoute
from tdev_metrics import MetricsReader
from tdev_metrics.usage_reader import UsageReader
from tdev_recovery import LiveRunError, NotRecoverableError, RecoveryError
from tdev_state import (
    AsyncStateClient,
    MalformedItemError,
    NotFoundError,
    StateClient,
    StateError,
    StorageError,
    ValidationError,
)
from tdev_state.events_http import EventsApp, events_app
from tdev_state.log import get_logger

log = get_logger(__name__)

ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]

#: Error pages by the error's type: status and title (an HTTPException brings its own status).
ERROR_PAGES: dict[type[Exception], tuple[int, str]] = {
    HTTPException: (404, "Not found"),
    NotFoundError: (404, "Not found"),
    ValidationError: (400, "Bad request"),
    MalformedItemError: (422, "Unreadable item"),
    LiveRunError: (409, "The run is live"),
    NotRecoverableError: (409, "Not recoverable"),
    RecoveryError: (409, "Recovery refused"),
    StorageError: (503, "Storage unavailable"),
    StateError: (500, "State error"),
}


def create_app(client: StateClient, settings: ConsoleSettings | None = None) -> Starlette:
    """The console over `client`'s tables. The caller owns the client (and closes it)."""
    config = settings or ConsoleSettings()
    pages = Pages(client.config.env, config)
    policy = config.policy(client.config.run_policy)
    metrics = ConsoleMetrics()
    sign_in = SignIn(config, pages)
    reader = MetricsReader(client)
    live = LiveEvents(client)
    routes: list[BaseRoute] = [
        Route("/", lambda r: RedirectResponse(r.url_for("runs"), status_code=303)),
        Route("/healthz", healthz),
        Route("/readyz", lambda r: readyz(client)),
        Route("/metrics", metrics.exposition, name="metrics"),
        # Before the run pages: a run's live events (SSE, tdev_state.events_http), the same endpoint the
        # orchestrator mounts; the run page follows it with EventSource instead of polling.
        Route("/runs/{session_id:runid}/events", live, name="run_events"),
        *RunPages(client=client, settings=config, pages=pages, policy=policy, metrics=reader).routes(),
        *RecoveryPages(
            client=client, settings=config, pages=pages, policy=policy, sign_in=sign_in, metrics=metrics
        ).routes(),
        *ForkPages(client=client, settings=config, pages=pages, sign_in=sign_in, metrics=metrics).routes(),
        *ReportPages(config, pages, reader, UsageReader(client)).routes(),
        *sign_in.routes(),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    handlers: dict[Any, ErrorHandler] = {
        kind: error_page(pages, metrics, status, title) for kind, (status, title) in ERROR_PAGES.items()
    }
    return Starlette(
        routes=routes,
        exception_handlers=handlers,
        middleware=[
            Middleware(CountRequests, metrics=metrics),
            Middleware(SecurityHeaders, on_crash=lambda: metrics.error("unhandled")),
            Middleware(HostCheck, allowed=AllowedHosts(config.allowed_hosts)),
            Middleware(RawPath),
            Middleware(
                SessionMiddleware,
                secret_key=config.secret,
                session_cookie="tdev_console",
                max_age=12 * 3600,
                same_site="strict",
                https_only=config.secure_cookies,
            ),
            Middleware(NoteRoute),
        ],
    )


def error_page(pages: Pages, metrics: ConsoleMetrics, status: int, title: str) -> ErrorHandler:
    """The handler answering one kind of error with the error page (a 5xx is logged, every one counted)."""

    async def handle(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            code, message = exc.status_code, str(exc.detail)
            name = {404: "Not found", 405: "Method not allowed"}.get(code, title)
        else:
            code, message, name = status, str(exc), title
        metrics.error(type(exc).__name__)
        if code >= 500:
            error = f"{type(exc).__name__}: {exc}"
            log.error("console.request_failed", path=request.url.path, error=error)
        return pages.error(request, code, name, message)

    return handle


class LiveEvents:
    """The SSE endpoint over the console's client: its async twin and event hub are made on the first
    request (on the server's event loop), shared by every watcher of this console."""

    def __init__(self, client: StateClient) -> None:
        self._client = client
        self._app: EventsApp | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            self._app = events_app(AsyncStateClient(self._client))
        # The console routes on the raw path (`RawPath`): hand the app the run's name as the route decoded
        # it, or an id with `:`, `@` or a non-ASCII letter would be looked up percent-encoded (a 404).
        name = scope.get("path_params", {}).get("session_id")
        if isinstance(name, str):
            scope = {**scope, "path": f"{scope.get('root_path', '')}/runs/{name}/events"}
        await self._app(scope, receive, send)


def healthz(request: Request) -> Response:
    """Liveness: the process answers (a load balancer's health check)."""
    return JSONResponse({"ok": True})


def readyz(client: StateClient) -> Response:
    """Readiness: the tables answer now (one GetItem of a key no run has; a read grant suffices)."""
    try:
        client.sessions.get("readyz-probe", consistent=False)
    except NotFoundError:
        return JSONResponse({"ready": True})
    except StateError as exc:
        return JSONResponse({"ready": False, "error": f"{type(exc).__name__}: {exc}"}, status_code=503)
    return JSONResponse({"ready": True})


__all__ = ["ConsoleSettings", "create_app"]
