"""Recovery worker on moto: what is resumed, from where, how often, and what is left alone."""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
import random
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tdev_recovery import (
    HttpResumer,
    RecoveryWorker,
    ResumeRejected,
    ResumeRequest,
    RetryPolicy,
    WorkerConfig,
    resume_pipeline,
)
from tdev_recovery.exceptions import ClaimLostError, NotRecoverableError
from tdev_recovery.ops import OpsServer
from tdev_recovery.testing import RecordingResumer
from tdev_state import AGENTS, AgentStatus, SessionStatus, StateClient
from tdev_state.models import epoch
from tdev_state.testing import FakeClock, make_client

FAST = WorkerConfig(
    worker_id="w1",
    poll_interval=0.05,
    retry_delay=timedelta(hours=1),
    stall_threshold=timedelta(minutes=10),
    confirm=timedelta(0),  # one sweep decides: these tests move a fake clock, not a monotonic one
    lease=timedelta(seconds=30),
    retry=RetryPolicy(initial_interval=timedelta(milliseconds=1), maximum_attempts=3),
    grace_period=1.0,
)


def crashed_run(client: StateClient, completed: int, *, running_next: bool) -> str:
    sid = client.sessions.create(user_id="u", project_name="p").session_id
    for agent in AGENTS[:completed]:
        client.executions.start(sid, agent, input_data={"in": agent})
        client.executions.complete(sid, agent, output_data={"out": agent})
    if running_next:
        client.executions.start(sid, AGENTS[completed])
    return sid


async def until(condition: Callable[[], bool]) -> None:
    """Wait for a condition instead of assuming how long the worker takes to reach it (10 s at most)."""
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110 - the worker exposes no event for this; polling is the probe
            await asyncio.sleep(0.01)


async def sweep_and_wait(worker: RecoveryWorker) -> int:
    started = await worker.sweep()
    await worker.wait_for_inflight()
    return started


@pytest.mark.parametrize("running_next", [False, True])
async def test_run_crashed_after_agent_4_resumes_at_agent_5(
    client: StateClient, clock: FakeClock, running_next: bool
) -> None:
    """Completed agents 1-4 and their outputs go to the resumer; agent 5 is next and nothing reruns."""
    sid = crashed_run(client, 4, running_next=running_next)
    clock.advance(minutes=11)
    resumer = RecordingResumer()
    worker = RecoveryWorker(client, resumer, FAST, clock=clock)
    assert await sweep_and_wait(worker) == 1
    (request,) = resumer.requests
    assert request.next_agent == "match_rate"
    assert [(c.agent_name, c.output_data) for c in request.completed] == [(a, {"out": a}) for a in AGENTS[:4]]
    assert request.fencing_token == 1
    run = client.executions.list(sid)
    assert [e.status for e in run[:4]] == [AgentStatus.COMPLETED] * 4
    if running_next:  # the interrupted attempt is closed as FAILED so the pipeline retries it
        assert run[4].status is AgentStatus.FAILED
        assert "interrupted" in (run[4].error_message or "")
    session = client.sessions.get(sid)
    assert session.resume_count == 1


async def test_failed_run_waits_for_the_retry_delay(client: StateClient, clock: FakeClock) -> None:
    """A FAILED run (its critical agent failed) younger than the delay is left alone; once older, it is
    resumed once, at that agent."""
    sid = crashed_run(client, 6, running_next=True)
    client.executions.fail(sid, "generation", error_message="llm 500")
    resumer = RecordingResumer()
    worker = RecoveryWorker(client, resumer, FAST, clock=clock)
    clock.advance(minutes=30)
    assert await sweep_and_wait(worker) == 0
    clock.advance(minutes=31)
    assert await sweep_and_wait(worker) == 1
    assert await sweep_and_wait(worker) == 0  # handed over: not picked again right away
    assert [r.next_agent for r in resumer.requests] == ["generation"]


async def test_a_tolerated_failure_is_never_rerun(client: StateClient, clock: FakeClock) -> None:
    """A run that went on past a failed non-critical agent and then stalled resumes after the last agent it
    reached: neither its COMPLETED agents nor the tolerated FAILED one are handed back to run."""
    sid = crashed_run(client, 3, running_next=False)
    client.executions.fail(sid, "component_decision", error_message="no components")
    client.executions.start(sid, "match_rate")
    clock.advance(minutes=11)
    resumer = RecordingResumer()
    assert await sweep_and_wait(RecoveryWorker(client, resumer, FAST, clock=clock)) == 1
    (request,) = resumer.requests
    assert request.next_agent == "match_rate"
    assert request.tolerated_failures == ["component_decision"]
    assert [c.agent_name for c in request.completed] == list(AGENTS[:3])
    assert client.executions.get(sid, "component_decision").status is AgentStatus.FAILED


