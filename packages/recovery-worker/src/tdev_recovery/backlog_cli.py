"""`tdev backlog`: the recovery backlog and its actions from the terminal — what the console's backlog page
does, for operators who script what they can click.

    tdev backlog list [--failed-only|--stalled-only] [--agent NAME] [--older-than 30m] [--json|-q]
    tdev backlog resume ID [--resumer URL|module:function] [--dry-run] [--json]
    tdev backlog resume --all [--failed-only|--stalled-only] [--agent NAME] [--older-than 30m] [--dry-run]
    tdev backlog abandon ID --reason TEXT [--dry-run] [--json]
    tdev backlog abandon --all --reason TEXT [filters] [--dry-run]

Actions go through the plan's `resume_pipeline` / `abandon_pipeline` — the claim path of the worker and the
console (fencing token, lease, the worker's usage counting) — and what counts as stalled or actionable is
`tdev_state.RecoveryPolicy` built from the worker's own settings (`--stall-threshold`, `--resume-cooldown`,
with the worker's environment variables as defaults): never a threshold of this file's.

Exit codes (tdev_state.command): 0 every run went (or the listing found runs), 1 a run was refused (one
line each, with the reason) or nothing matched, 2 bad arguments or settings, 3 the store failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from tdev_recovery import _backlog_text as text
from tdev_recovery.backlog import (
    ABANDON,
    RESUME,
    ActionResult,
    BacklogEntry,
    BacklogKind,
    act,
    act_on_all,
    entry,
    list_backlog,
    preview,
)
from tdev_recovery.config import RetryPolicy, WorkerConfig, recovery_policy
from tdev_recovery.exceptions import RecoveryError
from tdev_recovery.resumers import Resumer, load_resumer
from tdev_state import AGENTS, RecoveryPolicy, StateClient, command
from tdev_state import validate as check
from tdev_state.command import EXIT_NOT_FOUND, EXIT_OK, CommandLineError


def _env_setting(variable: str, flag: str, parse: Callable[[str], Any], default: Any) -> Any:
    """A setting's default from the environment, refused in one line naming both places if malformed."""
    raw = os.environ.get(variable)
    if not raw:
        return default
    try:
        return parse(raw)
    except argparse.ArgumentTypeError as exc:
        raise CommandLineError(f"${variable}: {exc} (also settable with {flag})") from None


def _count(text: str) -> int:
    return command.count("resumes or attempts", 1, 1000)(text)


# --- the parser ------------------------------------------------------------------------------------------


def _rule_options(parser: argparse.ArgumentParser) -> None:
    """The worker's settings that shape the rule, with the worker's variables as defaults: the CLI judges a
    run exactly as the worker and the console configured from the same environment do."""
    rule = parser.add_argument_group("the recovery rule (the worker's settings)")
    rule.add_argument(
        "--stall-threshold",
        type=text.duration,
        default=None,
        metavar="DURATION",
        help="silence after which any ACTIVE run is stalled; 0 or unset: each run's own declared window "
        "(its agent's deadline, or the heartbeat timeout) [$TDEV_STALL_THRESHOLD]",
    )
    rule.add_argument(
        "--resume-cooldown",
        type=text.duration,
        default=None,
        metavar="DURATION",
        help="how long a handed-over run is left to its pipeline; unset: 120 s, or the stall threshold "
        "[$TDEV_RESUME_COOLDOWN]",
    )


def _filter_options(parser: argparse.ArgumentParser, *, for_all: bool) -> None:
    which = "with --all, " if for_all else ""
    group = parser.add_argument_group("which runs")
    kind = group.add_mutually_exclusive_group()
    kind.add_argument("--failed-only", action="store_true", help=f"{which}only FAILED runs")
    kind.add_argument("--stalled-only", action="store_true", help=f"{which}only stalled (ACTIVE) runs")
    group.add_argument(
        "--agent",
        choices=AGENTS,
        default=None,
        metavar="NAME",
        help=f"{which}only runs at this agent ({', '.join(AGENTS)})",
    )
    group.add_argument(
        "--older-than",
        type=text.duration,
        default=timedelta(0),
        metavar="DURATION",
        help=f"{which}only runs silent at least this long (90s, 30m, 2h, 1d)",
    )
    group.add_argument(
        "--limit",
        type=command.count("runs", 1, 1000),
        default=100,
        help="at most this many runs, oldest first (1-1000)",
    )


def _output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout, for scripts")
    parser.add_argument(
        "--time-format",
        choices=text.TIME_FORMATS,
        default="relative",
        help="how moments are printed: relative (12m ago), iso (UTC) or epoch seconds",
    )


