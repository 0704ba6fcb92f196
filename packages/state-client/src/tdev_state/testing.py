"""Test doubles for code built on tdev_state: a clock moved by hand, the state client on moto, builders of
typical states, and realistic payloads.

They ship with the library (like `structlog.testing`) so that the pipeline's own tests, this repository's
tests, its demo and its benchmarks all build the same states the same way, and nobody imports another
project's `tests` package. Nothing here needs pytest; the fixtures stay in each test suite's conftest and
call these.

moto is not a dependency of the state client: `moto_aws()` imports it when it is called, and the
`tdev-state-client[testing]` extra installs it. Importing this module costs nothing extra.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import string
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3

from tdev_state.client import StateClient
from tdev_state.config import StateConfig
from tdev_state.exceptions import ConfigurationError, ValidationError
from tdev_state.models import AGENTS

__all__ = [
    "BUCKET",
    "FakeClock",
    "LogEntries",
    "agent_payload",
    "empty_and_delete_bucket",
    "generated_project",
    "log_entries",
    "make_client",
    "make_stalled_runs",
    "moto_aws",
    "moto_client",
    "serve_resume_endpoint",
    "source_file",
]

#: The payload bucket `make_client` creates on moto (unless told `payload_bucket=None`).
BUCKET = "tdev-unit-payloads"

_MOTO_REGION = "us-east-1"
#: How many `moto_aws()` blocks are open: `make_client` refuses to run outside one, so a test that forgot
#: the fixture fails at once instead of creating tables wherever the shell's credentials point.
_moto_depth = 0
_moto_lock = threading.Lock()


class FakeClock:
    """A clock tests move by hand: pass it as `StateClient(..., clock=clock)` and call `advance`.

    Every reading is a microsecond later than the one before, as on a real clock, so two writes made
    "at the same time" still order; `now` is the last reading and may be set directly.
    """

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
        if start.tzinfo is None:
            raise ValidationError("FakeClock's start must be timezone-aware: pass tzinfo=UTC")
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(microseconds=1)
        return self.now

    def advance(self, *, days: float = 0, hours: float = 0, minutes: float = 0, seconds: float = 0) -> None:
        """Move the clock forward (thresholds, TTLs, hours and days of usage)."""
        delta = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        if delta < timedelta(0):
            raise ValidationError(
                f"FakeClock.advance moves forward only (got {delta}); set `clock.now` to go back"
            )
        self.now += delta


@contextmanager
def moto_aws() -> Iterator[None]:
    """moto's in-process AWS, with fake credentials and no endpoint override whatever the shell exported
    (a stray AWS_ENDPOINT_URL or AWS_PROFILE would send a unit test to LocalStack or a real account).
    The environment is restored on exit."""
    try:
        from moto import mock_aws
    except ImportError as exc:
        raise ConfigurationError(
            "tdev_state.testing.moto_aws needs moto: install tdev-state-client[testing]"
        ) from exc
    global _moto_depth  # noqa: PLW0603 - one process-wide count, guarded by the lock
    overrides: dict[str, str | None] = {
        "AWS_ENDPOINT_URL": None,
        "AWS_PROFILE": None,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": None,
        "AWS_DEFAULT_REGION": _MOTO_REGION,
        # botocore sends DynamoDB Streams calls to an account-id host moto does not serve; the classic host
        # is the one it knows (the stream consumer's unit tests run on moto).
        "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
    }
    saved = {key: os.environ.get(key) for key in overrides}
    _set_environ(overrides)
    try:
        with mock_aws():
            with _moto_lock:
                _moto_depth += 1
            try:
                yield
            finally:
                with _moto_lock:
                    _moto_depth -= 1
    finally:
        _set_environ(saved)


def _set_environ(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def make_client(clock: Callable[[], datetime] | None = None, **config: Any) -> StateClient:
    """A client of env "unit" on moto, its tables created and (unless `payload_bucket=None`) its payload
    bucket too. Run it inside `moto_aws()`; `config` overrides any `StateConfig` field."""
    if _moto_depth == 0:
        raise ConfigurationError(
            "make_client runs on moto only: call it inside `with tdev_state.testing.moto_aws():`"
        )
    known = {f.name for f in dataclasses.fields(StateConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValidationError(
            f"make_client: {unknown} are not StateConfig fields; use one of {sorted(known)}"
        )
    settings: dict[str, Any] = {"env": "unit", "payload_bucket": BUCKET, **config}
    state_config = StateConfig(**settings)
    if state_config.payload_bucket:
        boto3.client("s3", region_name=_MOTO_REGION).create_bucket(Bucket=state_config.payload_bucket)
    client = StateClient(state_config, clock=clock) if clock else StateClient(state_config)
    client.create_tables()
    return client


@contextmanager
def moto_client(clock: Callable[[], datetime] | None = None, **config: Any) -> Iterator[StateClient]:
    """`make_client` inside its own `moto_aws()`: a ready client for a test or a doctest, gone on exit."""
    with moto_aws():
        client = make_client(clock, **config)
        try:
            yield client
        finally:
            client.close()


# ---- builders ------------------------------------------------------------------------------------------


def make_stalled_runs(
    client: StateClient, count: int, *, seed: int = 42, threads: int = 16
) -> dict[str, list[str]]:
    """`count` runs that crashed after a random number of agents (half with the next one left RUNNING), as a
    killed pipeline process leaves them. Returns session_id -> the agents completed before the crash (their
    outputs are {"by": "original"}, so a test can tell a re-run from the original work)."""
    if count < 0 or threads < 1:
        raise ValidationError(f"make_stalled_runs needs count >= 0 and threads >= 1 (got {count}, {threads})")
    rng = random.Random(seed)
    plans = [(rng.randint(0, len(AGENTS) - 1), rng.random() < 0.5) for _ in range(count)]

    def one(plan: tuple[int, bool]) -> tuple[str, list[str]]:
        done, running = plan
        sid = client.sessions.create(user_id="chaos", project_name="c").session_id
        for agent in AGENTS[:done]:
            client.executions.start(sid, agent, input_data={"before": True})
            client.executions.complete(sid, agent, output_data={"by": "original"})
        if running:
            client.executions.start(sid, AGENTS[done], input_data={"before": True})
        return sid, list(AGENTS[:done])

    if _moto_depth > 0:
        # moto's TransactWriteItems deep-copies every table while another thread may insert an item
        # ("dictionary changed size during iteration"): in process, threads buy nothing, so one at a time.
        threads = 1
    with ThreadPoolExecutor(threads) as pool:
        return dict(pool.map(one, plans))


def serve_resume_endpoint(handle: Callable[[dict[str, Any]], int]) -> tuple[ThreadingHTTPServer, str]:
    """A stand-in for the pipeline's resume endpoint on 127.0.0.1 (a free port): each POST's JSON body is
    answered with `handle(body)` as the status. Returns the server (call `shutdown()` when done) and the
    URL to give the recovery worker's HTTP resumer."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            except ValueError:
                code = 400
            else:
                code = handle(body)
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="tdev-test-resume-endpoint").start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/resume"


