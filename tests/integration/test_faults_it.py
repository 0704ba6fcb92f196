"""Faults on a real endpoint: throttling, and timeouts after the write was applied.

Each test injects the fault where the network would (botocore's before-send), so botocore's standard
retry mode reacts as in production; the assertions check what DynamoDB holds afterwards.
"""

from __future__ import annotations

import pytest

from tdev_state import StateClient, StorageUnavailableError
from tdev_state.client import StateClient as _Client

from ..faults import throttle, timeout_after_success
from .endpoints import layer_for


def test_throttled_transition_is_retried_and_applied_once(fresh_client: StateClient) -> None:
    """Three throttled attempts, then success: the agent starts once, the session moves once."""
    sid = fresh_client.sessions.create(user_id="faults", project_name="t").session_id
    with throttle(fresh_client.layer.dynamodb, "TransactWriteItems", times=3) as counts:
        fresh_client.executions.start(sid, "nl_input", input_data={"q": 1})
    assert counts["injected"] == 3
    assert fresh_client.sessions.get(sid).version == 2
    assert fresh_client.executions.get(sid, "nl_input").input_data == {"q": 1}


def test_throttling_beyond_retries_raises_and_writes_nothing(fresh_client: StateClient) -> None:
    """Every attempt throttled: StorageUnavailableError, and DynamoDB holds nothing of the call."""
    impatient = _Client(layer=layer_for(fresh_client.config, max_attempts=3))
    sid = impatient.sessions.create(user_id="faults", project_name="t").session_id
    with (
        throttle(impatient.layer.dynamodb, "TransactWriteItems", times=100) as counts,
        pytest.raises(StorageUnavailableError, match="throttled on all 3 attempts"),
    ):
        impatient.executions.start(sid, "nl_input")
    assert counts["injected"] == 3
    assert impatient.sessions.get(sid).version == 1
    assert impatient.executions.list(sid) == []


def test_timeout_after_an_applied_transition_does_not_apply_it_twice(fresh_client: StateClient) -> None:
    """The transaction lands, the client times out, botocore retries with the same token: one transition."""
    sid = fresh_client.sessions.create(user_id="faults", project_name="t").session_id
    fresh_client.executions.start(sid, "nl_input")
    with timeout_after_success(fresh_client.layer.dynamodb, "TransactWriteItems") as counts:
        result = fresh_client.executions.complete(sid, "nl_input", output_data={"ok": True})
    assert counts["injected"] == 1
    assert not result.duplicate  # DynamoDB's token made the retry a no-op; no fallback was needed
    assert result.progress == 1
    session = fresh_client.sessions.get(sid)
    assert (session.progress, session.version) == (1, 3)


def test_timeout_after_an_applied_create_is_not_a_conflict(fresh_client: StateClient) -> None:
    """A create that landed before a timeout succeeds on retry instead of reporting 'already exists'."""
    with timeout_after_success(fresh_client.layer.dynamodb, "PutItem") as counts:
        created = fresh_client.sessions.create(user_id="faults", project_name="t")
    assert counts["injected"] == 1
    assert fresh_client.sessions.get(created.session_id).version == 1


def test_timeout_after_an_applied_update_is_not_a_conflict(fresh_client: StateClient) -> None:
    """An optimistic update that landed before a timeout is recognised on retry and bumps once."""
    sid = fresh_client.sessions.create(user_id="faults", project_name="t").session_id
    with timeout_after_success(fresh_client.layer.dynamodb, "UpdateItem") as counts:
        updated = fresh_client.sessions.update(sid, expected_version=1, metadata={"m": 1})
    assert counts["injected"] == 1
    assert updated.version == 2
    assert fresh_client.sessions.get(sid).metadata == {"m": 1}


def test_timeout_after_an_applied_download_is_counted_once(fresh_client: StateClient) -> None:
    """A download whose write landed before a timeout is not counted again by botocore's retry."""
    fresh_client.projects.save(user_id="faults", project_id="dl", project_name="P")
    with timeout_after_success(fresh_client.layer.dynamodb, "TransactWriteItems") as counts:
        project = fresh_client.projects.record_download("faults", "dl")
    assert counts["injected"] == 1
    assert project.download_count == 1
    assert fresh_client.projects.get("faults", "dl").download_count == 1


def test_a_download_between_a_timeout_and_its_retry_counts_both_once(
    fresh_client: StateClient, client: StateClient
) -> None:
    """Another download lands after ours was applied and before botocore retries it: 2 downloads, count 2
    (a token kept on the item was overwritten by the other download, and the retry counted again: 3)."""
    fresh_client.projects.save(user_id="faults", project_id="dl2", project_name="P")

    def another_download() -> None:
        client.projects.record_download("faults", "dl2")

    with timeout_after_success(
        fresh_client.layer.dynamodb, "TransactWriteItems", meanwhile=another_download
    ) as counts:
        fresh_client.projects.record_download("faults", "dl2")
    assert counts["injected"] == 1
    assert fresh_client.projects.get("faults", "dl2").download_count == 2
