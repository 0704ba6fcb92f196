"""Hostile input and unlucky operations: each refused with the package's typed error, nothing written; no
call raises after its write applied; nothing loops forever."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from typing import Any

import pytest

import tdev_state
from tdev_recovery import RecoveryWorker, WorkerConfig
from tdev_state import (
    AccessDeniedError,
    AsyncStateClient,
    ConfigurationError,
    StateClient,
    StateConfig,
    StateError,
    StorageUnavailableError,
    ValidationError,
    get_failed_sessions,
    update_agent_execution,
)
from tdev_state.testing import FakeClock

from ..faults import answering


def _written(client: StateClient) -> float:
    return client.layer.meter.snapshot()["write_units"] + client.layer.meter.snapshot()["s3_puts"]


@pytest.mark.parametrize(
    "bad",
    ["run\u202egnp.exe", "run\u200b1", "run\x851", "run\ud800", "run\u2066x", "run\ufeff"],
    ids=["bidi-override", "zero-width", "C1", "lone-surrogate", "bidi-isolate", "bom"],
)
def test_invisible_and_invalid_characters_in_ids_are_refused(client: StateClient, bad: str) -> None:
    """Ids that could display as another id, or cannot be encoded, are a ValidationError; nothing written."""
    before = _written(client)
    with pytest.raises(ValidationError, match="session_id"):
        client.sessions.create(session_id=bad)
    assert _written(client) == before


def test_free_text_with_a_lone_surrogate_is_refused(client: StateClient) -> None:
    """An error message or a name that cannot be encoded is refused, not a raw UnicodeEncodeError."""
    sid = client.sessions.create().session_id
    with pytest.raises(ValidationError, match="lone surrogate"):
        client.executions.fail(sid, "nl_input", error_message="boom \ud800")
    with pytest.raises(ValidationError, match="lone surrogate"):
        client.projects.save(user_id="u", project_id="p", project_name="shop \udfff")


@pytest.mark.parametrize("size", [1e200, 5e-324, 10**400, 1e126])
def test_numbers_beyond_dynamodbs_range_are_refused(client: StateClient, size: float) -> None:
    """DynamoDB's real limits (magnitude 1e-130 .. 9.99e125): a typed error, not a decimal exception."""
    with pytest.raises(ValidationError, match="DynamoDB numbers"):
        client.projects.save(user_id="u", project_id="p", project_name="n", size_mb=size)
    assert client.projects.save(user_id="u", project_id="p", project_name="n", size_mb=9.99e125).size_mb


async def test_an_idle_threshold_beyond_any_date_is_refused(client: StateClient) -> None:
    """get_failed_sessions(older_than=timedelta.max) is a ValidationError, not OverflowError."""
    tdev_state.configure(client)
    try:
        with pytest.raises(ValidationError, match="older_than"):
            await get_failed_sessions(older_than=timedelta.max)
    finally:
        tdev_state.configure(None)
    with pytest.raises(ValidationError, match="3650 days"):
        client.sessions.failed_sessions(older_than=timedelta.max)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"status": "RUNNING", "output_data": {"x": 1}},
            "output_data cannot be recorded with status RUNNING",
        ),
        (
            {"status": "COMPLETED", "error_message": "x"},
            "error_message cannot be recorded with status COMPLETED",
        ),
        ({"status": "PENDING", "input_data": {"x": 1}}, "input_data cannot be recorded with status PENDING"),
        ({"status": "FAILED"}, "needs error_message"),
        ({"status": "COMPLETED", "session_id": "another"}, "contradicts execution_id"),
    ],
)
async def test_the_dict_api_refuses_what_it_cannot_apply(
    client: StateClient, extra: dict[str, Any], message: str
) -> None:
    """What the dict API cannot apply is refused with a message, never silently dropped."""
    client.sessions.create(session_id="run-7")
    tdev_state.configure(client)
    try:
        with pytest.raises(ValidationError, match=message):
            await update_agent_execution({"execution_id": "run-7-parser", **extra})
    finally:
        tdev_state.configure(None)


async def test_the_dict_api_applies_input_and_retry_count_given_with_completed(client: StateClient) -> None:
    """input_data and retry_count sent with COMPLETED are stored (the orchestrator's own counts)."""
    client.sessions.create(session_id="run-8")
    tdev_state.configure(client)
    try:
        await update_agent_execution(
            {
                "execution_id": "run-8-nl_input",
                "status": "COMPLETED",
                "input_data": {"q": 1},
                "retry_count": 2,
            }
        )
    finally:
        tdev_state.configure(None)
    stored = client.executions.get("run-8", "nl_input")
    assert (stored.input_data, stored.retry_count) == ({"q": 1}, 2)


@pytest.mark.parametrize(
    "settings",
    [
        {"liveness_interval_seconds": float("nan")},
        {"liveness_interval_seconds": "60"},
        {"read_timeout": 0},
        {"region": "mars-1"},
        {"retention_days": 10**9},
        {"max_item_bytes": 100},
        {"offload_threshold": 300_000},
        {"payload_bucket": ""},
    ],
)
def test_unusable_settings_are_refused_at_construction(settings: dict[str, object]) -> None:
    """Configuration errors surface when the config is built, with what to do instead."""
    with pytest.raises(ConfigurationError):
        StateConfig(env="unit", **settings)  # type: ignore[arg-type]


async def test_a_closed_async_client_says_so(client: StateClient) -> None:
    """A call after aclose() is a ConfigurationError, not the executor's raw RuntimeError."""
    aclient = AsyncStateClient(StateClient(client.config))
    await aclient.aclose()
    with pytest.raises(ConfigurationError, match="closed"):
        await aclient.sessions.get("x")


