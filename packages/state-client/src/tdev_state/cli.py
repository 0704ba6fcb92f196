"""`tdev`: the operator's CLI over the state platform.

    tdev sessions list [--status ACTIVE|STALLED|FAILED|COMPLETED|TOLERATED|ABANDONED] [--user U]
                      [--since WHEN] [--until WHEN] [--days N] [--stall-threshold D] [--limit N] [--json|-q]
    tdev sessions show SESSION_ID [--json]    (the agents' timeline and the run's recovery history)
    tdev projects list USER [--json]
    (tables take --time-format relative|iso|epoch; run ids are printed whole, never shortened)
    tdev runs fork RUN --from AGENT [--set key=value ...] [--json]    (prints the new run's id)
    tdev runs diff A B [--json]
    tdev tables create [--json] [--no-streams]
    tdev metrics report …        (tdev-metrics, from tdev-metrics-collector)
    tdev usage report …          (from tdev-metrics-collector)
    tdev backlog list|resume|abandon …    (from tdev-recovery-worker)
    tdev worker [run] …          (tdev-recovery-worker, from tdev-recovery-worker)
    tdev console …               (from tdev-console)

Every command that takes dates takes the same range (`tdev_state.dates`): --since/--from WHEN,
--until/--to WHEN, --days N; WHEN is a UTC day, a UTC time, or a time ago (90s, 30m, 12h, 7d).

Target options (`--env`, `--local`/`--aws`, `--region`, `--profile`) go anywhere on the line. Exit codes:
0 ok, 1 nothing found, 2 bad arguments, 3 the store failed. Errors print one line, no traceback. Bare
`tdev` (or `tdev sessions`) prints its help on stderr, exit 2 (argparse's code for a missing command).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from tdev_state import _sessions_list as listing
from tdev_state import command, dates, runs_cli
from tdev_state.client import StateClient
from tdev_state.command import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE
from tdev_state.models import AGENTS, AgentExecution, RecoveryHistory, Session, epoch_float
from tdev_state.runs.policy import RunFilter

#: Where packages built on this one register `tdev` subcommands: `name = "module:main"`, where
#: `main(argv, *, prog)` returns an exit code. tdev_state never imports them.
COMMANDS_GROUP = "tdev.commands"

#: Options of the target parent parser that take a value (to find the subcommand's name in argv).
_VALUED = ("--env", "--region", "--profile")


def _cell(value: Any) -> Any:
    """A table cell from stored data: plain Text, never parsed as markup (a project called `shop [/] v2`
    or an error about `[/srv/build]` must print as written, not crash the table), with terminal escapes
    shown, not obeyed (command.printable)."""
    from rich.text import Text

    return Text(command.printable(value))


def _client(args: argparse.Namespace) -> StateClient:
    return StateClient(command.state_config(args, need_credentials=True))


#: Columns that hold an id a user copies into the next command: printed whole, on one line, whatever the
#: terminal's width (the other columns wrap instead).
_ID_COLUMNS = frozenset({"session_id", "project_id"})

#: Columns that hold a timestamp (epoch seconds in --json): shown as --time-format says.
_TIME_COLUMNS = frozenset(
    {
        "last_updated",
        "last_accessed",
        "created_at",
        "start",
        "end",
        "at",
        "lease_expires_at",
        "last_resumed_at",
    }
)

#: The moments of a recovery history (beside its steps' `at`).
_HISTORY_TIMES = ("lease_expires_at", "last_resumed_at")


def _table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, time_format: str | None = None
) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title))  # a title holds ids (a user id, say), which rich would read as markup
    for column in columns:
        if column in _ID_COLUMNS:
            widest = max([len(command.printable(row[columns.index(column)])) for row in rows] + [len(column)])
            table.add_column(column, no_wrap=True, min_width=widest, overflow="ignore")
        elif column in _TIME_COLUMNS:
            table.add_column(column, no_wrap=True)
        else:
            table.add_column(column)
    style = time_format or "relative"
    for row in rows:
        cells = (
            command.show_time(v, style) if c in _TIME_COLUMNS else v
            for c, v in zip(columns, row, strict=True)
        )
        table.add_row(*(_cell(v) for v in cells))
    command.console().print(table)


def _json_times(rows: list[dict[str, Any]], time_format: str | None) -> list[dict[str, Any]]:
    """--json keeps epoch seconds (what scripts parse) unless --time-format was given."""
    if time_format is None:
        return rows
    return [
        {k: command.show_time(v, time_format) if k in _TIME_COLUMNS else v for k, v in r.items()}
        for r in rows
    ]


def _session_row(s: Session, state: RunFilter | None) -> dict[str, Any]:
    return {
        "session_id": s.session_id,
        "user_id": s.user_id,
        "project_name": s.project_name,
        "type": s.pipeline_type.value,
        "status": s.status.value,
        # The filter the run falls under (stalled and tolerated failures read off the run by the one rule):
        # what `--status` takes back, so a script can narrow a listing by what it printed.
        "state": state.value if state is not None else s.status.value,
        "progress": s.progress,
        "current_agent": s.current_agent,
        "resumes": s.resume_count,
        "last_updated": epoch_float(s.last_updated),
    }


def sessions_list(args: argparse.Namespace) -> int:
    client = _client(args)
    now = client.clock()
    policy = listing.recovery_policy(args.stall_threshold, client.config.run_policy)
    wanted: RunFilter | None = args.status
    span = dates.date_range(args, now, default_days=7) if dates.range_given(args) else None
    if args.user is not None:
        sessions = listing.runs_of_user(client, args.user, wanted, span, args.limit, now=now, policy=policy)
    elif wanted in listing.OPEN and span is None:
        sessions = listing.open_runs(client, wanted, args.limit, now=now, policy=policy)
    else:
        span = span or dates.date_range(args, now, default_days=7)
        sessions = listing.runs_by_day(client, span, wanted, args.limit, now=now, policy=policy)
    rows = [_session_row(s, listing.state_of(s, now=now, policy=policy)) for s in sessions]
    if args.json:
        print(json.dumps(_json_times(rows, args.time_format)))
    elif args.quiet:
        for row in rows:
            print(command.printable(row["session_id"]))
    elif not rows:
        print("no runs found", file=sys.stderr)
    else:
        _table(
            f"{len(rows)} session(s)",
            list(rows[0]),
            [list(r.values()) for r in rows],
            time_format=args.time_format,
        )
    return EXIT_OK if rows else EXIT_NOT_FOUND


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


def _recovery_json(history: RecoveryHistory, time_format: str | None) -> dict[str, Any]:
    """The run's recovery history for --json: counters, lease and every step, times as the others."""
    data = history.to_dict()
    data.update(_json_times([{k: data[k] for k in _HISTORY_TIMES}], time_format)[0])
    data["events"] = _json_times(data["events"], time_format)
    return data