def _action(sub: Any, target: argparse.ArgumentParser, name: str, text: str) -> command.Parser:
    made = command.add_command(sub, name, text, target)
    made.add_argument("session_id", nargs="?", default=None, help="the run's full session id")
    made.add_argument("--all", action="store_true", help="every run of the backlog the filters select")
    made.add_argument(
        "--dry-run", action="store_true", help="say what would happen to each run; write nothing"
    )
    made.add_argument(
        "--force",
        action="store_true",
        help="with one ID: act even while the run is live by its window or cool-down (never while a "
        "worker's lease holds it)",
    )
    made.add_argument(
        "--worker-id",
        default=None,
        help="the name this action's claim records (default: cli-HOST-PID)",
    )
    made.add_argument(
        "--usage",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="count the resumes and abandoned runs into the usage report, as the worker does "
        "[$TDEV_USAGE=on|off, default on]",
    )
    _filter_options(made, for_all=True)
    _rule_options(made)
    _output_options(made)
    return made


def build_parser(prog: str = "tdev backlog") -> argparse.ArgumentParser:
    target = command.target_options()
    parser = command.Parser(
        prog=prog,
        description="The recovery backlog (FAILED and stalled runs) and its actions, through the worker's "
        "claim path.",
        parents=[target],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = command.add_command(
        sub, "list", "FAILED and stalled runs, oldest first, with idle time, attempts and lease", target
    )
    _filter_options(listing, for_all=False)
    _rule_options(listing)
    _output_options(listing)
    listing.add_argument("-q", "--quiet", action="store_true", help="only the full session ids, one a line")
    resume = _action(sub, target, "resume", "resume a run now (or --all of them) through the worker's claim")
    resume.add_argument(
        "--resumer",
        default=None,
        help="where the run goes: the pipeline's resume URL or module:function, as the worker's "
        "[$TDEV_RESUMER]",
    )
    abandon = _action(sub, target, "abandon", "give up on a run (or --all of them) for good, with a reason")
    abandon.add_argument("--reason", required=True, help="why: recorded on the run and in its history")
    return parser


# --- settings --------------------------------------------------------------------------------------------


def _worker_config(args: argparse.Namespace) -> WorkerConfig:
    """The worker's settings this command needs, from flags, else the worker's environment variables."""
    stall = args.stall_threshold
    if stall is None:
        stall = _env_setting("TDEV_STALL_THRESHOLD", "--stall-threshold", text.duration, timedelta(0))
    cooldown = args.resume_cooldown
    if cooldown is None:
        cooldown = _env_setting("TDEV_RESUME_COOLDOWN", "--resume-cooldown", text.duration, timedelta(0))
    retry = RetryPolicy(
        maximum_attempts=_env_setting("TDEV_MAX_ATTEMPTS", "the worker's --max-attempts", _count, 5)
    )
    worker_id = getattr(args, "worker_id", None) or f"cli-{socket.gethostname()}-{os.getpid()}"
    try:
        return WorkerConfig(
            worker_id=worker_id,
            stall_threshold=stall or None,  # 0, as for the worker: each run's declared window
            resume_cooldown=cooldown or None,
            retry=retry,
            max_resumes=_env_setting("TDEV_MAX_RESUMES", "the worker's --max-resumes", _count, 3),
        )
    except RecoveryError as exc:
        raise CommandLineError(str(exc)) from None


def _kinds(args: argparse.Namespace) -> tuple[BacklogKind, ...]:
    if args.failed_only:
        return (BacklogKind.FAILED,)
    if args.stalled_only:
        return (BacklogKind.STALLED,)
    return (BacklogKind.FAILED, BacklogKind.STALLED)


def _usage_on(args: argparse.Namespace) -> bool:
    if args.usage is not None:
        return bool(args.usage)
    return (os.environ.get("TDEV_USAGE") or "on").lower() not in ("off", "0", "false", "no")


# --- list ------------------------------------------------------------------------------------------------


def backlog_list(args: argparse.Namespace, client: StateClient) -> int:
    policy = recovery_policy(_worker_config(args), client.config.run_policy)
    now = client.clock()
    rows = list_backlog(
        client,
        policy,
        kinds=_kinds(args),
        agent=args.agent,
        older_than=args.older_than,
        limit=args.limit,
        now=now,
    )
    if args.json:
        print(json.dumps([row.to_json() for row in rows]))
    elif args.quiet:
        for row in rows:
            print(command.printable(row.session_id))
    elif rows:
        print("\n".join(text.table_lines(rows, now, args.time_format)))
        failed = sum(1 for r in rows if r.state == BacklogKind.FAILED.value)
        ready = sum(1 for r in rows if r.verdict.claimable)
        print(
            f"{len(rows)} run(s): {failed} FAILED, {len(rows) - failed} stalled; {ready} ready to act on; "
            f"{text.rule_text(policy)}"
        )
    if not rows:
        print("the backlog is empty (for these filters)", file=sys.stderr)
        return EXIT_NOT_FOUND
    return EXIT_OK


# --- resume / abandon ------------------------------------------------------------------------------------


def _select(
    args: argparse.Namespace, client: StateClient, policy: RecoveryPolicy, now: datetime
) -> list[BacklogEntry]:
    """The runs the action is for: the one named (whatever its state: the claim path decides), or the
    backlog's runs the filters select."""
    if args.all == (args.session_id is not None):
        raise CommandLineError(
            f"name one run (tdev backlog {args.command} ID) or pass --all, not both or neither"
        )
    if args.force and args.session_id is None:
        raise CommandLineError("--force acts on one named run only, never on --all")
    if args.session_id is not None:
        if args.failed_only or args.stalled_only or args.agent or args.older_than:
            raise CommandLineError("--failed-only, --stalled-only, --agent and --older-than go with --all")
        return [entry(client.sessions.candidate(args.session_id), policy, now)]
    return list_backlog(
        client,
        policy,
        kinds=_kinds(args),
        agent=args.agent,
        older_than=args.older_than,
        limit=args.limit,
        now=now,
    )


def _resumer(args: argparse.Namespace) -> Resumer | None:
    """The worker's resumer (flag, else $TDEV_RESUMER), loaded before anything is claimed; none for a dry
    run or an abandon, which never hand a run over."""
    if args.command != RESUME or args.dry_run:
        return None
    spec = args.resumer or os.environ.get("TDEV_RESUMER")
    if not spec:
        raise CommandLineError("no resumer: pass --resumer URL|module:function or set TDEV_RESUMER")
    try:
        return load_resumer(spec)
    except RecoveryError as exc:
        raise CommandLineError(str(exc)) from None


def _execute(
    args: argparse.Namespace,
    client: StateClient,
    *,
    rows: list[BacklogEntry],
    config: WorkerConfig,
    resumer: Resumer | None,
    reason: str,
) -> list[ActionResult]:
    """The claims, with the worker's usage counting (a collector on this client, flushed before exit)."""
    batch = args.session_id is None
    live_lines = batch and not args.json

    def show(result: ActionResult) -> None:
        print(text.action_line(result, batch=True), flush=True)

    collector = None
    if _usage_on(args):
        from tdev_metrics import MetricsCollector  # the claims store counts each resume/abandon at its write

        collector = MetricsCollector(client, writer_id=config.worker_id[:40], start=False)
    try:
        if batch:
            return asyncio.run(
                act_on_all(
                    rows,
                    args.command,
                    client=client,
                    config=config,
                    resumer=resumer,
                    reason=reason,
                    on_result=show if live_lines else None,
                )
            )
        # One named run: its errors keep their own exit codes (not found 1, bad id 2, store 3).
        one = act(
            rows[0],
            args.command,
            client=client,
            config=config,
            resumer=resumer,
            reason=reason,
            force=args.force,
        )
        return [asyncio.run(one)]
    finally:
        if collector is not None:
            collector.close(timeout=5.0)


def backlog_action(args: argparse.Namespace, client: StateClient) -> int:
    action: str = args.command
    reason = ""
    if action == ABANDON:
        if not args.reason.strip():
            raise CommandLineError("--reason must say why the run is given up; it is empty")
        # Checked once, before any claim: a reason the store refuses would refuse every run of a batch.
        reason = check.error_text(f"abandoned by an operator: {args.reason.strip()}")
    config = _worker_config(args)
    policy = recovery_policy(config, client.config.run_policy)
    resumer = _resumer(args)
    now = client.clock()
    rows = _select(args, client, policy, now)
    batch = args.session_id is None
    if not rows:
        print(f"nothing to {action}: no run of the backlog matches", file=sys.stderr)
        if args.json:
            print(json.dumps(text.batch_json(action, args.dry_run, [])))
        return EXIT_NOT_FOUND
    if args.dry_run:
        results = [preview(row, action, force=args.force) for row in rows]
    else:
        results = _execute(args, client, rows=rows, config=config, resumer=resumer, reason=reason)
    if args.json:
        print(json.dumps(text.batch_json(action, args.dry_run, results) if batch else results[0].to_json()))
    else:
        if args.dry_run:
            for result in results:
                print(text.action_line(result))
        elif not batch:  # a batch printed its lines as they happened
            print(text.action_line(results[0]), file=sys.stdout if results[0].ok else sys.stderr)
        if batch:
            print(text.summary(action, args.dry_run, results))
    return EXIT_OK if all(r.ok for r in results) else EXIT_NOT_FOUND


# --- entry point -----------------------------------------------------------------------------------------


def main(
    argv: Sequence[str] | None = None, *, prog: str = "tdev backlog", client: StateClient | None = None
) -> int:
    """Entry point of `tdev backlog`. `client` (tests, embedding) replaces the one the target options
    would build."""
    args = command.parse(build_parser(prog), argv)
    if isinstance(args, int):
        return args

    def body() -> int:
        own = client or StateClient(command.state_config(args))
        try:
            if args.command == "list":
                return backlog_list(args, own)
            return backlog_action(args, own)
        finally:
            if client is None:
                own.close()

    return command.run(body)


if __name__ == "__main__":
    sys.exit(main())
