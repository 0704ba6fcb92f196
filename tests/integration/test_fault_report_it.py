"""Whole pipeline runs under faults, for the fault report (docs/reliability.md, `make chaos`).

Each scenario runs complete 9-agent runs as the pipeline would — retrying a call that surfaced
StorageUnavailableError, as the pipeline's own retry loop does — and then reads back what DynamoDB holds:
nothing lost (every agent COMPLETED with its output), nothing applied twice (each session's version is
exactly 1 + 2 per agent, no agent's retry_count moved), download counts exact.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, TypeVar

import boto3
import pytest

from tdev_state import (
    AGENTS,
    SessionStatus,
    StateClient,
    StateConfig,
    StorageUnavailableError,
    TableMissingError,
)

from ..chaos_report import record
from ..faults import timeout_after_success
from .endpoints import extra_localstack

T = TypeVar("T")
RUNS = int(os.environ.get("TDEV_FAULT_RUNS", "10"))
EXPECTED_VERSION = 1 + 2 * len(AGENTS)  # create, then one start and one complete per agent


class Pipeline:
    """Drives runs like the real pipeline: a call that surfaced StorageUnavailableError is made again."""

    def __init__(self, client: StateClient) -> None:
        self.client = client
        self.surfaced = 0

    def call(self, fn: Callable[[], T], attempts: int = 10) -> T:
        for attempt in range(attempts):
            try:
                return fn()
            except StorageUnavailableError:
                self.surfaced += 1
                if attempt == attempts - 1:
                    raise
                time.sleep(0.2)
        raise AssertionError("unreachable")

    def run(self, tag: str, around: Callable[[str], Any] | None = None) -> str:
        c = self.client
        sid = f"{tag}-{uuid.uuid4().hex[:10]}"
        self.call(lambda: c.sessions.create(session_id=sid, user_id=tag, project_name="p"))
        for agent in AGENTS:
            self.call(lambda a=agent: c.executions.start(sid, a, input_data={"in": a}))
            complete = lambda a=agent: c.executions.complete(sid, a, output_data={"out": a, "sid": sid})  # noqa: E731
            if around is not None:
                with around(agent):
                    self.call(complete)
            else:
                self.call(complete)
        return sid


def audit(client: StateClient, sids: list[str]) -> tuple[int, int]:
    """(lost, applied twice) over the runs, read back consistently."""
    lost = twice = 0
    for sid in sids:
        session = client.sessions.get(sid)
        twice += max(0, session.version - EXPECTED_VERSION)
        run = {e.agent_name: e for e in client.executions.list(sid)}
        for agent in AGENTS:
            execution = run.get(agent)
            if execution is None or execution.output_data != {"out": agent, "sid": sid}:
                lost += 1
            elif execution.retry_count:
                twice += 1
        if session.status is not SessionStatus.COMPLETED or session.progress != len(AGENTS):
            lost += 1
    return lost, twice


def _count_errors(client: StateClient) -> dict[str, int]:
    counts = {"errors": 0}

    def on_retry(response: Any = None, **_: Any) -> None:
        if response is not None and response[1].get("Error"):
            counts["errors"] += 1

    client.layer.dynamodb.meta.events.register("needs-retry.dynamodb", on_retry)
    return counts


def test_runs_under_30_percent_dynamodb_errors(throttling_config: StateConfig) -> None:
    client = StateClient(throttling_config)
    errors = _count_errors(client)
    pipeline = Pipeline(client)
    started = time.monotonic()
    sids = [pipeline.run("throttled") for _ in range(RUNS)]
    elapsed = time.monotonic() - started
    lost, twice = audit(StateClient(replace(throttling_config, max_attempts=20)), sids)
    record(
        "pipeline runs with 30 % of DynamoDB calls failing (LocalStack error probability)",
        lost=lost,
        double_counted=twice,
        runs=RUNS,
        transitions=RUNS * (1 + 2 * len(AGENTS)),
        dynamodb_errors_injected=errors["errors"],
        calls_that_surfaced_unavailable=pipeline.surfaced,
        seconds=round(elapsed, 1),
    )
    assert errors["errors"] > RUNS * 5  # the fault really happened, many times
    assert (lost, twice) == (0, 0)


def test_runs_with_writes_timing_out_after_they_landed(client: StateClient) -> None:
    fresh = StateClient(client.config)
    pipeline = Pipeline(fresh)
    rng = random.Random(11)
    injected = {"n": 0}

    def sometimes_timeout(agent: str) -> Any:
        if rng.random() < 0.5:
            injected["n"] += 1
            return timeout_after_success(fresh.layer.dynamodb, "TransactWriteItems")
        from contextlib import nullcontext

        return nullcontext()

    sids = [pipeline.run("timeouts", around=sometimes_timeout) for _ in range(RUNS)]
    lost, twice = audit(client, sids)
    fresh.projects.save(user_id="timeouts", project_id="dl", project_name="P")
    for _ in range(10):
        with timeout_after_success(fresh.layer.dynamodb, "UpdateItem"):
            fresh.projects.record_download("timeouts", "dl")
    downloads = client.projects.get("timeouts", "dl").download_count
    record(
        "pipeline runs whose writes time out after landing (botocore retries them)",
        lost=lost + max(0, 10 - downloads),
        double_counted=twice + max(0, downloads - 10),
        runs=RUNS,
        completes_timed_out=injected["n"],
        downloads_timed_out=10,
        downloads_stored=downloads,
    )
    assert injected["n"] > 0
    assert (lost, twice, downloads) == (0, 0, 10)


@pytest.fixture
def restartable(base_config: StateConfig) -> Iterator[tuple[StateConfig, Callable[[str], float]]]:
    """A LocalStack of its own (a free port) that the test may stop and start (LocalStack targets only)."""
    if base_config.endpoint_url is None:
        pytest.skip("restarting the endpoint is only possible with LocalStack")
    with extra_localstack("localstack-restart") as instance:
        config = replace(
            base_config, endpoint_url=instance.endpoint, max_attempts=3, connect_timeout=1.0, read_timeout=3.0
        )
        yield config, instance.ctl


def _prepare(config: StateConfig) -> None:
    """Tables and bucket, created with the library's default patience (creating a table on a busy machine
    may take longer than the short timeouts the test itself runs with)."""
    defaults = StateConfig(env=config.env)
    patient = replace(
        config,
        max_attempts=defaults.max_attempts,
        connect_timeout=defaults.connect_timeout,
        read_timeout=defaults.read_timeout,
    )
    StateClient(patient).create_tables(streams=False)
    boto3.client("s3", region_name=config.region, endpoint_url=config.endpoint_url).create_bucket(
        Bucket=str(config.payload_bucket)
    )


def test_client_recovers_after_localstack_restart(
    restartable: tuple[StateConfig, Callable[[str], float]],
) -> None:
    """Stopped mid-run: calls fail fast with StorageUnavailableError (none hangs, none is acknowledged);
    once LocalStack is back, the same client object carries on — no new client, no restart of the caller.

    Community LocalStack keeps DynamoDB in memory (persistence is a Pro feature), so its tables are gone
    after the restart and are created again, as `make tables` would; that loss is the emulator's."""
    config, ctl = restartable
    _prepare(config)
    client = StateClient(config)
    pipeline = Pipeline(client)
    sid = pipeline.run("before")
    assert audit(client, [sid]) == (0, 0)

    mid = f"mid-{uuid.uuid4().hex[:8]}"
    client.sessions.create(session_id=mid, user_id="mid", project_name="p")
    client.executions.start(mid, AGENTS[0])
    down_seconds = ctl("down")
    refused = 0
    failed_in: list[float] = []
    for agent in AGENTS[:3]:
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError, match="did not answer"):
            client.executions.complete(mid, agent, output_data={"out": agent})
        failed_in.append(time.monotonic() - started)
        refused += 1
    up_seconds = ctl("up")
    started = time.monotonic()
    with pytest.raises(TableMissingError):  # the emulator came back empty
        client.sessions.get(mid)
    first_answer = time.monotonic() - started
    _prepare(config)
    after = pipeline.run("after")  # the same client object
    lost, twice = audit(client, [after])
    record(
        "LocalStack stopped mid-run and started again (same client object)",
        lost=lost,
        double_counted=twice,
        calls_during_outage=refused,
        calls_refused_with_StorageUnavailableError=refused,
        slowest_refusal_seconds=round(max(failed_in), 2),
        localstack_stop_seconds=round(down_seconds, 1),
        localstack_start_seconds=round(up_seconds, 1),
        first_answer_after_start_seconds=round(first_answer, 3),
    )
    assert max(failed_in) < 15
    assert (lost, twice) == (0, 0)