def _print_recovery(history: RecoveryHistory, time_format: str) -> None:
    """What recovery did to the run, as the console's run page shows it: the counters and lease now, the
    reasons, then every claim, failed attempt, resume, release and abandon in order."""
    from rich.text import Text

    console = command.console()
    shown = command.printable
    if not history.events:
        console.print("recovery: never claimed")
        return
    lease = "none"
    if history.lease_owner is not None:
        until = history.lease_expires_at
        lease = f"{shown(history.lease_owner)} until {command.show_time(until, 'iso')}"
        if until is not None and until <= datetime.now(UTC):
            lease += " (expired: another claim may take the run)"
    resumed = command.show_time(history.last_resumed_at, time_format)
    console.print(
        Text(
            f"recovery: {history.fencing_token} claim(s) (fencing token {history.fencing_token}), "
            f"{history.resume_count} resume(s) accepted, {history.resume_attempts} attempt(s) now, "
            f"lease {lease}, last resumed {resumed if resumed is not None else 'never'}"
        )
    )
    if history.abandon_reason:
        console.print(Text(f"abandoned because: {shown(history.abandon_reason)}"))
    if history.last_resume_error:
        console.print(Text(f"last resume error: {shown(history.last_resume_error)}"))
    columns = ("at", "step", "token", "worker", "attempt", "detail")
    rows = [[e.at, e.kind, e.fencing_token, e.worker_id, e.attempt, e.detail or ""] for e in history.events]
    _table("recovery history", columns, rows, time_format=time_format)


