"""`tdev-recovery-worker`: run one replica. Reads flags and environment once, installs signal handlers.

    tdev-recovery-worker --resumer http://pipeline:8000/resume --env dev --http-port 8080

Every flag has an environment variable (in brackets in --help); flags win.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TextIO

from tdev_recovery.config import RetryPolicy, WorkerConfig
from tdev_recovery.exceptions import RecoveryError
from tdev_recovery.ops import OpsServer
from tdev_recovery.resumers import load_resumer
from tdev_recovery.worker import RecoveryWorker
from tdev_state import ConfigurationError, StateClient, StateConfig, StateError, ValidationError
from tdev_state._log import configure_output

#: The metric the infra's backlog alarm and dashboard read (namespace from --cloudwatch-namespace).
BACKLOG_METRIC = "RecoveryBacklog"


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _envd(name: str, default: str) -> str:
    return os.environ.get(name) or default


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tdev-recovery-worker", description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--env", default=_envd("TDEV_ENV", "local"), help="table environment [TDEV_ENV]")
    add("--resumer", default=_env("TDEV_RESUMER"), help="URL or module:function [TDEV_RESUMER]")
    add("--poll-interval", type=float, default=float(_envd("TDEV_POLL_INTERVAL", "5")), help="seconds")
    add("--retry-delay", type=float, default=float(_envd("TDEV_RETRY_DELAY", "3600")),
        help="seconds a FAILED run waits before it is resumed [TDEV_RETRY_DELAY]")  # fmt: skip
    add("--stall-threshold", type=float, default=float(_envd("TDEV_STALL_THRESHOLD", "600")),
        help="seconds without heartbeat before an ACTIVE run is stalled [TDEV_STALL_THRESHOLD]")  # fmt: skip
    add("--lease", type=float, default=float(_envd("TDEV_LEASE", "30")), help="claim lease, seconds")
    add("--max-attempts", type=int, default=int(_envd("TDEV_MAX_ATTEMPTS", "5")))
    add("--max-resumes", type=int, default=int(_envd("TDEV_MAX_RESUMES", "3")))
    add("--initial-backoff", type=float, default=float(_envd("TDEV_INITIAL_BACKOFF", "1")))
    add("--concurrency", type=int, default=int(_envd("TDEV_CONCURRENCY", "8")))
    add("--grace-period", type=float, default=float(_envd("TDEV_GRACE_PERIOD", "20")))
    add("--http-port", type=int, default=int(_envd("TDEV_HTTP_PORT", "8080")), help="0 disables")
    add("--worker-id", default=_env("TDEV_WORKER_ID"))
    add("--cloudwatch-namespace", default=_env("TDEV_CLOUDWATCH_NAMESPACE"),
        help="publish RecoveryBacklog here each sweep [TDEV_CLOUDWATCH_NAMESPACE]")  # fmt: skip
    add("--log-level", type=log_level, default=_envd("TDEV_LOG_LEVEL", "info"),
        help="debug, info, warning or error [TDEV_LOG_LEVEL]")  # fmt: skip
    return p


def log_level(text: str) -> str:
    """A --log-level value (argparse applies it to the TDEV_LOG_LEVEL default too)."""
    level = text.strip().lower()
    if level not in _LEVELS:
        raise argparse.ArgumentTypeError(f"log level {text!r} is not one of: {', '.join(_LEVELS)}")
    return level


_LEVELS = ("debug", "info", "warning", "error")


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


async def _serve(args: argparse.Namespace) -> int:
    if not args.resumer:
        print("error: no resumer: pass --resumer URL|module:function or set TDEV_RESUMER", file=sys.stderr)
        return 2
    config = WorkerConfig(
        poll_interval=args.poll_interval,
        retry_delay=timedelta(seconds=args.retry_delay),
        stall_threshold=timedelta(seconds=args.stall_threshold),
        lease=timedelta(seconds=args.lease),
        retry=RetryPolicy(
            maximum_attempts=args.max_attempts, initial_interval=timedelta(seconds=args.initial_backoff)
        ),
        max_resumes=args.max_resumes,
        concurrency=args.concurrency,
        grace_period=args.grace_period,
        **({"worker_id": args.worker_id} if args.worker_id else {}),
    )
    client = StateClient(StateConfig.from_env(env=args.env))
    publish = (
        backlog_publisher(client.config.env, args.cloudwatch_namespace) if args.cloudwatch_namespace else None
    )
    worker = RecoveryWorker(client, load_resumer(args.resumer), config, publish_backlog=publish)
    ops = OpsServer(worker, port=args.http_port).start() if args.http_port else None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(worker.shutdown()))
    try:
        await worker.run()
    finally:
        if ops:
            ops.stop()
        client.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of `python -m tdev_recovery`."""
    args = build_parser().parse_args(argv)
    configure_output(args.log_level, json_lines=True)  # JSON lines on stderr, for container log collectors
    try:
        return asyncio.run(_serve(args))
    except (ConfigurationError, ValidationError, RecoveryError) as exc:  # flags or environment: exit 2
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
