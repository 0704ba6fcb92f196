"""`tdev runs fork` and `tdev runs diff` (issue #27): fork a stopped run from an agent, compare two runs.

    tdev runs fork RUN --from AGENT [--set key=value ...] [--json]   prints the new run's id
    tdev runs diff A [B] [--json]                                    per agent: status, same output or the
                                                                     differing JSON paths, versions

`--set` values are JSON when they parse as JSON (`--set retries=3`, `--set 'tags=["a"]'`), else text
(`--set framework=vue`). A fork refused because the run is ACTIVE, has not reached the agent, or changed
meanwhile is the caller's to fix: one line, exit 2, like a bad argument.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from tdev_state import command
from tdev_state.client import StateClient
from tdev_state.command import EXIT_OK, CommandLineError
from tdev_state.diff import RunDiff, diff_runs
from tdev_state.exceptions import ConflictError, InvalidTransitionError
from tdev_state.models import AGENTS


def parse_setting(text: str) -> tuple[str, Any]:
    """`key=value` -> (key, value): the value as JSON when it parses, else as text."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r:.60} is not key=value (e.g. --set framework=vue)")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    except RecursionError:  # argparse turns only ArgumentTypeError (and ValueError) into a usage error
        raise argparse.ArgumentTypeError(f"--set {key.strip()!r:.60}: the value nests too deep") from None
    return key.strip(), value


def runs_fork(args: argparse.Namespace) -> int:
    client = StateClient(command.state_config(args, need_credentials=True))
    overrides = dict(args.set) if args.set else None
    try:
        session = client.sessions.fork(args.run_id, from_agent=args.from_agent, overrides=overrides)
    except (InvalidTransitionError, ConflictError) as exc:  # the run's state: the caller decides what next
        raise CommandLineError(str(exc)) from None
    if args.json:
        print(json.dumps(session.to_dict()))
    else:
        print(command.printable(session.session_id))
    return EXIT_OK


def runs_diff(args: argparse.Namespace) -> int:
    client = StateClient(command.state_config(args, need_credentials=True))
    a, b = args.a, args.b
    if b is None:  # one run: a fork, compared with the run it was forked from
        parent = client.sessions.lineage(a).parent_id
        if parent is None:
            raise CommandLineError(f"{a} is not a fork: name the run to compare it with (tdev runs diff A B)")
        a, b = parent, a
    diff = diff_runs(client, a, b)
    if args.json:
        print(json.dumps(diff.to_json()))
        return EXIT_OK
    _print_diff(diff)
    return EXIT_OK


def _version(version: dict[str, str] | None) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(version.items())) if version else "-"


def _print_diff(diff: RunDiff) -> None:
    from rich.table import Table
    from rich.text import Text

    shown = command.printable
    console = command.console()
    table = Table(title=Text(f"{shown(diff.run_a)} vs {shown(diff.run_b)}"))  # ids may read as markup
    for column in ("agent", "status a", "status b", "output", "differs at", "version a", "version b"):
        table.add_column(column)
    for agent in diff.agents:
        paths = "; ".join(f"{p.path}: {p.a} -> {p.b}" for p in agent.paths[:3])
        more = len(agent.paths) - 3 + agent.more_paths
        if more > 0:
            paths += f" (+{more} more)"
        table.add_row(
            *(
                Text(shown(cell))
                for cell in (
                    agent.agent,
                    agent.status_a,
                    agent.status_b,
                    "same" if agent.same_output else "differs",
                    paths,
                    _version(agent.version_a),
                    _version(agent.version_b),
                )
            )
        )
    console.print(table)
    for side, mixed in (("a", diff.mixed_a), ("b", diff.mixed_b)):
        for name, values in mixed.items():
            console.print(Text(f"run {side} mixes {shown(name)} versions: {shown(', '.join(values))}"))


def add_commands(group: Any, target: argparse.ArgumentParser) -> None:
    """The `tdev runs` subcommands, on the group `cli.build_parser` made."""
    fork = command.add_command(
        group, "fork", "a new run from an agent of a stopped run; prints the new run's id", target
    )
    fork.set_defaults(run=runs_fork)
    fork.add_argument("run_id", metavar="RUN", help="the run to fork (its id or a ref)")
    fork.add_argument(
        "--from",
        dest="from_agent",
        required=True,
        metavar="AGENT",
        help=f"the agent the new run starts from: {', '.join(AGENTS)}",
    )
    fork.add_argument(
        "--set",
        action="append",
        type=parse_setting,
        metavar="KEY=VALUE",
        help="merged into that agent's input (repeatable); the value is JSON when it parses, else text",
    )
    fork.add_argument("--json", action="store_true", help="the new run's session as one JSON object")
    diff = command.add_command(group, "diff", "compare two runs agent by agent", target)
    diff.set_defaults(run=runs_diff)
    diff.add_argument("a", help="one run (id or ref), e.g. the parent")
    diff.add_argument(
        "b", nargs="?", default=None, help="the other run, e.g. its fork (omitted: A is a fork, B its parent)"
    )
    diff.add_argument("--json", action="store_true", help="one JSON object on stdout")
