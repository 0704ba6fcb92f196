"""`make bench`: every benchmark against the endpoint in AWS_ENDPOINT_URL, results to reports/ and stdout.

Creates tables and a bucket under a unique prefix and deletes them afterwards. Timings are compared only
as ratios measured in the same run; capacity units are deterministic and reported as measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from benchmarks import adoption, console, fork, live, metrics, recovery, state_client, usage  # noqa: E402
from tdev_state import StateClient, StateConfig  # noqa: E402
from tdev_state.log import configure_output  # noqa: E402
from tdev_state.tables import delete_tables  # noqa: E402
from tdev_state.testing import empty_and_delete_bucket  # noqa: E402


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()} — {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--rounds", type=int, default=15, help="A/B rounds for the overhead ratio")
    parser.add_argument("--runs", type=int, default=50, help="runs for the concurrency benchmark")
    parser.add_argument(
        "--only",
        choices=(
            "state_client",
            "encryption",
            "recovery",
            "metrics",
            "usage",
            "console",
            "adoption",
            "live",
            "fork",
        ),
        default=None,
        help="run one group only",
    )
    args = parser.parse_args()
    configure_output("WARNING")  # the library's warnings and up, on stderr

    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    env = f"b{uuid.uuid4().hex[:8]}"
    bucket = f"tdev-{env}-payloads"
    config = StateConfig(env=env, endpoint_url=endpoint, payload_bucket=bucket)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=config.region)
    s3.create_bucket(Bucket=bucket)
    client = StateClient(config)
    client.create_tables(streams=False)  # the live group makes tables with streams of its own
    try:
        results: dict[str, Any] = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "endpoint": endpoint or "AWS",
        }
        if args.only in (None, "state_client"):
            results["state_client"] = state_client.run_all(config, rounds=args.rounds, runs=args.runs)
        if args.only == "encryption":  # part of state_client; alone for a quick look
            results["encryption"] = state_client.bench_encryption(config)
        if args.only in (None, "recovery"):
            results["recovery"] = recovery.run_all(client)
        if args.only in (None, "metrics"):
            results["metrics"] = metrics.run_all(client)
        if args.only in (None, "usage"):
            results["usage"] = usage.run_all(config)
        if args.only in (None, "console"):
            results["console"] = console.run_all(config)
        if args.only in (None, "adoption"):
            results["adoption"] = adoption.run_all(config)
        if args.only in (None, "live"):
            results["live"] = live.run_all(config)
        if args.only in (None, "fork"):
            results["fork"] = fork.run_all(config)
    finally:
        delete_tables(client.layer)
        empty_and_delete_bucket(s3, bucket)
    out = ROOT / "reports" / f"bench-{args.only or 'all'}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(f"\nwritten to {out.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
