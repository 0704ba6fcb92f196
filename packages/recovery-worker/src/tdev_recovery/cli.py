"""`tdev-recovery-worker` (also `tdev worker`): run one replica. Reads flags and environment once,
installs signal handlers.

    tdev-recovery-worker --resumer http://pipeline:8000/resume --env dev --http-port 8080

Every setting has an environment variable (named in --help); flags win. A bad value, from either, is one
line and exit 2 — before anything starts. Exit codes are `tdev_state.command`'s, shared by the three CLIs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TextIO

from tdev_metrics import MetricsCollector
from tdev_metrics.usage_tables import UsageFolder
from tdev_recovery.config import RetryPolicy, WorkerConfig
from tdev_recovery.exceptions import RecoveryError
from tdev_recovery.ops import OpsServer
from tdev_recovery.resumers import load_resumer
from tdev_recovery.worker import RecoveryWorker
from tdev_state import StateClient, StorageUnavailableError, ValidationError, command, dates
from tdev_state.command import CommandLineError
from tdev_state.log import configure_output, get_logger

log = get_logger(__name__)

#: The metric the infra's backlog alarm and dashboard read (namespace from --cloudwatch-namespace).
BACKLOG_METRIC = "RecoveryBacklog"

_LEVELS = ("debug", "info", "warning", "error")


def _setting(
    kind: type[float] | type[int], flag: str, variable: str, *, minimum: float, maximum: float
) -> Callable[[str], float]:
    """An argparse type for a numeric setting that names both places it may come from when it is wrong
    (argparse applies it to the environment's string default too, after --help had its chance)."""
    noun = "whole number" if kind is int else "number of seconds or a duration (90s, 30m, 2h, 1d)"

    def parse(text: str) -> float:
        try:
            # Seconds, or a duration as every command reads one (tdev_state.dates): the same
            # $TDEV_STALL_THRESHOLD means the same here, in `tdev backlog`, `sessions list`, the console.
            value = kind(text) if kind is int else dates.parse_duration(text).total_seconds()
        except (ValueError, ValidationError):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a {noun} (set by {flag} or ${variable})"
            ) from None
        if not minimum <= value <= maximum or not math.isfinite(value):
            # The upper bound keeps timedelta and the scheduler's ints from overflowing into a traceback.
            raise argparse.ArgumentTypeError(
                f"{text!r} must be from {minimum} to {maximum:g} (set by {flag} or ${variable})"
            )
        return value

    return parse


def log_level(text: str) -> str:
    """A --log-level value (argparse applies it to the TDEV_LOG_LEVEL default too)."""
    level = text.strip().lower()
    if level not in _LEVELS:
        raise argparse.ArgumentTypeError(
            f"log level {text!r} is not one of: {', '.join(_LEVELS)} (set by --log-level or $TDEV_LOG_LEVEL)"
        )
    return level


@dataclass(frozen=True)
class _Number:
    """One numeric worker setting: its flag, its variable, its default (as text, like the variable's) and
    its range. The defaults are WorkerConfig's own (tested), written here as the user types them."""

    flag: str
    variable: str
    default: str
    help: str
    kind: type[float] | type[int] = float
    minimum: float = 0.001
    maximum: float = 30 * 86400  # seconds: 30 days; counts give their own


_NUMBERS = (
    _Number("--poll-interval", "TDEV_POLL_INTERVAL", "5", "seconds between sweeps"),
    _Number("--retry-delay", "TDEV_RETRY_DELAY", "3600", "seconds a FAILED run waits before it is resumed"),
    _Number(
        "--stall-threshold",
        "TDEV_STALL_THRESHOLD",
        "0",
        "seconds of silence before any open run counts as stalled; 0: each run's own window (its agent's "
        "deadline from the run policy, or the heartbeat timeout once it heartbeats)",
        minimum=0,
    ),
    _Number(
        "--resume-cooldown",
        "TDEV_RESUME_COOLDOWN",
        "0",
        "seconds a handed-over run is left to its resumed pipeline; 0: 120 (with --stall-threshold set, "
        "that threshold is the cool-down and this is ignored)",
        minimum=0,
    ),
    _Number("--lease", "TDEV_LEASE", "30", "claim lease, seconds", minimum=1),
    _Number(
        "--max-attempts",
        "TDEV_MAX_ATTEMPTS",
        "5",
        "resume attempts per claim",
        kind=int,
        minimum=1,
        maximum=1000,
    ),
    _Number(
        "--max-resumes",
        "TDEV_MAX_RESUMES",
        "3",
        "resumes of a run before it is ABANDONED",
        kind=int,
        minimum=1,
        maximum=1000,
    ),
    _Number("--initial-backoff", "TDEV_INITIAL_BACKOFF", "1", "seconds before the first retry of a resume"),
    _Number(
        "--busy-timeout",
        "TDEV_BUSY_TIMEOUT",
        "600",
        "seconds one attempt waits on a busy pipeline (429/503/timeout) before the wait counts as a failure",
    ),
    _Number(
        "--concurrency",
        "TDEV_CONCURRENCY",
        "8",
        "resumes in flight per replica",
        kind=int,
        minimum=1,
        maximum=1000,
    ),
    _Number("--grace-period", "TDEV_GRACE_PERIOD", "20", "seconds in-flight resumes get after SIGTERM"),
    _Number(
        "--http-port",
        "TDEV_HTTP_PORT",
        "8080",
        "port of /healthz, /readyz, /metrics; 0 disables",
        kind=int,
        minimum=0,
        maximum=65535,
    ),
)


