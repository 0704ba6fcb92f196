"""The two defects that once stopped the platform for good, replayed on a real endpoint for `make chaos`:
a metric write DynamoDB refuses (it stopped every later metric), and runs the worker can never resume (they
were claimed forever)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tdev_metrics import CollectorConfig, MetricsCollector, MetricsReader, MetricValidationError
from tdev_recovery import RecoveryWorker, ResumeRequest, RetryPolicy, WorkerConfig
from tdev_state import AGENTS, SessionStatus, StateClient
from tdev_state.tables import delete_tables

from ..chaos_report import record
from ..faults import Answer, answering, dynamodb_error


def refusing_updates_naming(needle: str) -> Callable[[Any], Answer]:
    """DynamoDB answers ValidationException to every UpdateItem whose request mentions `needle`."""

    def answer(request: Any) -> Answer:
        if needle.encode() not in (request.body or b""):
            return None
        return dynamodb_error("ValidationException", "number overflow (injected)")

    return answer


def test_a_poison_metric_loses_no_other_metric(client: StateClient) -> None:
    """Values the table cannot hold are refused at record(); a write DynamoDB still refuses is dropped and
    counted; the 1,000 records after them all land and the flusher keeps running."""
    fresh = StateClient(client.config)
    collector = MetricsCollector(fresh, CollectorConfig(flush_interval=0.1))
    now = time.time()
    refused = 0
    for bad in ({"timestamp": now * 1000}, {"timestamp": datetime.max}, {"value": 1e63}, {"value": 1e-200}):
        args: dict[str, Any] = {"value": 1.0, "agent_name": "parser", **bad}
        try:
            collector.record("poison_in", args.pop("value"), **args)
        except MetricValidationError:
            refused += 1
    poison, good = f"poison_{uuid.uuid4().hex[:6]}", f"after_{uuid.uuid4().hex[:6]}"
    with answering(fresh.layer.dynamodb, "UpdateItem", refusing_updates_naming(poison)) as injected:
        collector.record(poison, 1.0, agent_name="parser")
        for _ in range(1000):
            collector.record(good, 2.0, agent_name="search")
        assert collector.close()
    day = datetime.fromtimestamp(now, UTC).date()
    (stored,) = MetricsReader(client).daily(good, start=day)
    assert refused == 4
    assert injected["injected"] >= 1
    assert collector.dropped_writes == 1
    assert stored.count == 1000
    record(
        "poison metrics: 4 unstorable values, then a write DynamoDB refuses, then 1,000 good records",
        lost=1000 - stored.count,
        double_counted=max(0, stored.count - 1000),
        refused_at_record=refused,
        writes_dropped_and_counted=collector.dropped_writes,
        good_records_stored=stored.count,
    )


@pytest.fixture
def own_tables(client: StateClient) -> Iterator[StateClient]:
    """Tables of this test alone: the worker below must not meet the stalled runs other tests leave."""
    isolated = StateClient(replace(client.config, env=f"{client.config.env}w"))
    isolated.create_tables(streams=False)
    try:
        yield isolated
    finally:
        delete_tables(isolated.layer)


async def test_runs_that_can_never_be_resumed_are_abandoned_within_their_attempts(
    own_tables: StateClient,
) -> None:
    """Ten runs whose generation output vanished from S3: every attempt fails with its reason, and each run
    ends ABANDONED after `maximum_attempts` — none claimed forever, the resumer never called."""
    client = own_tables
    runs = []
    for _ in range(10):
        sid = client.sessions.create(user_id="wedged").session_id
        for agent in AGENTS[:6]:
            client.executions.complete(sid, agent, output_data={"out": agent})
        client.executions.complete(
            sid, "generation", output_data={"files": random.Random(sid).randbytes(30_000).hex()}
        )
        runs.append(sid)
    s3, bucket = client.layer.payloads.s3, client.config.payload_bucket
    assert s3 is not None
    assert bucket
    for sid in runs:
        for obj in s3.list_objects_v2(Bucket=bucket, Prefix=f"payloads/{sid}/").get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=obj["Key"])
    called: list[ResumeRequest] = []

    async def resumer(request: ResumeRequest) -> None:
        called.append(request)

    config = WorkerConfig(
        poll_interval=0.2,
        stall_threshold=timedelta(seconds=2),
        lease=timedelta(seconds=1),
        retry=RetryPolicy(initial_interval=timedelta(milliseconds=10), maximum_attempts=3),
        batch_size=1000,
    )
    await asyncio.sleep(2.5)  # the runs stall
    started = time.monotonic()
    async with RecoveryWorker(StateClient(client.config), resumer, config):
        while time.monotonic() - started < 60:
            if all(client.sessions.get(s).status is SessionStatus.ABANDONED for s in runs):
                break
            await asyncio.sleep(0.2)
    items = [client.layer.get(client.config.tables.sessions, {"session_id": s}) for s in runs]
    abandoned = sum(1 for i in items if i and i["status"] == "ABANDONED")
    tokens = [int(i["fencing_token"]) for i in items if i]
    assert abandoned == len(runs)
    assert all(
        "attempts exhausted" in i["error_message"] and "NoSuchKey" in i["error_message"] for i in items if i
    )
    assert called == []
    record(
        "runs whose offloaded output vanished (10), one worker, maximum_attempts 3",
        resumed_twice=0 if not called else len(called),
        runs_abandoned=abandoned,
        seconds_until_all_abandoned=round(time.monotonic() - started, 1),
        highest_fencing_token=max(tokens),
    )
