"""A busy pipeline is back-pressure, not a failed resume; claim steps count exactly once under retries."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tdev_recovery import HttpResumer, PipelineBusy, RecoveryWorker, ResumeRequest, RetryPolicy, WorkerConfig
from tdev_state import AGENTS, SessionStatus, StateClient
from tdev_state.testing import FakeClock
from tdev_state.usage import UsageEvent

pytestmark = pytest.mark.unit

WORKER = WorkerConfig(
    worker_id="w1",
    confirm=timedelta(0),  # one sweep decides: these tests move a fake clock, not a monotonic one
    retry_delay=timedelta(hours=1),
    stall_threshold=timedelta(minutes=10),
    retry=RetryPolicy(
        initial_interval=timedelta(milliseconds=1),
        maximum_interval=timedelta(milliseconds=5),
        maximum_attempts=3,
    ),
    grace_period=1.0,
)


class BusyThenAccepting:
    """Answers busy `busy` times, then accepts."""

    def __init__(self, busy: int) -> None:
        self.busy = busy
        self.requests: list[ResumeRequest] = []

    async def __call__(self, request: ResumeRequest) -> None:
        self.requests.append(request)
        if len(self.requests) <= self.busy:
            raise PipelineBusy("busy", retry_after=0.001)


def failed_run(client: StateClient) -> str:
    sid = client.sessions.create(user_id="u").session_id
    client.executions.complete(sid, AGENTS[0], output_data={"out": 1})
    client.sessions.update(sid, status="FAILED")
    return sid


async def resume_all(worker: RecoveryWorker) -> None:
    await worker.sweep()
    await worker.wait_for_inflight()


async def test_a_busy_pipeline_uses_no_attempt(client: StateClient, clock: FakeClock) -> None:
    """Five busy answers, more than the three attempts allowed: the run is resumed at attempt 1."""
    sid = failed_run(client)
    clock.advance(hours=2)
    resumer = BusyThenAccepting(busy=5)
    worker = RecoveryWorker(client, resumer, WORKER, clock=clock)
    await resume_all(worker)
    assert [r.attempt for r in resumer.requests] == [1] * 6
    session = client.sessions.get(sid)
    assert (session.status, session.resume_count) == (SessionStatus.FAILED, 1)
    assert worker.metrics.busy_waits._value.get() == 5
    assert worker.metrics.failures._value.get() == 0
    kinds = [e.kind for e in client.sessions.recovery_history(sid).events]
    assert kinds == ["claimed", "resumed"]


async def test_busy_beyond_the_bound_is_a_recorded_failed_attempt(
    client: StateClient, clock: FakeClock
) -> None:
    """Busy for longer than busy_timeout: each such wait counts one attempt, with the reason, and the run
    is abandoned when they run out — a recorded outcome, never a wait for ever."""
    sid = failed_run(client)
    clock.advance(hours=2)
    resumer = BusyThenAccepting(busy=10**6)
    config = WorkerConfig(**{**WORKER.__dict__, "busy_timeout": timedelta(milliseconds=20)})
    worker = RecoveryWorker(client, resumer, config, clock=clock)
    await resume_all(worker)
    session = client.sessions.get(sid)
    assert session.status is SessionStatus.ABANDONED
    assert "pipeline busy for" in (session.error_message or "")
    history = client.sessions.recovery_history(sid)
    assert [e.kind for e in history.events].count("attempt_failed") == 2
    assert {r.attempt for r in resumer.requests} == {1, 2, 3}


class _Pipeline(BaseHTTPRequestHandler):
    status = 503
    retry_after: str | None = "7"
    delay = 0.0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(self.delay)  # the pipeline's own slowness (the server side of the test)
        self.send_response(self.status)
        if self.retry_after is not None:
            self.send_header("Retry-After", self.retry_after)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def pipeline() -> Iterator[tuple[str, type[_Pipeline]]]:
    handler = type("Handler", (_Pipeline,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/resume", handler
    server.shutdown()


@pytest.mark.parametrize(
    ("status", "retry_after", "seconds"), [(503, "7", 7.0), (429, None, None), (429, "soon", None)]
)
async def test_http_429_and_503_are_busy_with_retry_after(
    pipeline: tuple[str, Any], status: int, retry_after: str | None, seconds: float | None
) -> None:
    """429 and 503 raise PipelineBusy, carrying Retry-After's seconds when it gives them."""
    url, handler = pipeline
    handler.status, handler.retry_after = status, retry_after
    with pytest.raises(PipelineBusy) as caught:
        await HttpResumer(url)(ResumeRequest("s", "parser", fencing_token=1, attempt=1, reason="FAILED"))
    assert caught.value.retry_after == seconds


async def test_no_answer_within_the_timeout_is_busy(pipeline: tuple[str, Any]) -> None:
    """A pipeline that takes the request but answers too late is busy (the same request is sent again)."""
    url, handler = pipeline
    handler.status, handler.delay = 202, 0.5
    with pytest.raises(PipelineBusy):
        await HttpResumer(url, timeout=0.05)(
            ResumeRequest("s", "parser", fencing_token=1, attempt=1, reason="x")
        )


class Sink:
    def __init__(self) -> None:
        self.events: list[UsageEvent] = []

    def usage(self, event: UsageEvent) -> None:
        self.events.append(event)


def applied_then_retried(client: StateClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every UpdateItem is applied, its answer lost, and sent again (botocore's retry after a timeout)."""
    real = client.layer.update

    def twice(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(client.layer, "update", twice)


async def test_a_retried_abandon_counts_once(
    client: StateClient, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An abandon whose answer was lost and that was sent again: ABANDONED, one usage event, no lost claim."""
    sid = failed_run(client)
    clock.advance(hours=2)
    sink = Sink()
    client.layer.usage.attach(sink)
    (candidate,) = client.sessions.recovery_candidates(failed_idle=timedelta(hours=1), stalled_idle=None)
    claim = client.claims.claim(candidate, worker_id="w1", lease=timedelta(seconds=30))
    assert claim is not None
    applied_then_retried(client, monkeypatch)
    client.claims.abandon(claim, reason="given up")
    assert client.sessions.get(sid).status is SessionStatus.ABANDONED
    assert [e.kind for e in sink.events] == ["run_abandoned"]


async def test_a_retried_failed_attempt_counts_once(
    client: StateClient, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """next_attempt sent twice (a retry after a lost answer) raises resume_attempts by one, not two."""
    sid = failed_run(client)
    clock.advance(hours=2)
    (candidate,) = client.sessions.recovery_candidates(failed_idle=timedelta(hours=1), stalled_idle=None)
    claim = client.claims.claim(candidate, worker_id="w1", lease=timedelta(seconds=30))
    assert claim is not None
    applied_then_retried(client, monkeypatch)
    client.claims.next_attempt(claim, error="pipeline 500")
    client.claims.handed_over(claim)
    history = client.sessions.recovery_history(sid)
    assert [e.kind for e in history.events] == ["claimed", "attempt_failed", "resumed"]
    assert history.resume_count == 1