def _switch(variable: str) -> bool:
    """An on/off setting from the environment: on unless off, 0, false or no."""
    return (os.environ.get(variable) or "on").lower() not in ("off", "0", "false", "no")


def build_parser(prog: str = "tdev-recovery-worker") -> argparse.ArgumentParser:
    """Every setting as a flag whose default is its environment variable, read here, once."""
    parser = command.Parser(
        prog=prog, description=__doc__.split("\n\n")[0], parents=[command.target_options()]
    )
    knobs = parser.add_argument_group("worker")
    knobs.add_argument(
        "--resumer",
        default=os.environ.get("TDEV_RESUMER") or None,
        help="the pipeline's resume endpoint URL, or module:function [$TDEV_RESUMER]",
    )
    for n in _NUMBERS:
        knobs.add_argument(
            n.flag,
            default=os.environ.get(n.variable) or n.default,
            type=_setting(n.kind, n.flag, n.variable, minimum=n.minimum, maximum=n.maximum),
            help=f"{n.help} [${n.variable}]",
        )
    knobs.add_argument(
        "--confirm",
        default=os.environ.get("TDEV_CONFIRM") or None,
        type=_setting(float, "--confirm", "TDEV_CONFIRM", minimum=0, maximum=30 * 86400),
        help="seconds a suspect run must stay unchanged on this replica's own clock before it is claimed "
        "(default: 45, or half the stall threshold when that is shorter; 0 trusts the pipeline's clock) "
        "[$TDEV_CONFIRM]",
    )
    knobs.add_argument(
        "--port-file",
        type=Path,
        default=os.environ.get("TDEV_PORT_FILE") or None,
        help="write the bound HTTP port here, for the container HEALTHCHECK [$TDEV_PORT_FILE]",
    )
    knobs.add_argument(
        "--worker-id",
        default=os.environ.get("TDEV_WORKER_ID") or None,
        help="this replica's name in claims and logs (default: HOST-PID-RANDOM, e.g. ip-10-0-1-7-1-3f9a2c) "
        "[$TDEV_WORKER_ID]",
    )
    knobs.add_argument(
        "--cloudwatch-namespace",
        default=os.environ.get("TDEV_CLOUDWATCH_NAMESPACE") or None,
        help="publish RecoveryBacklog here each sweep (EMF on stdout) [$TDEV_CLOUDWATCH_NAMESPACE]",
    )
    knobs.add_argument(
        "--usage",
        action=argparse.BooleanOptionalAction,
        default=_switch("TDEV_USAGE"),
        help="count the resumes and abandoned runs into the usage report (a metrics collector in this "
        "process), and fold past days' run counts from the tables into one item each "
        "[$TDEV_USAGE=on|off]",
    )
    knobs.add_argument(
        "--log-level",
        type=log_level,
        default=os.environ.get("TDEV_LOG_LEVEL") or "info",
        help="debug, info, warning or error [$TDEV_LOG_LEVEL]",
    )
    return parser


def backlog_publisher(env: str, namespace: str, out: TextIO | None = None) -> Callable[[int], None]:
    """Publish `RecoveryBacklog` as a CloudWatch Embedded Metric Format line on stdout.

    Why EMF and not PutMetricData: the container's log driver already ships stdout to CloudWatch Logs, which
    turns EMF lines into metrics (the infra's backlog alarm reads them). The worker's IAM policy then needs
    no `cloudwatch:PutMetricData` — an action with no resource-level permissions, i.e. `Resource: "*"` —
    and a CloudWatch outage can never slow a sweep.
    """
    stream = out or sys.stdout

    def publish(backlog: int) -> None:
        line = {
            "_aws": {
                "Timestamp": int(time.time() * 1000),
                "CloudWatchMetrics": [
                    {
                        "Namespace": namespace,
                        "Dimensions": [["Environment"]],
                        "Metrics": [{"Name": BACKLOG_METRIC, "Unit": "Count"}],
                    }
                ],
            },
            "Environment": env,
            BACKLOG_METRIC: backlog,
            "event": "recovery.backlog",
        }
        stream.write(json.dumps(line, separators=(",", ":")) + "\n")
        stream.flush()

    return publish