async def test_an_agent_left_running_in_a_run_the_pipeline_failed_is_closed(
    client: StateClient, clock: FakeClock
) -> None:
    """The pipeline marked its run FAILED while an agent was RUNNING: the worker closes that agent under its
    claim (fenced) and resumes there, instead of dying on every claim."""
    sid = crashed_run(client, 2, running_next=True)
    client.sessions.update(sid, status="FAILED", error_message="orchestrator gave up")
    clock.advance(hours=2)
    resumer = RecordingResumer()
    assert await sweep_and_wait(RecoveryWorker(client, resumer, FAST, clock=clock)) == 1
    assert [r.next_agent for r in resumer.requests] == ["parser"]
    assert client.executions.get(sid, "parser").status is AgentStatus.FAILED


async def test_a_run_whose_generation_output_is_in_s3_is_resumed_with_it(
    client: StateClient, clock: FakeClock
) -> None:
    """An offloaded generation output is read back from the payload bucket for the resumer."""
    files = {f"src/f{i}.ts": "x" * 200 + str(i) for i in range(200)}
    sid = crashed_run(client, 6, running_next=False)
    client.executions.complete(sid, "generation", output_data={"files": files})
    assert client.executions.get(sid, "generation", load_payloads=False).output_bytes > 16 * 1024
    clock.advance(minutes=11)
    resumer = RecordingResumer()
    assert await sweep_and_wait(RecoveryWorker(client, resumer, FAST, clock=clock)) == 1
    (request,) = resumer.requests
    assert request.next_agent == "assembly"
    assert request.completed[-1].output_data == {"files": files}


async def test_a_run_with_a_vanished_payload_is_abandoned_within_its_attempts(
    client: StateClient, clock: FakeClock
) -> None:
    """A missing S3 object makes every attempt fail; each is counted with its reason, and when they run out
    the run is ABANDONED (with its TTL) instead of being claimed forever."""
    client = make_client(clock, retention_days=30)
    sid = crashed_run(client, 6, running_next=False)
    client.executions.complete(
        sid, "generation", output_data={"files": random.Random(1).randbytes(30_000).hex()}
    )
    bucket = client.config.payload_bucket
    s3 = client.layer.payloads.s3
    assert s3 is not None
    assert bucket
    for obj in s3.list_objects_v2(Bucket=bucket)["Contents"]:
        s3.delete_object(Bucket=bucket, Key=obj["Key"])
    clock.advance(minutes=11)
    resumer = RecordingResumer()
    worker = RecoveryWorker(client, resumer, FAST, clock=clock)
    await sweep_and_wait(worker)
    item = client.layer.get(client.config.tables.sessions, {"session_id": sid})
    assert item is not None
    assert item["status"] == "ABANDONED"
    assert "3 attempts exhausted" in item["error_message"]
    assert "NoSuchKey" in item["error_message"]
    assert int(item["fencing_token"]) == 1  # one claim, three counted attempts
    assert "recovery_shard" not in item
    assert int(item["expires_at"]) > int(epoch(clock.now))
    assert resumer.requests == []


async def test_attempts_of_dead_workers_count_toward_abandoning(
    client: StateClient, clock: FakeClock
) -> None:
    """Claims whose worker died mid-attempt still count: past maximum_attempts the next claim abandons."""
    sid = crashed_run(client, 2, running_next=False)
    for _ in range(FAST.retry.maximum_attempts):
        clock.advance(minutes=11)
        (candidate,) = client.sessions.recovery_candidates(
            failed_idle=None, stalled_idle=timedelta(minutes=10)
        )
        assert client.claims.claim(candidate, worker_id="dies", lease=timedelta(seconds=30))
    clock.advance(minutes=11)
    resumer = RecordingResumer()
    assert await sweep_and_wait(RecoveryWorker(client, resumer, FAST, clock=clock)) == 1
    session = client.sessions.get(sid)
    assert session.status is SessionStatus.ABANDONED
    assert "resume attempts exhausted" in (session.error_message or "")
    assert resumer.requests == []