def sessions_show(args: argparse.Namespace) -> int:
    client = _client(args)
    session = client.sessions.get(args.session_id)
    timeline = _timeline(client.executions.list(args.session_id, load_payloads=False))
    # The same read the console's run page makes: one history, one mapping (records.history_from_item).
    history = client.sessions.recovery_history(session.session_id)
    if args.json:
        document = {
            "session": session.to_dict(),
            "agents": _json_times(timeline, args.time_format),
            "recovery": _recovery_json(history, args.time_format),
        }
        print(json.dumps(document))
        return EXIT_OK
    from rich.markup import escape
    from rich.text import Text

    console = command.console()
    shown = command.printable
    console.print(
        f"[bold]{escape(shown(session.session_id))}[/] {escape(shown(session.project_name or '-'))} "
        f"({session.pipeline_type.value}) user={escape(shown(session.user_id or '-'))} "
        f"status=[bold]{session.status.value}[/] progress={session.progress}/{len(AGENTS)} "
        f"version={session.version} resumes={session.resume_count} "
        f"updated={command.show_time(session.last_updated, args.time_format or 'relative')}"
    )
    if session.failed_agents:
        console.print(Text(f"tolerated failures: {shown(', '.join(session.failed_agents))}"))
    if session.parent_id is not None:
        how = "a replay" if session.replay else f"overrides {session.fork_overrides}"
        console.print(Text(f"forked from {shown(session.parent_id)} at {session.fork_point} ({shown(how)})"))
    if session.children:
        forks = ", ".join(f"{c.run_id} (at {c.fork_point})" for c in session.children)
        console.print(Text(f"forks: {shown(forks)}"))
    if session.error_message:
        console.print(Text(f"error: {shown(session.error_message, keep_newlines=True)}"))
    columns = (
        "step", "agent", "status", "start", "duration_s", "retries", "input_bytes", "output_bytes", "error"
    )  # fmt: skip
    _table("", columns, [[row[c] for c in columns] for row in timeline], time_format=args.time_format)
    _print_recovery(history, args.time_format or "relative")
    return EXIT_OK


def projects_list(args: argparse.Namespace) -> int:
    page = _client(args).projects.list_for_user(args.user, limit=args.limit)
    rows = [p.to_dict() for p in page.items]
    if args.json:
        print(json.dumps(_json_times(rows, args.time_format)))
    elif rows:
        columns = ("project_id", "project_name", "download_count", "last_accessed", "size_mb")
        rows_shown = [[row.get(c) for c in columns] for row in rows]
        _table(f"projects of {args.user}", columns, rows_shown, time_format=args.time_format)
    else:
        print("no projects found", file=sys.stderr)
    return EXIT_OK if rows else EXIT_NOT_FOUND


def tables_create(args: argparse.Namespace) -> int:
    names = _client(args).create_tables(streams=not args.no_streams)
    if args.json:
        print(json.dumps({"ready": names}))
    else:
        for name in names:
            print(f"ready {name}")
    return EXIT_OK


def _plugins() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=COMMANDS_GROUP)}


