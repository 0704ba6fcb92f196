"""What the console accepts from the wire before any page runs: the Host it is addressed by, and run ids as
URL path segments.

**Host allow-list (DNS rebinding).** A console on 127.0.0.1 is reachable by any web page the operator
visits: the page's own name can be re-pointed at 127.0.0.1 after it loads, and its scripts then read the
console as if it were that page's site ("DNS rebinding"). The browser still sends the attacker's name in
the `Host` header, so the console serves only the names it is known by — the loopback names, the address
it is bound to, and the names given for a load balancer — and answers anything else with 400 before any
handler, session or static file is touched. Starlette's TrustedHostMiddleware compares the name only after
cutting at the first `:`, which breaks on IPv6 (`[::1]:8080`), so this is our own, small, check.

**Run ids in paths.** A stored id may hold characters that end or redirect a path (`/`, `?`, `#`, `%`,
`..`) when it predates the identifier rule (`tdev_state.validate.identifier`) or was written behind the
library's back. Every link percent-encodes the id as one segment, and routing matches the *raw* path the
browser sent, so `%2F` stays inside the segment instead of becoming a separator. The ids `.` and `..`
cannot be a segment in any encoding (browsers resolve `%2e%2e` too); they are written `!.` and `!..` —
unambiguous, since a literal `!` never appears in an encoded id (it is always `%21`).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote, quote_from_bytes, unquote

from starlette.convertors import Convertor, register_url_convertor
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from tdev_state.log import get_logger

log = get_logger(__name__)

#: The names a loopback console is always addressed by.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")

#: Paths answered whatever the Host: a load balancer's health check and a Prometheus scraper address the
#: target by its IP, and neither answer (`{"ok": true}`; request, action and error counts by route
#: template, never a run's id or data) tells a rebinding page anything about the runs.
_ANY_HOST_PATHS = frozenset({"/healthz", "/metrics"})


def split_host(header: str) -> tuple[str, int | None]:
    """A Host header as (lower-case name, port or None): `[::1]:8080` -> ("[::1]", 8080)."""
    text = header.strip().lower()
    if text.startswith("["):
        end = text.find("]")
        name, rest = (text[: end + 1], text[end + 1 :]) if end > 0 else (text, "")
    elif text.count(":") == 1:
        name, rest = text.split(":")[0], ":" + text.split(":")[1]
    else:
        name, rest = text, ""
    port: int | None = None
    if rest.startswith(":") and rest[1:].isascii() and rest[1:].isdecimal():
        port = int(rest[1:])
    elif rest:
        name = text  # not a port after the name: no allowed entry will match it
    return name.removesuffix("."), port


class AllowedHosts:
    """The Host values a console answers: entries `name` (any port) or `name:port`, names compared without
    case (IPv6 addresses in brackets)."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.entries = tuple(entries)
        self._rules: set[tuple[str, int | None]] = {split_host(e) for e in self.entries if e.strip()}

    @classmethod
    def for_address(cls, host: str, port: int, extra: Iterable[str] = ()) -> AllowedHosts:
        """What a console bound to host:port answers: the loopback names with that port when it is bound
        to loopback, else that address with the port (a wildcard address is nobody's name), plus `extra`
        (the names a load balancer forwards)."""
        bound = f"[{host}]" if ":" in host else host
        if bound in LOOPBACK_NAMES or host in ("0.0.0.0", "::", ""):  # noqa: S104 - a comparison
            names = [f"{n}:{port}" for n in LOOPBACK_NAMES]
        else:
            names = [f"{bound}:{port}"]
        return cls([*names, *extra])

    def allows(self, header: str) -> bool:
        name, port = split_host(header)
        return (name, port) in self._rules or (name, None) in self._rules

    def __str__(self) -> str:
        return ", ".join(self.entries)


class HostCheck:
    """Pure ASGI: refuse a request whose Host is not allowed (400, plain text, nothing else runs)."""

    def __init__(self, app: ASGIApp, allowed: AllowedHosts) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path") in _ANY_HOST_PATHS:
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), "")
        if self.allowed.allows(host):
            await self.app(scope, receive, send)
            return
        # The allowed names stay out of the answer: a rebinding page can read it, and they may be internal.
        log.warning("console.host_refused", host=host[:100], path=str(scope.get("path", ""))[:200])
        message = (
            f"this console does not answer to Host {host[:100]!r}: open it by the address it printed at "
            "start, or start it with --allowed-host NAME (the name a load balancer forwards)"
        )
        await PlainTextResponse(message, status_code=400)(scope, receive, send)


class RawPath:
    """Pure ASGI: route on the path as the browser sent it (percent-encoding kept), so an encoded `/` in a
    run id stays in its segment. Bytes outside ASCII are percent-encoded as well (one form for routing)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path")
        if scope["type"] == "http" and isinstance(raw, bytes) and raw:
            path = quote_from_bytes(raw.split(b"?", 1)[0], safe="/%:@!$&'()*+,;=-._~")
            scope = {**scope, "path": path}
        await self.app(scope, receive, send)


def encode_id(value: str) -> str:
    """One path segment naming `value` exactly (see the module's docstring)."""
    segment = quote(value, safe="", errors="surrogatepass")  # never raises, whatever is stored
    return "!" + segment if segment in (".", "..") else segment


def decode_id(segment: str) -> str:
    """Inverse of encode_id (UnicodeDecodeError for bytes that are not UTF-8)."""
    if segment in ("!.", "!.."):
        segment = segment[1:]
    return unquote(segment, errors="strict")


class RunIdConvertor(Convertor[str]):
    """`{session_id:runid}`: a run id, percent-encoded as one segment of the raw path."""

    regex = "[^/]+"

    def convert(self, value: str) -> str:
        try:
            return decode_id(value)
        except UnicodeDecodeError:
            return value  # bytes that are no UTF-8 name no run: the lookup says "not found"

    def to_string(self, value: str) -> str:
        return encode_id(str(value))


register_url_convertor("runid", RunIdConvertor())
