"""`tdev console` (also `tdev-console`): serve the web console on this machine.

    tdev console --local                      # read-only, http://127.0.0.1:8080
    tdev console --env dev --allow-actions --resumer http://pipeline:8000/resume

Binds 127.0.0.1 unless told otherwise. With --allow-actions it prints a sign-in link carrying a token made
for this start only; Resume now and Abandon need that sign-in (and carry CSRF protection).
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta

from tdev_console._http import AllowedHosts
from tdev_console.app import ConsoleSettings, create_app
from tdev_console.server import bind, server, url_of
from tdev_metrics import MetricsCollector
from tdev_recovery.resumers import load_resumer
from tdev_state import StateClient, StateError, StorageUnavailableError, ValidationError, command, dates
from tdev_state.log import configure_output, get_logger

log = get_logger(__name__)

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def _bounded(kind: type[int] | type[float], low: float, high: float, what: str) -> Callable[[str], float]:
    """An argparse type: a number of `kind` in [low, high], or one line saying what was expected."""

    def parse(text: str) -> float:
        try:
            # A float setting is seconds, or a duration as every command reads one (tdev_state.dates).
            value = kind(text) if kind is int else dates.parse_duration(text).total_seconds()
        except (ValueError, ValidationError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


_seconds = _bounded(float, 0.001, 86400 * 30, "a number of seconds from 0.001 to 2592000 (30 days)")
_threshold = _bounded(
    float, 0, 86400 * 30, "seconds or a duration (90s, 30m, 2h) from 0 (each run's own window) to 30 days"
)
_port = _bounded(int, 0, 65535, "a TCP port (0..65535; 0 picks a free one)")
_page_size = _bounded(int, 1, 100, "a page size from 1 to 100")


def build_parser(prog: str = "tdev-console") -> argparse.ArgumentParser:
    parser = command.Parser(
        prog=prog,
        description=(__doc__ or "").split("\n\n")[0],
        parents=[command.target_options()],
        epilog=command.EXIT_CODES_EPILOG,
    )
    serve = parser.add_argument_group("console")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (anything else is exposed)")
    serve.add_argument("--port", type=_port, default=8080, help="TCP port (0: a free one, printed)")
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=[h for h in os.environ.get("TDEV_CONSOLE_ALLOWED_HOSTS", "").split(",") if h.strip()],
        metavar="NAME[:PORT]",
        help="also answer requests addressed to this name (a load balancer's; repeat for more); any "
        "other Host than the bound address is refused (DNS rebinding) "
        "[$TDEV_CONSOLE_ALLOWED_HOSTS, comma-separated]",
    )
    serve.add_argument(
        "--allow-actions",
        action="store_true",
        help="enable Resume now and Abandon (needs the worker's claim grants); prints a per-start token",
    )
    serve.add_argument(
        "--resumer",
        default=os.environ.get("TDEV_RESUMER") or None,
        help="where Resume now sends a run: the pipeline's resume URL or module:function, as the worker's "
        "[$TDEV_RESUMER]",
    )
    serve.add_argument(
        "--usage",
        action=argparse.BooleanOptionalAction,
        default=(os.environ.get("TDEV_USAGE") or "on").lower() not in ("off", "0", "false", "no"),
        help="count Resume now and Abandon into the usage report, as the recovery worker counts its own "
        "(a metrics collector in this process, flushed at exit) [$TDEV_USAGE=on|off]",
    )
    serve.add_argument(
        "--stall-threshold",
        type=_threshold,
        default=os.environ.get("TDEV_STALL_THRESHOLD", "0"),
        help="seconds of silence before any open run counts as stalled; 0: each run's own window, as the "
        "recovery worker and `tdev backlog` judge it (the same setting) [$TDEV_STALL_THRESHOLD]",
    )
    serve.add_argument("--page-size", type=_page_size, default=50, help="runs per page")
    serve.add_argument("--refresh", type=_seconds, default=5.0, help="seconds between live refreshes")
    serve.add_argument(
        "--secure-cookies",
        action="store_true",
        help="mark the sign-in cookie Secure (when served over HTTPS, e.g. behind a load balancer)",
    )
    serve.add_argument(
        "--log-level", default="warning", choices=("debug", "info", "warning", "error"), help="log level"
    )
    return parser


def serve(args: argparse.Namespace) -> int:
    """Build the client and the app, bind, print where to go, serve until SIGINT/SIGTERM."""
    token = secrets.token_urlsafe(24) if args.allow_actions else None
    resumer = load_resumer(args.resumer) if args.resumer else None
    client = StateClient(command.state_config(args))
    sock = bind(args.host, args.port)
    allowed = AllowedHosts.for_address(args.host, sock.getsockname()[1], args.allowed_host)
    settings = ConsoleSettings(
        allow_actions=args.allow_actions,
        token=token,
        resumer=resumer,
        resumer_name=args.resumer,
        stall_threshold=timedelta(seconds=args.stall_threshold) if args.stall_threshold else None,
        page_size=args.page_size,
        refresh_seconds=args.refresh,
        secure_cookies=args.secure_cookies,
        allowed_hosts=allowed.entries,
    )
    app = create_app(client, settings)
    collector = usage_collector(client, args)
    base = url_of(sock)
    out = sys.stdout
    print(f"tdev console for env {client.config.env!r} on {base}/runs", file=out)
    if args.host not in _LOOPBACK:
        print(
            f"warning: bound to {args.host}: anyone who reaches this port can read the runs; "
            "put an authenticating load balancer in front (docs/console.md)",
            file=out,
        )
    if args.host not in _LOOPBACK or args.allowed_host:
        print(f"answers Host: {allowed}", file=out)
    unreachable = _store_unreachable(client)
    if unreachable:
        print(f"warning: {unreachable}; pages answer 503 until it does", file=out)
    if token:
        print(f"actions on: sign in at {base}/login?token={token}", file=out)
        if not resumer:
            print("no --resumer: Abandon works, Resume now is off", file=out)
    else:
        print("read-only (start with --allow-actions to resume or abandon runs)", file=out)
    out.flush()
    try:
        server(app).run(sockets=[sock])
    finally:
        sock.close()
        if collector is not None:
            collector.close()  # flushes the counted actions
        client.close()
    return command.EXIT_OK


def usage_collector(client: StateClient, args: argparse.Namespace) -> MetricsCollector | None:
    """With actions on and --usage: a collector attached to the console's client, so Resume now and Abandon
    are counted by the claims store at the write, exactly once, as the worker's are (its CLI does the same).
    A read-only console writes nothing, so it has none."""
    if not (args.allow_actions and args.usage):
        return None
    return MetricsCollector(client, writer_id=f"console-{socket.gethostname()}"[:40])


def _store_unreachable(client: StateClient) -> str | None:
    """Why the store does not answer now (one quick DescribeTable, one attempt), or None. Only an endpoint
    that does not answer counts: a read-only console may lack DescribeTable, and a denial is an answer."""
    try:
        client.layer.probe(client.layer.tables.sessions)
    except StorageUnavailableError as exc:
        return str(exc)
    except StateError:
        return None
    return None


def main(argv: Sequence[str] | None = None, *, prog: str = "tdev-console") -> int:
    """Entry point of the console script and of `tdev console`."""
    args = command.parse(build_parser(prog), argv)
    if isinstance(args, int):
        return args
    configure_output(args.log_level)
    return command.run(lambda: serve(args))


if __name__ == "__main__":
    sys.exit(main())