def build_parser(plugins: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The built-in commands; `plugins` are listed in --help and run by their own packages."""
    target = command.target_options()
    parser = command.Parser(
        prog="tdev", description="T-Developer state platform: the operator's CLI.", parents=[target]
    )
    sub = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    def group(name: str, help_text: str) -> Any:
        made = command.add_command(sub, name, help_text, target)
        return made.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    def leaf(parent: Any, name: str, help_text: str, run: Callable[[argparse.Namespace], int]) -> Any:
        made = command.add_command(parent, name, help_text, target)
        made.set_defaults(run=run)
        return made

    sessions = group("sessions", "pipeline runs: list them, show one")
    lister = leaf(
        sessions,
        "list",
        "runs of a user, open runs by status, or runs by the day they started (newest first)",
        sessions_list,
    )
    filters = ", ".join(f"{f.value} ({f.label})" if f.label != f.value else f.value for f in RunFilter)
    lister.add_argument(
        "--status",
        type=listing.run_filter,
        default=None,
        metavar="STATUS",
        help=f"only runs in this state: {filters} — the console's filters, judged by the recovery worker's "
        "rule; ACTIVE, STALLED or FAILED without --user or a date range lists open runs of any age",
    )
    lister.add_argument(
        "--user", help="only this user's runs (newest first; with a date range, started in it)"
    )
    lister.add_argument(
        "--stall-threshold",
        type=dates.duration,
        default=None,
        metavar="DURATION",
        help="silence after which an ACTIVE run is stalled, as the worker's setting; unset or 0: each run's "
        "own declared window [$TDEV_STALL_THRESHOLD]",
    )
    dates.add_range_options(
        lister, default="runs started in the 7 days ending today", until_aliases=("--day",)
    )
    lister.add_argument(
        "--limit", type=command.count("runs", 1, 1000), default=50, help="at most this many runs (1-1000)"
    )
    out = lister.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON array on stdout")
    out.add_argument("-q", "--quiet", action="store_true", help="only the session ids, one per line")
    command.time_format_option(lister)
    show = leaf(sessions, "show", "one run: its agents' timeline and its recovery history", sessions_show)
    show.add_argument("session_id", help="the run's session id")
    show.add_argument("--json", action="store_true", help="one JSON object on stdout")
    command.time_format_option(show)

    projects = group("projects", "a user's generated projects")
    plist = leaf(projects, "list", "a user's projects, most recently accessed first", projects_list)
    plist.add_argument("user", help="the user id")
    plist.add_argument(
        "--limit",
        type=command.count("projects", 1, 1000),
        default=50,
        help="at most this many projects (1-1000)",
    )
    plist.add_argument("--json", action="store_true", help="one JSON array on stdout")
    command.time_format_option(plist)

    runs_cli.add_commands(group("runs", "fork a run from an agent, compare two runs"), target)

    tables = group("tables", "this environment's DynamoDB tables")
    create = leaf(tables, "create", "create the env's tables if missing (LocalStack, tests)", tables_create)
    create.add_argument("--json", action="store_true", help='{"ready": [table names]} on stdout')
    create.add_argument(
        "--no-streams",
        action="store_true",
        help="without the DynamoDB streams the schema declares (LocalStack writes about twice as fast; "
        "the live events then poll at 1/s)",
    )
    for name in plugins:
        sub.add_parser(name, help=f"(from its own package) run `tdev {name} --help`", add_help=False)
    return parser


def _split(argv: Sequence[str]) -> tuple[list[str], str | None, list[str]]:
    """argv as (options before the command, the command, the rest)."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in _VALUED:
            i += 2
            continue
        if not token.startswith("-"):
            return list(argv[:i]), token, list(argv[i + 1 :])
        i += 1
    return list(argv), None, []


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tdev` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    plugins = _plugins()
    before, name, rest = _split(argv)
    if name in plugins:
        try:
            plugin: Callable[..., int] = plugins[name].load()
        except ImportError as exc:  # the command's package is there, an optional dependency is not
            print(f"error: {command.missing_extra(exc)}", file=sys.stderr)
            return EXIT_USAGE
        if name == "worker" and rest[:1] == ["run"]:
            rest = rest[1:]  # `tdev worker run …` reads better in docs; the worker has one command
        return plugin(rest + before, prog=f"tdev {name}")
    if name in ("metrics", "worker"):
        package = "tdev-metrics-collector" if name == "metrics" else "tdev-recovery-worker"
        print(f"error: `tdev {name}` comes with {package}: install it", file=sys.stderr)
        return EXIT_USAGE
    return command.entry(build_parser(sorted(plugins)), argv, lambda args: int(args.run(args)))


if __name__ == "__main__":
    sys.exit(main())
