"""Refs: a run carries the caller's own ids, unique per env, found in one read and never listed as runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from tdev_state import (
    AsyncStateClient,
    DeferPolicy,
    PipelineRun,
    RefTakenError,
    SessionNotFoundError,
    SessionStatus,
    StateClient,
    ValidationError,
    deferred_writes,
)
from tdev_state.runs.refs import REF_PREFIX
from tdev_state.schema import PIPELINE_SESSIONS
from tdev_state.testing import FakeClock

pytestmark = pytest.mark.unit


def test_a_run_is_found_by_its_ref_in_one_read(client: StateClient) -> None:
    """resolve() names the run for its ref and for its own id, each with one BatchGetItem."""
    client.sessions.create(session_id="prod_1", refs=["project_abc"])
    calls: list[str] = []
    client.layer.dynamodb.meta.events.register(
        "before-call.dynamodb.*", lambda model, **_: calls.append(model.name)
    )
    assert client.sessions.resolve("project_abc") == "prod_1"
    assert client.sessions.resolve("prod_1") == "prod_1"
    assert calls == ["BatchGetItem", "BatchGetItem"]
    assert client.sessions.get("prod_1").refs == ("project_abc",)


def test_an_unknown_id_or_ref_is_not_found(client: StateClient) -> None:
    """A name that is neither a run nor a ref is SessionNotFoundError, with the name in the message."""
    with pytest.raises(SessionNotFoundError, match="project_nope"):
        client.sessions.resolve("project_nope")


def test_a_taken_ref_refuses_the_whole_create(client: StateClient) -> None:
    """A ref held by another run raises RefTakenError naming that run, and the new run is not stored."""
    client.sessions.create(session_id="first", refs=["project_x"])
    with pytest.raises(RefTakenError, match="first") as caught:
        client.sessions.create(session_id="second", refs=["project_y", "project_x"])
    assert (caught.value.ref, caught.value.run_id) == ("project_x", "first")
    with pytest.raises(SessionNotFoundError):
        client.sessions.get("second")
    with pytest.raises(SessionNotFoundError):
        client.sessions.resolve("project_y")  # all or nothing: the free ref was not taken either


def test_a_ref_that_could_be_a_key_prefix_is_refused(client: StateClient) -> None:
    """A ref must pass the id rule (no `#`), so no ref key can be forged into another ref's or a run's."""
    with pytest.raises(ValidationError, match="ref"):
        client.sessions.create(session_id="r1", refs=["ref#x"])


def test_ref_items_never_show_as_runs(client: StateClient, clock: FakeClock) -> None:
    """No index of the sessions table (by user, by day, recovery) nor any listing built on them holds a ref
    item, whatever status the run reaches."""
    client.sessions.create(session_id="open1", user_id="u1", refs=["project_a", "project_b"])
    client.sessions.create(session_id="failed1", user_id="u1", refs=["project_c"])
    client.sessions.update("failed1", status="FAILED", error_message="boom")
    clock.advance(hours=3)
    raw = client.layer.dynamodb
    table = client.layer.tables.sessions
    for index in PIPELINE_SESSIONS.indexes:
        pages = raw.get_paginator("scan").paginate(TableName=table, IndexName=index.name)
        keys = [item["session_id"]["S"] for page in pages for item in page["Items"]]
        assert keys, f"index {index.name} should hold the runs"
        assert not [k for k in keys if k.startswith(REF_PREFIX)], index.name
    listed = [s.session_id for s in client.sessions.list_for_user("u1").items]
    listed += [s.session_id for s in client.sessions.list_by_day(clock.now.date()).items]
    listed += [s.session_id for s in client.sessions.failed_sessions(older_than=timedelta(hours=1))]
    listed += [
        c.session_id
        for c in client.sessions.recovery_candidates(
            failed_idle=timedelta(hours=1), stalled_idle=timedelta(minutes=1)
        )
    ]
    assert set(listed) == {"open1", "failed1"}
    assert client.sessions.get("failed1").status is SessionStatus.FAILED


@pytest.fixture
async def aclient(client: StateClient) -> AsyncIterator[AsyncStateClient]:
    async with AsyncStateClient(client) as a:
        deferred_writes(a, DeferPolicy(call_budget_seconds=5.0, first_backoff_seconds=0.01))
        yield a
        deferred_writes(a).close()


async def test_pipeline_run_open_stores_its_refs(aclient: AsyncStateClient, client: StateClient) -> None:
    """PipelineRun.open(refs=...) stores the run findable by the orchestrator's project id."""
    run = await PipelineRun.open(aclient, "prod_20261206_0001", refs=["project_1"])
    await deferred_writes(aclient).flush(5.0)
    assert client.sessions.resolve("project_1") == run.session_id


async def test_pipeline_run_raise_mode_refuses_a_taken_ref(
    aclient: AsyncStateClient, client: StateClient
) -> None:
    """In the raise mode a taken ref is RefTakenError, and nothing of the new run is stored."""
    client.sessions.create(session_id="other", refs=["project_2"])
    with pytest.raises(RefTakenError):
        await PipelineRun.open(aclient, "prod_2", refs=["project_2"], on_store_error="raise")
    with pytest.raises(SessionNotFoundError):
        client.sessions.get("prod_2")


async def test_pipeline_run_defer_mode_stores_the_run_without_a_taken_ref(
    aclient: AsyncStateClient, client: StateClient, caplog: pytest.LogCaptureFixture
) -> None:
    """In the defer mode a taken ref costs the run nothing: it is stored (without refs) and runs on."""
    client.sessions.create(session_id="other", refs=["project_3"])
    with caplog.at_level("WARNING", logger="tdev_state"):
        run = await PipelineRun.open(aclient, "prod_3", refs=["project_3"])
        async with run.agent("nl_input") as step:
            step.complete({"ok": True})
        await deferred_writes(aclient).flush(5.0)
    stored = client.sessions.get("prod_3")
    assert (stored.refs, stored.progress) == ((), 1)
    assert client.sessions.resolve("project_3") == "other"
    assert any(r.getMessage().startswith("run.ref_taken") for r in caplog.records)


def test_a_ref_items_key_is_never_read_as_a_run(client: StateClient) -> None:
    """get() and events() on a ref item's own key (`ref#…`) find no run, instead of a malformed one."""
    client.sessions.create(session_id="r2", refs=["project_k"])
    with pytest.raises(SessionNotFoundError):
        client.sessions.get(f"{REF_PREFIX}project_k")
    with pytest.raises(SessionNotFoundError):
        client.sessions.events(f"{REF_PREFIX}project_k")


def test_a_name_longer_than_any_ref_is_looked_up_as_a_run_id_only(client: StateClient) -> None:
    """A 2,045-byte name (a legal lookup key) is not found, and no key over DynamoDB's 2,048-byte partition
    key limit is sent for its ref (DynamoDB would refuse the whole read as invalid)."""
    keys: list[int] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        for table in params.get("RequestItems", {}).values():
            keys.extend(len(key["session_id"]["S"].encode()) for key in table["Keys"])

    dynamo = client.layer.dynamodb
    dynamo.meta.events.register("provide-client-params.dynamodb.BatchGetItem", record)
    try:
        with pytest.raises(SessionNotFoundError):
            client.sessions.resolve("a" * 2045)
    finally:
        dynamo.meta.events.unregister("provide-client-params.dynamodb.BatchGetItem", record)
    assert keys
    assert max(keys) <= 2048