async def test_a_run_the_policy_failed_with_nothing_left_is_abandoned(
    client: StateClient, clock: FakeClock
) -> None:
    """Every agent finished but three failed for good: FAILED by policy, nothing to resume — ABANDONED."""
    sid = client.sessions.create().session_id
    for agent in AGENTS:
        if agent in ("ui_selection", "match_rate", "search"):
            client.executions.fail(sid, agent, error_message="no")
        else:
            client.executions.complete(sid, agent, output_data=agent)
    clock.advance(hours=2)
    resumer = RecordingResumer()
    await sweep_and_wait(RecoveryWorker(client, resumer, FAST, clock=clock))
    session = client.sessions.get(sid)
    assert session.status is SessionStatus.ABANDONED
    assert "nothing left to resume" in (session.error_message or "")


async def test_a_live_heartbeat_is_not_a_stall(client: StateClient, clock: FakeClock) -> None:
    """A slow agent that heartbeats is never taken."""
    sid = crashed_run(client, 1, running_next=True)
    for _ in range(4):
        clock.advance(minutes=5)
        client.sessions.heartbeat(sid)
    worker = RecoveryWorker(client, RecordingResumer(), FAST, clock=clock)
    assert await sweep_and_wait(worker) == 0


async def test_exhausted_attempts_abandon_the_run(client: StateClient, clock: FakeClock) -> None:
    """A pipeline that keeps failing: three attempts, then ABANDONED with the reason recorded."""
    sid = crashed_run(client, 3, running_next=False)
    clock.advance(minutes=11)
    resumer = RecordingResumer(ResumeRejected("pipeline 503", retryable=True))
    worker = RecoveryWorker(client, resumer, FAST, clock=clock)
    await sweep_and_wait(worker)
    assert [r.attempt for r in resumer.requests] == [1, 2, 3]
    session = client.sessions.get(sid)
    assert session.status is SessionStatus.ABANDONED
    assert "3 attempts exhausted" in (session.error_message or "")
    assert worker.metrics.abandoned._value.get() == 1


async def test_non_retryable_refusal_abandons_at_once(client: StateClient, clock: FakeClock) -> None:
    """A refusal marked non-retryable is final after one attempt."""
    sid = crashed_run(client, 3, running_next=False)
    clock.advance(minutes=11)
    resumer = RecordingResumer(ResumeRejected("unknown session", retryable=False))
    await sweep_and_wait(RecoveryWorker(client, resumer, FAST, clock=clock))
    assert len(resumer.requests) == 1
    assert client.sessions.get(sid).status is SessionStatus.ABANDONED


async def test_a_live_claim_is_never_taken_an_expired_one_is(client: StateClient, clock: FakeClock) -> None:
    """Worker B skips A's live lease; after expiry B claims with a higher token and A is fenced out."""
    sid = crashed_run(client, 2, running_next=False)
    clock.advance(minutes=11)
    (candidate,) = client.sessions.recovery_candidates(failed_idle=None, stalled_idle=timedelta(minutes=10))
    assert candidate.session_id == sid
    claims = client.claims
    a = claims.claim(candidate, worker_id="A", lease=timedelta(seconds=30))
    assert a is not None
    assert a.fencing_token == 1
    b_resumer = RecordingResumer()
    b = RecoveryWorker(client, b_resumer, WorkerConfig(**{**FAST.__dict__, "worker_id": "B"}), clock=clock)
    assert await sweep_and_wait(b) == 0
    clock.advance(seconds=31)
    assert await sweep_and_wait(b) == 1
    assert b_resumer.requests[0].fencing_token == 2
    with pytest.raises(ClaimLostError):
        claims.extend(a, lease=timedelta(seconds=30))


async def test_a_run_that_keeps_failing_is_abandoned_after_max_resumes(
    client: StateClient, clock: FakeClock
) -> None:
    """After max_resumes hand-overs, the next failure ends the run as ABANDONED."""
    sid = crashed_run(client, 1, running_next=True)
    resumer = RecordingResumer()
    worker = RecoveryWorker(client, resumer, FAST, clock=clock)
    for _ in range(FAST.max_resumes):
        clock.advance(minutes=11)
        await sweep_and_wait(worker)
        client.executions.retry(sid, "ui_selection")  # the pipeline retries ... and stalls again
    clock.advance(minutes=11)
    await sweep_and_wait(worker)
    assert len(resumer.requests) == FAST.max_resumes
    session = client.sessions.get(sid)
    assert session.status is SessionStatus.ABANDONED
    assert "resumed 3 times" in (session.error_message or "")