def worker_config(args: argparse.Namespace) -> WorkerConfig:
    """The worker's configuration from the parsed line (0 means "the config's own default" where the
    help says so)."""
    return WorkerConfig(
        poll_interval=args.poll_interval,
        retry_delay=timedelta(seconds=args.retry_delay),
        stall_threshold=timedelta(seconds=args.stall_threshold) if args.stall_threshold else None,
        resume_cooldown=timedelta(seconds=args.resume_cooldown) if args.resume_cooldown else None,
        confirm=timedelta(seconds=args.confirm) if args.confirm is not None else None,
        lease=timedelta(seconds=args.lease),
        retry=RetryPolicy(
            maximum_attempts=args.max_attempts, initial_interval=timedelta(seconds=args.initial_backoff)
        ),
        max_resumes=args.max_resumes,
        concurrency=args.concurrency,
        grace_period=args.grace_period,
        busy_timeout=timedelta(seconds=args.busy_timeout),
        **({"worker_id": args.worker_id} if args.worker_id else {}),
    )


def _stop(worker: RecoveryWorker, folder: UsageFolder | None) -> None:
    """SIGTERM/SIGINT: the usage fold stops after its current day, the worker drains."""
    if folder is not None:
        folder.stop()
    asyncio.ensure_future(worker.shutdown())  # noqa: RUF006 - the worker's run() awaits its own end


async def _serve(args: argparse.Namespace) -> int:
    if not args.resumer:
        raise CommandLineError("no resumer: pass --resumer URL|module:function or set TDEV_RESUMER")
    config = worker_config(args)
    resumer = load_resumer(args.resumer)
    client = StateClient(command.state_config(args))
    publish = (
        backlog_publisher(client.config.env, args.cloudwatch_namespace) if args.cloudwatch_namespace else None
    )
    try:
        # A missing table or a denied DescribeTable is a wrong deployment: exit 3 now instead of failing
        # every sweep for ever. An unreachable DynamoDB is an outage: start anyway; /readyz says so.
        client.layer.probe(client.layer.tables.sessions)
    except StorageUnavailableError as exc:
        log.warning("worker.store_unreachable_at_start", error=str(exc))
    # The usage fold: past days' run and agent counts from the tables into one item per day
    # (tdev_metrics.usage_tables), so the report equals the tables whatever a pipeline process lost.
    folder = UsageFolder(client) if args.usage else None
    worker = RecoveryWorker(client, resumer, config, publish_backlog=publish, fold_usage=folder)
    # Usage counting: resumes and abandoned runs go to the usage items through a collector here; it is
    # flushed by the shutdown below (SIGTERM), so a stopped replica loses nothing it counted.
    collector = (
        MetricsCollector(client, writer_id=worker.config.worker_id[:40] or None) if args.usage else None
    )
    try:
        ops = (
            OpsServer(worker, port=args.http_port, port_file=args.port_file).start()
            if args.http_port
            else None
        )
    except OSError as exc:
        raise CommandLineError(
            f"cannot serve /healthz on port {args.http_port}: {exc.strerror or exc}"
        ) from None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: _stop(worker, folder))
    try:
        await worker.run()
    finally:
        if ops:
            ops.stop()
        if collector is not None:
            await asyncio.to_thread(collector.close)
        client.close()
    return 0


def main(argv: Sequence[str] | None = None, *, prog: str = "tdev-recovery-worker") -> int:
    """Entry point of the console script, of `tdev worker` and of `python -m tdev_recovery`."""
    args = command.parse(build_parser(prog), argv)
    if isinstance(args, int):
        return args
    configure_output(args.log_level, json_lines=True)  # JSON lines on stderr, for container log collectors

    def serve() -> int:
        try:
            return asyncio.run(_serve(args))
        except RecoveryError as exc:  # a worker setting the config objects refused (exit 2, not 3)
            raise CommandLineError(str(exc)) from None

    return command.run(serve)


if __name__ == "__main__":
    sys.exit(main())
