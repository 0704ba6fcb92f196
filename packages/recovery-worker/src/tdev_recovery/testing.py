"""Test doubles at the recovery worker's level: worker replicas as their own processes, with test-sized
thresholds. The state-level doubles (fake clock, moto client, stalled runs, a resume endpoint, payloads)
are in `tdev_state.testing`; this module holds only what needs the worker itself.
"""

from __future__ import annotations

import subprocess
import sys
import time

from tdev_state.exceptions import ValidationError
from tdev_state.resume import ResumeRequest

__all__ = ["RecordingResumer", "start_worker"]


class RecordingResumer:
    """An in-process resumer: records every request the worker hands it and, given `error`, raises it
    after recording (a pipeline that refuses or fails)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.requests: list[ResumeRequest] = []
        self.error = error

    async def __call__(self, request: ResumeRequest) -> None:
        self.requests.append(request)
        if self.error:
            raise self.error


def start_worker(index: int, url: str, env: dict[str, str], *, stall: float) -> subprocess.Popen[bytes]:
    """Worker replica `index` as its own process (`python -m tdev_recovery`), resuming through the HTTP
    endpoint `url`, with a stall threshold of `stall` seconds and the other thresholds scaled to it, so a
    test can kill it with SIGKILL as an orchestrator's host would die. `env` is the child's whole
    environment (endpoint, credentials, TDEV_ENV). Its stdout is discarded; warnings go to stderr."""
    if stall <= 0:
        raise ValidationError(f"start_worker needs stall > 0 seconds (got {stall})")
    if not url.startswith(("http://", "https://")):
        raise ValidationError(f"start_worker needs the resume endpoint's http(s) URL (got {url!r})")
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
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)  # noqa: S603 - our own module