async def test_resume_pipeline_as_the_plan_calls_it(client: StateClient, clock: FakeClock) -> None:
    """await resume_pipeline(session_id) performs one resume of a stalled run."""
    sid = crashed_run(client, 5, running_next=False)
    clock.advance(minutes=12)  # past the window of search and generation (the plan records on completion)
    resumer = RecordingResumer()
    result = await resume_pipeline(sid, resumer=resumer, client=client)
    assert result == {"session_id": sid, "outcome": "resumed", "fencing_token": 1}
    assert resumer.requests[0].next_agent == "search"
    for agent in AGENTS[5:]:
        client.executions.start(sid, agent)
        client.executions.complete(sid, agent)
    with pytest.raises(NotRecoverableError, match="COMPLETED"):
        await resume_pipeline(sid, resumer=resumer, client=client)


async def test_shutdown_is_idempotent_and_stops_the_loop(client: StateClient, clock: FakeClock) -> None:
    """run() returns after shutdown(); calling shutdown() again is harmless."""
    worker = RecoveryWorker(client, RecordingResumer(), FAST, clock=clock)
    runner = asyncio.create_task(worker.run())
    await until(lambda: worker.metrics.sweeps._value.get() >= 1)
    await worker.shutdown()
    await worker.shutdown()
    await asyncio.wait_for(runner, timeout=5)
    assert worker.metrics.sweeps._value.get() >= 1


async def test_shutdown_releases_a_resume_that_outlives_the_grace_period(
    client: StateClient, clock: FakeClock
) -> None:
    """A resume still running after the grace period is cancelled and its claim handed back."""
    sid = crashed_run(client, 2, running_next=False)
    clock.advance(minutes=11)

    async def hangs(request: ResumeRequest) -> None:
        await asyncio.sleep(60)

    config = WorkerConfig(**{**FAST.__dict__, "grace_period": 0.2})
    worker = RecoveryWorker(client, hangs, config, clock=clock)
    runner = asyncio.create_task(worker.run())
    await until(lambda: sid in worker.inflight)  # claimed, its resume hanging
    await worker.shutdown()
    await asyncio.wait_for(runner, timeout=5)
    item = client.layer.get(client.config.tables.sessions, {"session_id": sid})
    assert item is not None
    assert "lease_owner" not in item
    assert item["fencing_token"] == 1


