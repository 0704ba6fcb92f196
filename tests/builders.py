"""Builders shared by tests and benchmarks: crashed runs, and a pipeline resume endpoint."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tdev_state import AGENTS, StateClient


def make_stalled_runs(
    client: StateClient, count: int, *, seed: int = 42, threads: int = 16
) -> dict[str, list[str]]:
    """`count` runs that crashed after a random number of agents (half with the next one RUNNING).

    Returns session_id -> the agents completed before the crash (their outputs say {"by": "original"}).
    """
    rng = random.Random(seed)
    plans = [(rng.randint(0, 8), rng.random() < 0.5) for _ in range(count)]

    def one(plan: tuple[int, bool]) -> tuple[str, list[str]]:
        done, running = plan
        sid = client.sessions.create(user_id="chaos", project_name="c").session_id
        for agent in AGENTS[:done]:
            client.executions.start(sid, agent, input_data={"before": True})
            client.executions.complete(sid, agent, output_data={"by": "original"})
        if running:
            client.executions.start(sid, AGENTS[done], input_data={"before": True})
        return sid, list(AGENTS[:done])

    with ThreadPoolExecutor(threads) as pool:
        return dict(pool.map(one, plans))


def serve_resume_endpoint(handle: Callable[[dict[str, Any]], int]) -> tuple[ThreadingHTTPServer, str]:
    """An HTTP server on 127.0.0.1 whose POSTs are answered with `handle(json_body)` as the status."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            code = handle(body)
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/resume"


def start_worker(index: int, url: str, env: dict[str, str], *, stall: float) -> subprocess.Popen[bytes]:
    """One worker replica as its own process, with test-sized thresholds."""
    args = [
        sys.executable, "-m", "tdev_recovery",
        "--resumer", url,
        "--poll-interval", "0.5",
        "--stall-threshold", str(stall),
        "--retry-delay", str(stall),
        "--lease", str(min(2.0, stall / 2)),
        "--initial-backoff", "0.1",
        "--concurrency", "8",
        "--http-port", "0",
        "--worker-id", f"chaos-{index}-{time.monotonic_ns()}",
        "--log-level", "warning",
    ]  # fmt: skip
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)


def empty_and_delete_bucket(s3: Any, bucket: str) -> None:
    """Delete every object of a test bucket, then the bucket (test and benchmark clean-up)."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=obj["Key"])
    s3.delete_bucket(Bucket=bucket)
