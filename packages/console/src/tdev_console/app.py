"""The console's ASGI application (Starlette + Jinja2): pages, live fragments, charts and the two actions.

Security, in the order a request meets it:

- every response carries a strict Content-Security-Policy (scripts and styles from this server only, no
  inline code, no framing), `nosniff`, a same-origin referrer policy and `no-store`;
- every stored string reaches the page through Jinja2 with autoescaping on; charts are images;
- reads need nothing but the state client's read grants;
- the actions (Resume now, Abandon) exist only when the console was started with `allow_actions`; a browser
  must first present the per-start token (once, at /login, which sets a signed SameSite=Strict session
  cookie), and each action form carries that session's CSRF token, checked in constant time, as is the
  Origin header when the browser sends one. Actions go through `tdev_recovery`'s `resume_pipeline` and
  `abandon_pipeline`: the worker's own claim, fencing token and attempt counting.
"""

from __future__ import annotations

import hmac
import json
import math
import os
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tdev_console import _charts, _views
from tdev_console._http import LOOPBACK_NAMES, AllowedHosts, HostCheck, RawPath
from tdev_metrics import MetricsReader
from tdev_metrics.usage import UsageReader
from tdev_recovery import abandon_pipeline, resume_pipeline
from tdev_recovery.config import WorkerConfig
from tdev_recovery.exceptions import NotRecoverableError, RecoveryError
from tdev_recovery.resumers import Resumer
from tdev_state import (
    AGENTS,
    EncryptionError,
    MalformedItemError,
    NotFoundError,
    PayloadIntegrityError,
    RecoveryPolicy,
    StateClient,
    StateError,
    StorageError,
    ValidationError,
)
from tdev_state.log import get_logger

log = get_logger(__name__)

HERE = Path(__file__).parent

#: Content-Security-Policy of every response: nothing but this server's own files, no inline code.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)

#: The metric the pipeline records per agent (the demo and the plan's `record_metric` calls).
DEFAULT_METRIC = "agent_execution_time"


@dataclass
class ConsoleSettings:
    """How one console runs. `token` is required when `allow_actions` is on (the CLI makes one per start)."""

    allow_actions: bool = False
    token: str | None = None
    resumer: Resumer | None = None
    resumer_name: str | None = None
    stall_threshold: timedelta = timedelta(minutes=10)
    page_size: int = 50
    refresh_seconds: float = 5.0
    #: Mark the session cookie Secure (behind a TLS-terminating load balancer).
    secure_cookies: bool = False
    #: Signs the session cookie; random per start, so a restart logs every browser out.
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    #: The claim owner the actions write (the run's recovery history shows it).
    worker_id: str = field(default_factory=lambda: f"console-{socket.gethostname()}-{os.getpid()}")
    #: The Host header values served (`name` for any port, or `name:port`); anything else is refused
    #: before any handler runs (DNS rebinding). The CLI narrows this to the bound port and adds
    #: --allowed-host names.
    allowed_hosts: tuple[str, ...] = LOOPBACK_NAMES
    #: Clock (tests move it).
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        if self.allow_actions and not self.token:
            raise ValidationError("allow_actions needs a token: the per-start secret a browser presents")
        if not self.allowed_hosts:
            raise ValidationError("allowed_hosts must be a non-empty tuple of host names (or name:port)")
        if not 1 <= self.page_size <= 100:
            raise ValidationError(f"page_size {self.page_size} must be 1..100 (one BatchGetItem per page)")