class _Pipeline(BaseHTTPRequestHandler):
    status = 200
    seen: list[dict[str, Any]] = []  # noqa: RUF012

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def pipeline() -> Iterator[tuple[str, type[_Pipeline]]]:
    handler = type("Handler", (_Pipeline,), {"seen": [], "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/resume", handler
    server.shutdown()


@pytest.mark.parametrize(
    ("status", "retryable", "stale"), [(409, False, True), (422, False, False), (503, True, False)]
)
async def test_http_resumer_maps_status_codes(
    pipeline: tuple[str, type[_Pipeline]], status: int, retryable: bool, stale: bool
) -> None:
    """409 = a newer claim exists, other 4xx = refused for good, 5xx = retry."""
    url, handler = pipeline
    handler.status = status
    request = ResumeRequest("s", "parser", fencing_token=7, attempt=1, reason="FAILED")
    with pytest.raises(ResumeRejected) as caught:
        await HttpResumer(url)(request)
    assert (caught.value.retryable, caught.value.stale) == (retryable, stale)
    assert handler.seen[-1]["fencing_token"] == 7


async def test_http_resumer_posts_the_request(
    client: StateClient, clock: FakeClock, pipeline: tuple[str, type[_Pipeline]]
) -> None:
    """The pipeline receives session, next agent, token and completed outputs as JSON."""
    url, handler = pipeline
    sid = crashed_run(client, 1, running_next=False)
    clock.advance(minutes=11)
    await sweep_and_wait(RecoveryWorker(client, HttpResumer(url), FAST, clock=clock))
    (body,) = handler.seen
    assert body["session_id"] == sid
    assert body["next_agent"] == "ui_selection"
    assert body["completed"] == [{"agent_name": "nl_input", "output_data": {"out": "nl_input"}}]


def _http(base: str, path: str, method: str = "GET", **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(base + path, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


async def test_ops_endpoints(client: StateClient, clock: FakeClock, tmp_path: Path) -> None:
    """/metrics is prometheus_client's own app (gzip, name[] filters, process and GC collectors); HEAD
    answers without a body; the port file lets the container HEALTHCHECK find the port."""
    worker = RecoveryWorker(client, RecordingResumer(), FAST, clock=clock)
    await worker.sweep()
    port_file = tmp_path / "port"
    ops = OpsServer(worker, host="127.0.0.1", port=0, port_file=port_file).start()
    try:
        base = f"http://127.0.0.1:{ops.port}"
        get = functools.partial(asyncio.to_thread, _http, base)
        status, _, body = await get("/healthz")
        assert status == 200
        assert json.loads(body)["ok"] is True
        assert (await get("/readyz"))[0] == 200
        status, headers, body = await get("/metrics")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = body.decode()
        assert "tdev_recovery_sweeps_total 1.0" in text
        assert "process_cpu_seconds_total" in text  # the process collector (Linux)
        assert "python_info{" in text  # the platform collector
        assert "python_gc_objects_collected_total" in text  # the GC collector
        _, headers, zipped = await get("/metrics", **{"Accept-Encoding": "gzip"})
        assert headers["Content-Encoding"] == "gzip"
        assert "tdev_recovery_sweeps_total" in gzip.decompress(zipped).decode()
        _, _, only = await get("/metrics?name[]=tdev_recovery_sweeps_total")
        assert only.decode().count("# TYPE") == 1
        _, headers, _ = await get("/metrics", Accept="application/openmetrics-text; version=1.0.0")
        assert headers["Content-Type"].startswith("application/openmetrics-text")
        for path in ("/healthz", "/readyz", "/metrics"):
            status, headers, body = await get(path, method="HEAD")
            assert (status, body) == (200, b""), path
        assert (await get("/nope"))[0] == 404
        assert (await get("/healthz", method="POST"))[0] == 405
        assert port_file.read_text().strip() == str(ops.port)
        from tdev_recovery import healthcheck

        with pytest.MonkeyPatch.context() as env:
            env.setenv("TDEV_PORT_FILE", str(port_file))
            env.setenv("TDEV_HTTP_PORT", "1")  # wrong on purpose: the file wins
            assert await asyncio.to_thread(healthcheck.main) == 0
    finally:
        ops.stop()
    assert not port_file.exists()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TDEV_PORT_FILE", str(port_file))
        env.setenv("TDEV_HTTP_PORT", str(ops.port))
        assert await asyncio.to_thread(healthcheck.main) == 1  # nothing listens any more


async def test_healthz_means_the_loop_turns_and_readyz_means_dynamodb_answers(
    clock: FakeClock, aws: None
) -> None:
    """A worker whose every sweep fails (its tables do not exist) is alive — a restart fixes nothing — but
    not ready; a loop that stopped turning is not alive, whatever DynamoDB says."""
    from tdev_state import StateConfig

    broken = StateClient(StateConfig(env="notables"), clock=clock)
    worker = RecoveryWorker(broken, RecordingResumer(), FAST, clock=clock)
    ops = OpsServer(worker, host="127.0.0.1", port=0).start()
    base = f"http://127.0.0.1:{ops.port}"
    try:
        async with worker:
            await until(lambda: worker.metrics.sweep_errors._value.get() >= 2)
            status, _, body = await asyncio.to_thread(_http, base, "/healthz")
            assert status == 200, body
            status, _, body = await asyncio.to_thread(_http, base, "/readyz")
            assert status == 503
            assert "does not exist" in json.loads(body)["dynamodb"]
            worker.last_turn_monotonic -= 3600  # as if the loop had stopped an hour ago
            status, _, body = await asyncio.to_thread(_http, base, "/healthz")
            assert status == 503
            assert json.loads(body)["loop_turned_seconds_ago"] >= 3600
    finally:
        ops.stop()


async def test_resume_pipeline_is_importable_with_the_plans_other_calls(
    client: StateClient, clock: FakeClock
) -> None:
    """`from tdev_state import resume_pipeline` works as the pipeline writes it."""
    from tdev_state import resume_pipeline as plan_resume

    sid = crashed_run(client, 2, running_next=True)
    clock.advance(minutes=12)
    resumer = RecordingResumer()
    result = await plan_resume(sid, resumer=resumer, client=client)
    assert result["outcome"] == "resumed"
    assert resumer.requests[0].next_agent == "parser"


def test_backlog_is_published_as_embedded_metric_format() -> None:
    """One EMF line per sweep: CloudWatch Logs turns it into the metric the infra's backlog alarm reads."""
    import io

    from tdev_recovery.cli import BACKLOG_METRIC, backlog_publisher

    out = io.StringIO()
    publish = backlog_publisher("prod", "T-Developer", out)
    publish(3)
    publish(0)
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    (directive,) = first["_aws"]["CloudWatchMetrics"]
    assert directive == {
        "Namespace": "T-Developer",
        "Dimensions": [["Environment"]],
        "Metrics": [{"Name": BACKLOG_METRIC, "Unit": "Count"}],
    }
    assert (first["Environment"], first[BACKLOG_METRIC], second[BACKLOG_METRIC]) == ("prod", 3, 0)
    assert isinstance(first["_aws"]["Timestamp"], int)
