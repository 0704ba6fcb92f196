"""`tdev`: the operator's CLI over the state platform.

    tdev sessions list [--status ACTIVE|FAILED] [--user U] [--limit N] [--json]
    tdev sessions show SESSION_ID [--json]
    tdev projects list USER [--json]
    tdev tables create [--env E]
    tdev metrics report …        (tdev-metrics report, from tdev-metrics-collector)
    tdev worker run …            (tdev-recovery-worker, from tdev-recovery-worker)

Exit codes: 0 ok, 1 nothing found, 2 bad arguments, 3 the store failed. Errors print one line, no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from importlib.metadata import entry_points
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tdev_state.client import StateClient
from tdev_state.config import StateConfig
from tdev_state.exceptions import ConfigurationError, NotFoundError, StateError, ValidationError
from tdev_state.models import AGENTS, AgentExecution, Session, SessionStatus, epoch_float


def _console() -> Console:
    return Console() if sys.stdout.isatty() else Console(width=160)


def _cell(value: Any) -> Text:
    """A table cell from stored data: plain Text, never parsed as markup (a project called `shop [/] v2`
    or an error about `[/srv/build]` must print as written, not crash the table)."""
    return Text("" if value is None else str(value))


def _client(args: argparse.Namespace) -> StateClient:
    return StateClient(StateConfig.from_env(**({"env": args.env} if args.env else {})))


def _session_row(s: Session) -> dict[str, Any]:
    return {
        "session_id": s.session_id,
        "user_id": s.user_id,
        "project_name": s.project_name,
        "type": s.pipeline_type.value,
        "status": s.status.value,
        "progress": s.progress,
        "current_agent": s.current_agent,
        "resumes": s.resume_count,
        "last_updated": epoch_float(s.last_updated),
    }


def sessions_list(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.user:
        sessions = client.sessions.list_for_user(args.user, limit=args.limit).items
        if args.status:
            sessions = [s for s in sessions if s.status.value == args.status]
    elif args.status in ("ACTIVE", "FAILED"):
        # Open runs come from the sparse recovery index (never a Scan): idle for any time at all.
        found = client.sessions.recovery_candidates(
            failed_idle=timedelta(0) if args.status == "FAILED" else None,
            stalled_idle=timedelta(0) if args.status == "ACTIVE" else None,
            limit=args.limit,
        )
        keys = [c.session_id for c in found]
        sessions = [client.sessions.get(k) for k in keys]
    else:
        print(
            "error: give --user, or --status ACTIVE|FAILED (finished runs are listed per user)",
            file=sys.stderr,
        )
        return 2
    rows = [_session_row(s) for s in sessions]
    if args.json:
        print(json.dumps(rows))
    else:
        table = Table(title=f"{len(rows)} session(s)")
        for column in rows[0] if rows else ("session_id",):
            table.add_column(column)
        for row in rows:
            table.add_row(*(_cell(v) for v in row.values()))
        _console().print(table)
    return 0 if rows else 1


def _timeline(run: list[AgentExecution]) -> list[dict[str, Any]]:
    by_agent = {e.agent_name: e for e in run}
    rows = []
    for agent in AGENTS:
        e = by_agent.get(agent)
        rows.append(
            {
                "step": AGENTS.index(agent) + 1,
                "agent": agent,
                "status": e.status.value if e else "PENDING",
                "start": epoch_float(e.start_time) if e and e.start_time else None,
                "end": epoch_float(e.end_time) if e and e.end_time else None,
                "duration_s": round(e.duration_seconds, 3) if e and e.duration_seconds is not None else None,
                "retries": e.retry_count if e else 0,
                "input_bytes": e.input_bytes if e else 0,
                "output_bytes": e.output_bytes if e else 0,
                "error": e.error_message if e else None,
            }
        )
    return rows


def sessions_show(args: argparse.Namespace) -> int:
    client = _client(args)
    session = client.sessions.get(args.session_id)
    timeline = _timeline(client.executions.list(args.session_id, load_payloads=False))
    if args.json:
        print(json.dumps({"session": session.to_dict(), "agents": timeline}))
        return 0
    console = _console()
    console.print(
        f"[bold]{escape(session.session_id)}[/] {escape(session.project_name or '-')} "
        f"({session.pipeline_type.value}) user={escape(session.user_id or '-')} "
        f"status=[bold]{session.status.value}[/] progress={session.progress}/9 "
        f"version={session.version} resumes={session.resume_count}"
    )
    if session.failed_agents:
        console.print(Text(f"tolerated failures: {', '.join(session.failed_agents)}"))
    if session.error_message:
        console.print(Text(f"error: {session.error_message}"))
    table = Table()
    columns = (
        "step",
        "agent",
        "status",
        "duration_s",
        "retries",
        "input_bytes",
        "output_bytes",
        "error",
    )
    for column in columns:
        table.add_column(column)
    for row in timeline:
        table.add_row(*(_cell(row[c]) for c in columns))
    console.print(table)
    return 0


def projects_list(args: argparse.Namespace) -> int:
    page = _client(args).projects.list_for_user(args.user, limit=args.limit)
    rows = [p.to_dict() for p in page.items]
    if args.json:
        print(json.dumps(rows))
    else:
        table = Table(title=f"projects of {escape(args.user)}")
        for column in ("project_id", "project_name", "download_count", "last_accessed", "size_mb"):
            table.add_column(column)
        for row in rows:
            table.add_row(*(_cell(row.get(c)) for c in (
                "project_id", "project_name", "download_count", "last_accessed", "size_mb")))  # fmt: skip
        _console().print(table)
    return 0 if rows else 1


def tables_create(args: argparse.Namespace) -> int:
    for name in _client(args).create_tables():
        print(f"ready {name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tdev", description="T-Developer state platform operator CLI")
    parser.add_argument("--env", default=None, help="table environment (default: $TDEV_ENV or local)")
    sub = parser.add_subparsers(dest="group", required=True)

    sessions = sub.add_parser("sessions").add_subparsers(dest="command", required=True)
    listing = sessions.add_parser("list", help="sessions of a user, or open runs by status")
    listing.add_argument("--status", choices=[s.value for s in SessionStatus])
    listing.add_argument("--user")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=sessions_list)
    show = sessions.add_parser("show", help="one run: its agents' timeline")
    show.add_argument("session_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(run=sessions_show)

    projects = sub.add_parser("projects").add_subparsers(dest="command", required=True)
    plist = projects.add_parser("list", help="a user's projects, most recently accessed first")
    plist.add_argument("user")
    plist.add_argument("--limit", type=int, default=50)
    plist.add_argument("--json", action="store_true")
    plist.set_defaults(run=projects_list)

    tables = sub.add_parser("tables").add_subparsers(dest="command", required=True)
    tables.add_parser("create", help="create this env's tables (LocalStack, tests)").set_defaults(
        run=tables_create
    )
    sub.add_parser("metrics", help="metrics report (tdev-metrics)", add_help=False)
    sub.add_parser("worker", help="run a recovery worker replica (tdev-recovery-worker)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911 - one exit code per outcome
    """Entry point of the `tdev` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    env_args = argv[:2] if argv[:1] == ["--env"] else []
    rest = argv[len(env_args) :]
    plugins = {ep.name: ep for ep in entry_points(group="tdev.commands")}
    if rest[:1] and rest[0] in plugins:
        # Subcommands of packages built on this one (tdev-metrics, tdev-recovery-worker), found through
        # their entry points: tdev_state never imports them.
        command = rest[1:]
        if rest[0] == "worker" and command[:1] == ["run"]:
            command = command[1:]
        run: Callable[[list[str]], int] = plugins[rest[0]].load()
        return run(command + (["--env", env_args[1]] if env_args else []))
    if rest[:1] in (["metrics"], ["worker"]):
        package = "tdev-metrics-collector" if rest[0] == "metrics" else "tdev-recovery-worker"
        print(f"error: tdev {rest[0]} needs {package} installed", file=sys.stderr)
        return 2
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage error
        return 2 if exc.code else 0
    try:
        code: int = args.run(args)
    except NotFoundError as exc:
        print(f"not found: {exc}", file=sys.stderr)
        return 1
    except (ValidationError, ConfigurationError) as exc:  # bad arguments or environment: the caller's to fix
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    return code


if __name__ == "__main__":
    sys.exit(main())