class _SecurityHeaders:
    """Adds the CSP and the other protective headers to every HTTP response (pure ASGI: streams too)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"same-origin"),  # no-referrer would make POSTs send Origin: null
                    (b"x-frame-options", b"DENY"),
                    (b"cache-control", b"no-store"),
                    # Server time of this response, for the browser's devtools and the benchmark.
                    (b"server-timing", f"app;dur={(time.perf_counter() - started) * 1000:.1f}".encode()),
                ]
                message["headers"] = headers
            await send(message)

        started_response = False

        async def tracked(message: Message) -> None:
            nonlocal started_response
            started_response = started_response or message["type"] == "http.response.start"
            await send_with_headers(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:  # the last line of defence: one log line, a plain page, no traceback
            error = f"{type(exc).__name__}: {exc}"
            log.error("console.request_crashed", path=scope.get("path"), error=error)  # noqa: TRY400
            if not started_response:
                await Response(_CRASH_PAGE, status_code=500, media_type="text/html")(scope, receive, tracked)


_CRASH_PAGE = (
    "<!doctype html><title>Internal error</title><h1>Internal error</h1>"
    "<p>The console could not answer this request; its log says why. <a href='/runs'>Runs</a></p>"
)


def _templates() -> Jinja2Templates:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        ts=_ts, ago=_ago, dur=_dur, size=_size, num=_num, pct=_pct, qs=urlencode, pretty=_pretty
    )
    env.globals.update(AGENTS=AGENTS, RunFilter=_views.RunFilter)
    return Jinja2Templates(env=env)


def create_app(client: StateClient, settings: ConsoleSettings | None = None) -> Starlette:
    """The console over `client`'s tables. The caller owns the client (and closes it)."""
    config = settings or ConsoleSettings()
    templates = _templates()
    metrics_reader = MetricsReader(client)
    usage_reader = UsageReader(client)
    # The one rule for "stalled" and "may it be taken over", shaped by the worker's setting (its threshold).
    policy = RecoveryPolicy(run_policy=client.config.run_policy, stall_threshold=config.stall_threshold)

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        session = request.session
        context.update(
            request=request,
            env=client.config.env,
            actions=config.allow_actions,
            signed_in=bool(session.get("signed_in")),
            csrf=session.get("csrf", ""),
            refresh=config.refresh_seconds,
            flash=session.pop("flash", None),
            now=config.clock(),
        )
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    # --- runs ---------------------------------------------------------------------------------------

    def runs_context(request: Request) -> dict[str, Any]:
        now = config.clock()
        query = _views.RunsQuery.parse(request.query_params, now.date())
        found = _views.find_runs(client, query, limit=config.page_size, now=now, policy=policy)
        return {"query": query, "found": found}

    def runs(request: Request) -> Response:
        wanted = (request.query_params.get("run") or "").strip()
        if wanted:  # the link encodes any id as one path segment; the run page says if there is none
            return RedirectResponse(request.url_for("run", session_id=wanted), status_code=303)
        return page(request, "runs.html", **runs_context(request))

    def runs_fragment(request: Request) -> Response:
        return page(request, "_runs_table.html", **runs_context(request))

    def run_context(request: Request) -> dict[str, Any]:
        view = _views.run_view(
            client,
            request.path_params["session_id"],
            now=config.clock(),
            policy=policy,
        )
        return {"run": view}

    def run(request: Request) -> Response:
        return page(request, "run.html", **run_context(request))

    def run_fragment(request: Request) -> Response:
        return page(request, "_run_body.html", **run_context(request))

    def run_metrics(request: Request) -> Response:
        """The agents' metrics in the hours the run spanned (a fragment, loaded after the page)."""
        session = client.sessions.get(request.path_params["session_id"], strict=False)
        first, last = session.created_at, session.last_updated
        hours: list[datetime] = []
        moment = first.replace(minute=0, second=0, microsecond=0)
        while moment <= last and len(hours) < 48:
            hours.append(moment)
            moment += timedelta(hours=1)
        rows = []
        for day in sorted({h.date() for h in hours}):
            wanted = {h.hour for h in hours if h.date() == day}
            rows += [s for s in metrics_reader.hourly(DEFAULT_METRIC, start=day) if s.hour in wanted]
        order = {a: i for i, a in enumerate(AGENTS)}
        rows.sort(key=lambda r: (r.date, r.hour or 0, order.get(r.agent, 99), r.variant or ""))
        return page(request, "_run_metrics.html", rows=rows, metric=DEFAULT_METRIC)

    def payload(request: Request) -> Response:
        """One payload, on demand: sealed ones open only for credentials with kms:Decrypt."""
        sid, what = request.path_params["session_id"], request.path_params["what"]
        name, value, error = what, None, None
        try:
            if what == "metadata":
                value = client.sessions.get(sid).metadata
            else:
                agent, _, kind = what.partition(".")
                if agent not in AGENTS or kind not in ("input", "output"):
                    raise ValidationError(
                        f"{what!r:.60} names no payload: use metadata or <agent>.input / <agent>.output"
                    )
                execution = client.executions.get(sid, agent)
                value = execution.input_data if kind == "input" else execution.output_data
        except EncryptionError as exc:
            error = f"sealed: these credentials cannot open it (kms:Decrypt is needed). {exc}"
        except PayloadIntegrityError as exc:
            error = f"unreadable: {exc}"
        return page(request, "payload.html", sid=sid, label=name, value=value, error=error)

    # --- backlog and actions --------------------------------------------------------------------------

    def backlog_context() -> dict[str, Any]:
        now = config.clock()
        rows = _views.backlog(client, now=now, policy=policy, limit=100)
        return {
            "rows": rows,
            "can_resume": config.resumer is not None,
            "resumer_name": config.resumer_name,
            "stall_threshold": config.stall_threshold,
        }

    def backlog_page(request: Request) -> Response:
        return page(request, "backlog.html", **backlog_context())

    def backlog_fragment(request: Request) -> Response:
        return page(request, "_backlog_table.html", **backlog_context())

    def action_name(request: Request) -> str:
        action = str(request.path_params["action"])
        if action not in ("resume", "abandon"):
            raise HTTPException(404, f"no action {action!r:.40}: resume or abandon")
        return action

    def confirm(request: Request) -> Response:
        action = action_name(request)
        session = client.sessions.get(request.path_params["session_id"], strict=False)
        return page(
            request,
            "confirm.html",
            action=action,
            session=session,
            can_resume=config.resumer is not None,
            resumer_name=config.resumer_name,
            status_code=200 if config.allow_actions else 403,
        )

    async def act(request: Request) -> Response:
        action = action_name(request)
        sid = str(request.path_params["session_id"])
        form = await request.form()
        refusal = _refusal(request, config, str(form.get("csrf", "")))
        if refusal is not None:
            return page(request, "error.html", status_code=403, title="Action refused", message=refusal)
        verdict = policy.judge(client.sessions.candidate(sid), now=config.clock())
        if not verdict.claimable:  # the worker's own rule: a run its pipeline still drives is never taken
            return page(
                request,
                "error.html",
                status_code=409,
                title="Not now",
                message=f"{sid} may not be resumed or abandoned now: {verdict.reason}. Nothing was changed",
            )
        worker = WorkerConfig(worker_id=config.worker_id, stall_threshold=config.stall_threshold)
        if action == "resume":
            if config.resumer is None:
                return page(
                    request,
                    "error.html",
                    status_code=409,
                    title="No resumer",
                    message="this console has no resumer: start it with --resumer URL|module:function "
                    "(or $TDEV_RESUMER), the same one the recovery worker uses",
                )
            result = await resume_pipeline(sid, resumer=config.resumer, client=client, config=worker)
        else:
            reason = f"abandoned by an operator: {form.get('reason', '')}".strip()
            result = await abandon_pipeline(sid, reason=reason, client=client, config=worker)
        log.warning("console.action", action=action, **result)
        request.session["flash"] = (
            f"{action}: outcome {result['outcome']} under fencing token {result['fencing_token']}"
        )
        return RedirectResponse(request.url_for("run", session_id=sid), status_code=303)

    # --- metrics and usage ------------------------------------------------------------------------------

    def metrics_page(request: Request) -> Response:
        metric, day = _metric_and_day(request, config.clock().date())
        daily = _charts.daily_by_agent(metrics_reader, metric, day)
        return page(
            request,
            "metrics.html",
            metric=metric,
            day=day,
            daily=daily,
            comparisons=_charts.comparisons(metrics_reader, metric, day, daily),
        )

    def metrics_chart(request: Request) -> Response:
        metric, day = _metric_and_day(request, config.clock().date())
        svg = _charts.metrics_svg(metrics_reader.hourly(metric, start=day), metric, day)
        return Response(svg, media_type="image/svg+xml")

    def usage_range(request: Request) -> tuple[date, date]:
        text = request.query_params.get("days", "7").strip()
        # ASCII digits only: str.isdigit() also accepts '²', which int() refuses.
        if not re.fullmatch(r"[0-9]{1,3}", text) or not 1 <= int(text) <= 366:
            raise ValidationError(f"days {text!r:.20} must be a whole number from 1 to 366, e.g. days=7")
        end = config.clock().date()
        return end - timedelta(days=int(text) - 1), end

    def usage_page(request: Request) -> Response:
        start, end = usage_range(request)
        report = usage_reader.report(start, end)
        return page(request, "usage.html", report=report, days=(end - start).days + 1)

    def usage_chart(request: Request) -> Response:
        start, end = usage_range(request)
        return Response(_charts.usage_png(usage_reader.report(start, end)), media_type="image/png")

    # --- sign-in ---------------------------------------------------------------------------------------

    def login_form(request: Request) -> Response:
        given = request.query_params.get("token")
        if given is not None:  # the link the CLI prints: sign in, then drop the token from the address bar
            if _signed_in(request, config, given):
                return RedirectResponse(request.url_for("backlog"), status_code=303)
            return page(request, "login.html", status_code=403, wrong=True)
        return page(request, "login.html", wrong=False)

    async def login(request: Request) -> Response:
        form = await request.form()
        if _signed_in(request, config, str(form.get("token", ""))):
            return RedirectResponse(request.url_for("backlog"), status_code=303)
        return page(request, "login.html", status_code=403, wrong=True)

    async def logout(request: Request) -> Response:
        request.session.clear()
        return RedirectResponse(request.url_for("runs"), status_code=303)

    def healthz(request: Request) -> Response:
        """Liveness: the process answers (a load balancer's health check)."""
        return JSONResponse({"ok": True})

    def readyz(request: Request) -> Response:
        """Readiness: the tables answer now (one GetItem of a key no run has; a read grant suffices)."""
        try:
            client.sessions.get("readyz-probe", consistent=False)
        except NotFoundError:
            return JSONResponse({"ready": True})
        except StateError as exc:
            return JSONResponse({"ready": False, "error": f"{type(exc).__name__}: {exc}"}, status_code=503)
        return JSONResponse({"ready": True})

    routes = [
        Route("/", lambda r: RedirectResponse(r.url_for("runs"), status_code=303)),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/runs", runs, name="runs"),
        Route("/fragments/runs", runs_fragment, name="runs_fragment"),
        Route("/runs/{session_id:runid}", run, name="run"),
        Route("/fragments/runs/{session_id:runid}", run_fragment, name="run_fragment"),
        Route("/fragments/runs/{session_id:runid}/metrics", run_metrics, name="run_metrics"),
        Route("/runs/{session_id:runid}/payload/{what}", payload, name="payload"),
        Route("/backlog", backlog_page, name="backlog"),
        Route("/fragments/backlog", backlog_fragment, name="backlog_fragment"),
        Route("/backlog/{session_id:runid}/{action}", confirm, methods=["GET"], name="confirm"),
        Route("/backlog/{session_id:runid}/{action}", act, methods=["POST"], name="act"),
        Route("/metrics", metrics_page, name="metrics"),
        Route("/charts/metrics.svg", metrics_chart, name="metrics_chart"),
        Route("/usage", usage_page, name="usage"),
        Route("/charts/usage.png", usage_chart, name="usage_chart"),
        Route("/login", login_form, methods=["GET"], name="login"),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"], name="logout"),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]

    def error_page(status: int, title: str) -> Callable[[Request, Exception], Awaitable[Response]]:
        async def handle(request: Request, exc: Exception) -> Response:
            if isinstance(exc, HTTPException):
                code, message = exc.status_code, str(exc.detail)
                name = {404: "Not found", 405: "Method not allowed"}.get(code, title)
            else:
                code, message, name = status, str(exc), title
            if code >= 500:
                error = f"{type(exc).__name__}: {exc}"
                log.error("console.request_failed", path=request.url.path, error=error)
            return page(request, "error.html", status_code=code, title=name, message=message)

        return handle

    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        HTTPException: error_page(404, "Not found"),
        NotFoundError: error_page(404, "Not found"),
        ValidationError: error_page(400, "Bad request"),
        MalformedItemError: error_page(422, "Unreadable item"),
        NotRecoverableError: error_page(409, "Not recoverable"),
        RecoveryError: error_page(409, "Recovery refused"),
        StorageError: error_page(503, "Storage unavailable"),
        StateError: error_page(500, "State error"),
    }
    return Starlette(
        routes=routes,
        exception_handlers=handlers,
        middleware=[
            Middleware(_SecurityHeaders),
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
        ],
    )


