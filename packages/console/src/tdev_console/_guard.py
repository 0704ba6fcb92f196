"""What stands between a request and the state: protective headers on every response, a plain page instead
of a traceback, and the actions' sign-in (the per-start token, a signed session, its CSRF token, the Origin).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tdev_console._pages import Pages
from tdev_console._settings import ConsoleSettings
from tdev_state.log import get_logger

log = get_logger(__name__)

#: Content-Security-Policy of every response: nothing but this server's own files, no inline code.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)

CRASH_PAGE = (
    "<!doctype html><title>Internal error</title><h1>Internal error</h1>"
    "<p>The console could not answer this request; its log says why. <a href='/runs'>Runs</a></p>"
)


class SecurityHeaders:
    """Adds the CSP and the other protective headers to every HTTP response (pure ASGI: streams too), and
    answers a crash that escaped every handler with a plain 500 page and one log line."""

    def __init__(self, app: ASGIApp, on_crash: Callable[[], None] | None = None) -> None:
        self.app = app
        self.on_crash = on_crash

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        started_response = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started_response
            if message["type"] == "http.response.start":
                started_response = True
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

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:  # the last line of defence: one log line, a plain page, no traceback
            error = f"{type(exc).__name__}: {exc}"
            log.error("console.request_crashed", path=scope.get("path"), error=error)  # noqa: TRY400
            if self.on_crash is not None:
                self.on_crash()
            if not started_response:
                crash = Response(CRASH_PAGE, status_code=500, media_type="text/html")
                await crash(scope, receive, send_with_headers)


class SignIn:
    """The actions' door: /login (the per-start token, once) and /logout, and why a POSTed action may not
    run. Reading needs none of it."""

    def __init__(self, settings: ConsoleSettings, pages: Pages) -> None:
        self.settings = settings
        self.pages = pages

    def routes(self) -> list[Route]:
        return [
            Route("/login", self.login_form, methods=["GET"], name="login"),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"], name="logout"),
        ]

    def login_form(self, request: Request) -> Response:
        given = request.query_params.get("token")
        if given is not None:  # the link the CLI prints: sign in, then drop the token from the address bar
            if self.sign_in(request, given):
                return RedirectResponse(request.url_for("backlog"), status_code=303)
            return self.pages.render(request, "login.html", status_code=403, wrong=True)
        return self.pages.render(request, "login.html", wrong=False)

    async def login(self, request: Request) -> Response:
        form = await request.form()
        if self.sign_in(request, str(form.get("token", ""))):
            return RedirectResponse(request.url_for("backlog"), status_code=303)
        return self.pages.render(request, "login.html", status_code=403, wrong=True)

    async def logout(self, request: Request) -> Response:
        request.session.clear()
        return RedirectResponse(request.url_for("runs"), status_code=303)

    def sign_in(self, request: Request, given: str) -> bool:
        """Present the per-start token: on a match, the session may act and gets its CSRF token."""
        token = self.settings.token
        if not self.settings.allow_actions or token is None:
            return False
        if not hmac.compare_digest(given.encode(), token.encode()):
            log.warning("console.bad_token", client=request.client.host if request.client else None)
            return False
        request.session.update(signed_in=True, csrf=secrets.token_urlsafe(32))
        return True

    def refusal(self, request: Request, csrf: str) -> str | None:
        """Why a POSTed action may not run (None: it may)."""
        if not self.settings.allow_actions:
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