def test_cursors_of_another_user_or_forged_are_refused(client: StateClient, clock: FakeClock) -> None:
    """A page cursor only continues the listing it came from."""
    for i in range(3):
        clock.advance(seconds=1)
        client.sessions.create(user_id="alice", project_name=f"p{i}")
    cursor = client.sessions.list_for_user("alice", limit=1).next_cursor
    with pytest.raises(ValidationError, match="another user"):
        client.sessions.list_for_user("mallory", cursor=cursor)
    for forged in ("eyJ4IjpbIk4iLCJuYW4iXX0", "e30", "!!!"):
        with pytest.raises(ValidationError, match="cursor"):
            client.sessions.list_for_user("alice", cursor=forged)


def test_a_vanished_metadata_payload_affects_only_that_field(client: StateClient) -> None:
    """The S3 object behind a session's metadata is gone: listings still work (metadata None, the reason
    given), get() raises a typed error, and an update applies and returns without raising."""
    big = {"blob": random.Random(3).randbytes(30_000).hex()}
    sid = client.sessions.create(user_id="lister", metadata=big).session_id
    client.sessions.create(user_id="lister", metadata={"small": True})
    s3, bucket = client.layer.payloads.s3, client.config.payload_bucket
    assert s3 is not None
    assert bucket
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix=f"payloads/{sid}")["Contents"]:
        s3.delete_object(Bucket=bucket, Key=obj["Key"])
    page = client.sessions.list_for_user("lister").items
    broken = next(s for s in page if s.session_id == sid)
    assert broken.metadata is None
    assert "NoSuchKey" in (broken.metadata_error or "")
    assert any(s.metadata == {"small": True} for s in page)
    with pytest.raises(StateError, match="NoSuchKey"):
        client.sessions.get(sid)
    updated = client.sessions.update(sid, status="FAILED", error_message="gave up")
    assert updated.status == "FAILED"


def test_batch_get_gives_up_under_sustained_throttling(client: StateClient) -> None:
    """UnprocessedKeys forever: bounded retries, then StorageUnavailableError (no infinite loop)."""
    keys = [{"session_id": f"s{i}"} for i in range(3)]
    table = client.config.tables.sessions
    client.layer._backoff = lambda attempt, *_, **__: attempt + 1  # type: ignore[method-assign]

    unprocessed = {
        "Responses": {table: []},
        "UnprocessedKeys": {table: {"Keys": [{"session_id": {"S": "s0"}}]}},
    }
    with (
        answering(client.layer.dynamodb, "BatchGetItem", lambda _: (200, unprocessed)),
        pytest.raises(StorageUnavailableError, match="unprocessed"),
    ):
        client.layer.batch_get(table, keys)


async def test_worker_shutdown_is_safe_in_any_order(client: StateClient, clock: FakeClock) -> None:
    """shutdown() before run() returns at once; after run() it waits for the drain; twice is harmless."""

    async def resumer(request: object) -> None:
        return None

    config = WorkerConfig(poll_interval=0.05, grace_period=0.5)
    early = RecoveryWorker(client, resumer, config, clock=clock)
    await asyncio.wait_for(early.shutdown(), timeout=2)
    worker = RecoveryWorker(client, resumer, config, clock=clock)
    runner = asyncio.create_task(worker.run())
    await asyncio.sleep(0.1)
    await asyncio.wait_for(worker.shutdown(), timeout=5)
    assert runner.done()
    await worker.shutdown()


def test_a_transaction_cancelled_by_throttling_is_unavailable_not_a_conflict(client: StateClient) -> None:
    """Cancellation reasons ThrottlingError / ProvisionedThroughputExceeded: StorageUnavailableError."""
    sid = client.sessions.create().session_id
    client.layer._backoff = lambda attempt, *_, **__: attempt + 1  # type: ignore[method-assign]

    cancelled = {
        "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
        "message": "Transaction cancelled",
        "CancellationReasons": [{"Code": "ThrottlingError"}, {"Code": "ProvisionedThroughputExceeded"}],
    }
    with (
        answering(client.layer.dynamodb, "TransactWriteItems", lambda _: (400, cancelled)),
        pytest.raises(StorageUnavailableError, match="throttled"),
    ):
        client.executions.start(sid, "nl_input")


def test_a_chart_to_an_unwritable_path_is_exit_2(
    client: StateClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tdev-metrics report --png /no/such/dir/x.png` says what is wrong in one line, exit 2."""
    from tdev_metrics import MetricsCollector
    from tdev_metrics.cli import main as metrics_cli

    monkeypatch.setenv("TDEV_ENV", client.config.env)
    with MetricsCollector(client, start=False) as collector:
        collector.record("agent_execution_time", 1.0, agent_name="parser", timestamp=1795696200.0)
    code = metrics_cli(
        ["report", "--metric", "agent_execution_time", "--from", "2026-11-26", "--png", "/no/such/dir/x.png"]
    )
    assert code == 2


def test_the_s3_path_translates_missing_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """No credentials anywhere: reading an offloaded payload is AccessDeniedError saying so, not
    botocore's NoCredentialsError."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    client = StateClient(StateConfig(env="unit", payload_bucket="tdev-unit-payloads", max_attempts=1))
    with pytest.raises(AccessDeniedError, match="no AWS credentials"):
        client.layer.payloads.objects.get_object("tdev-unit-payloads", "payloads/x/chunks/y.json.z")