def _signed_in(request: Request, config: ConsoleSettings, given: str) -> bool:
    """Present the per-start token: on a match, the session may act and gets its CSRF token."""
    if not config.allow_actions or config.token is None:
        return False
    if not hmac.compare_digest(given.encode(), config.token.encode()):
        log.warning("console.bad_token", client=request.client.host if request.client else None)
        return False
    request.session.update(signed_in=True, csrf=secrets.token_urlsafe(32))
    return True


def _refusal(request: Request, config: ConsoleSettings, csrf: str) -> str | None:
    """Why a POSTed action may not run (None: it may)."""
    if not config.allow_actions:
        return "actions are off: start the console with --allow-actions to resume or abandon runs"
    if not request.session.get("signed_in"):
        return "sign in with the token the console printed at start before acting"
    expected = str(request.session.get("csrf", ""))
    if not expected or not hmac.compare_digest(csrf.encode(), expected.encode()):
        return "the form's CSRF token does not match this session: reload the page and try again"
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        return f"cross-origin request from {origin!r:.80} refused"
    return None


#: What a metric name may be (tdev_metrics refuses to record any other): the metrics pages' query check.
_METRIC_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _metric_and_day(request: Request, today: date) -> tuple[str, date]:
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


# --- template filters ---------------------------------------------------------------------------------


def _ts(moment: datetime | None) -> str:
    return "—" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "—"
    return _dur((now - moment).total_seconds()) + " ago"


def _dur(seconds: float | timedelta | None) -> str:
    if seconds is None:
        return "—"
    value = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    if value < 172800:
        return f"{value / 3600:.1f} h"
    return f"{value / 86400:.0f} d"


def _size(count: int | None) -> str:
    if not count:
        return "—"
    for unit in ("B", "KB", "MB"):
        if count < 1024 or unit == "MB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return str(count)


def _num(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _pretty(value: Any, indent: int | None = None) -> str:
    """JSON for reading, as text: the template escapes it like any other stored string."""
    return json.dumps(value, indent=indent, ensure_ascii=False, default=str)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f} %"


__all__ = ["ConsoleSettings", "create_app"]