def empty_and_delete_bucket(s3: Any, bucket: str) -> None:
    """Delete every object of a test bucket, then the bucket (clean-up after tests and benchmarks)."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=obj["Key"])
    s3.delete_bucket(Bucket=bucket)


# ---- logs ----------------------------------------------------------------------------------------------

#: What a log-capturing fixture hands a test: call it for the entries logged so far.
LogEntries = Callable[[], list[dict[str, Any]]]


def log_entries(records: Iterable[logging.LogRecord]) -> list[dict[str, Any]]:
    """The packages' entries among stdlib log records (e.g. pytest's `caplog.records`), as dicts of event,
    log_level and fields: what a host application receives, in a form a test can compare."""
    return [
        {"event": r.tdev_event, "log_level": r.levelname.lower(), **getattr(r, "tdev_fields", {})}
        for r in records
        if hasattr(r, "tdev_event")
    ]


# ---- payload profiles ----------------------------------------------------------------------------------
# Generated source compresses about 3-5x with zlib, like real code (identifiers and literals vary); a
# repeated line would compress 100x and make every size-based measurement meaningless.

_WORDS = [
    "user",
    "todo",
    "item",
    "list",
    "render",
    "state",
    "props",
    "effect",
    "fetch",
    "handle",
    "submit",
    "click",
    "value",
    "index",
    "key",
    "route",
    "page",
    "form",
    "input",
    "button",
    "modal",
    "card",
    "table",
    "row",
    "column",
    "style",
    "theme",
    "config",
    "token",
    "session",
    "cache",
    "error",
    "loading",
    "data",
    "response",
    "request",
    "query",
    "params",
    "result",
    "count",
    "total",
    "filter",
    "sort",
    "search",
]


def _ident(rng: random.Random) -> str:
    parts = rng.sample(_WORDS, rng.randint(1, 3))
    return parts[0] + "".join(p.title() for p in parts[1:])


def source_file(rng: random.Random, target_bytes: int) -> str:
    """One file of plausible TypeScript-like code of about `target_bytes`."""
    lines: list[str] = []
    size = 0
    while size < target_bytes:
        kind = rng.random()
        indent = "  " * rng.randint(0, 3)
        if kind < 0.25:
            line = f"{indent}const {_ident(rng)} = {_ident(rng)}({_ident(rng)}, {rng.randint(0, 9999)});"
        elif kind < 0.45:
            line = f"{indent}if ({_ident(rng)}.{_ident(rng)} !== {rng.choice(['null', 'undefined', '0'])}) {{"
        elif kind < 0.6:
            line = f"{indent}return {_ident(rng)}.map(({_ident(rng)}) => {_ident(rng)}.{_ident(rng)});"
        elif kind < 0.75:
            line = f"{indent}// {' '.join(rng.choices(_WORDS, k=rng.randint(3, 9)))}"
        elif kind < 0.9:
            name = "".join(rng.choices(string.ascii_letters, k=8))
            line = f"{indent}export function {_ident(rng)}{name}({_ident(rng)}: string): void {{"
        else:
            line = indent + "}"
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines)


def generated_project(total_bytes: int, *, seed: int = 7, files: int = 40) -> dict[str, Any]:
    """The `generation` agent's output: {"files": {path: source}, "framework": "react"} of about
    `total_bytes` of JSON, the same for the same arguments."""
    if total_bytes < 0 or files < 1:
        raise ValidationError(
            f"generated_project needs total_bytes >= 0 and files >= 1 (got {total_bytes}, {files})"
        )
    rng = random.Random(seed)
    per_file = max(1, total_bytes // files)
    return {
        "files": {f"src/components/{_ident(rng)}_{i}.tsx": source_file(rng, per_file) for i in range(files)},
        "framework": "react",
    }


def agent_payload(kilobytes: float, *, seed: int) -> dict[str, Any]:
    """A structured agent input or output of about `kilobytes` KB: requirements, components, scores."""
    if kilobytes < 0:
        raise ValidationError(f"agent_payload needs kilobytes >= 0 (got {kilobytes})")
    rng = random.Random(seed)
    target = int(kilobytes * 1024)
    out: dict[str, Any] = {"requirements": [], "scores": {}}
    size = 0
    while size < target:
        out["requirements"].append(
            {
                "id": rng.randint(1, 10**6),
                "name": _ident(rng),
                "description": " ".join(rng.choices(_WORDS, k=rng.randint(5, 15))),
                "weight": round(rng.random(), 4),
            }
        )
        out["scores"][_ident(rng) + str(rng.randint(0, 99))] = round(rng.random() * 100, 2)
        size += 140
    return out
