"""A refused call writes nothing, S3 included: the payload objects it created are taken back — but never one
an item refers to (an object that existed before the call, or one a concurrent writer committed meanwhile)."""

from __future__ import annotations

from typing import Any
from unittest import mock

import boto3
import pytest
from botocore.exceptions import ClientError

from tdev_state import AGENTS, ConflictError, InvalidTransitionError, StateClient, StorageUnavailableError
from tdev_state.testing import BUCKET, FakeClock, generated_project

from ..concurrent_payloads import concurrent_writers, large_files, refusal_races_an_acknowledged_write
from ..faults import answering, dynamodb_error


def _objects(prefix: str = "") -> list[str]:
    listing = boto3.client("s3", region_name="us-east-1").list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


def _run_to(client: StateClient, sid: str, n: int) -> None:
    for agent in AGENTS[:n]:
        client.executions.start(sid, agent)
        client.executions.complete(sid, agent, output_data={"ok": agent})


def test_a_refused_call_takes_back_what_it_stored(client: StateClient) -> None:
    """Completing an agent three steps ahead is refused; its 100 KB output's objects are deleted; the error
    is the refusal, unchanged."""
    sid = client.sessions.create(user_id="u").session_id
    with pytest.raises(InvalidTransitionError):
        client.executions.complete(sid, "parser", output_data=generated_project(100_000))
    assert _objects(f"payloads/{sid}/") == []
    assert client.layer.payloads.discarded_objects >= 1
    with pytest.raises(InvalidTransitionError):  # the same through start (an input) and a session update
        client.executions.start(sid, "search", input_data=generated_project(100_000, seed=3))
    with pytest.raises(InvalidTransitionError):
        client.sessions.update(sid, status="COMPLETED", metadata=generated_project(100_000, seed=4))
    assert _objects(f"payloads/{sid}/") == []


def test_objects_that_existed_before_the_call_stay(client: StateClient) -> None:
    """The generated files are stored by `generation`; a refused call carrying the same files (an input of
    a later agent, sent out of order) created nothing, so it deletes nothing: the run still reads back."""
    sid = client.sessions.create(user_id="u").session_id
    _run_to(client, sid, 6)
    files = generated_project(200_000)
    client.executions.start(sid, "generation")
    client.executions.complete(sid, "generation", output_data=files)
    before = _objects(f"payloads/{sid}/")
    assert before
    with pytest.raises(InvalidTransitionError):
        client.executions.start(sid, "download", input_data={"generation": files, "extra": "x"})
    assert _objects(f"payloads/{sid}/") == before
    assert StateClient(client.config).executions.get(sid, "generation").output_data == files


def test_a_concurrent_writers_output_stands_when_another_is_refused(
    client: StateClient, clock: FakeClock
) -> None:
    """B stores the files first; before B's transaction, A completes the same agent with the same files. B
    is refused (another writer completed it) and takes back its own objects; A's output reads back."""
    sid = client.sessions.create(user_id="u").session_id
    _run_to(client, sid, 6)
    client.executions.start(sid, "generation")
    files = generated_project(200_000, seed=11)
    writer_a = StateClient(client.config, clock=clock)
    writer_b = StateClient(client.config, clock=clock)

    def a_commits_first(_: Any) -> None:
        if not a_done:
            a_done.append(writer_a.executions.complete(sid, "generation", output_data={**files, "by": "a"}))

    a_done: list[Any] = []
    with (
        answering(writer_b.layer.dynamodb, "TransactWriteItems", a_commits_first),
        pytest.raises((ConflictError, InvalidTransitionError)),
    ):
        writer_b.executions.complete(sid, "generation", output_data={**files, "by": "b"})
    assert a_done
    assert writer_b.layer.payloads.discarded_objects >= 1
    assert StateClient(client.config).executions.get(sid, "generation").output_data == {**files, "by": "a"}


def test_a_refused_cleanup_never_deletes_what_an_acknowledged_write_refers_to(client: StateClient) -> None:
    """Forced interleaving (issue 23.2): B stores the files' chunk, A stores the same content, B is refused
    and reads the run, A commits, B deletes. A's acknowledged output still reads back."""
    files = large_files()
    acknowledged, seen = refusal_races_an_acknowledged_write(client, files, serialize_dynamodb=True)
    assert acknowledged
    assert seen == {"files": files}


def test_many_concurrent_writers_never_lose_an_acknowledged_payload(client: StateClient) -> None:
    """Six writers per run, with latency injected before every S3 and DynamoDB call: every acknowledged
    payload reads back, and every refused call took back what it stored."""
    figures = concurrent_writers(
        client, runs=3, writers=6, jitter=0.004, seed=7, files=large_files(), serialize_dynamodb=True
    )
    assert figures.refused >= 3  # the race really happened: writers were refused while others committed
    assert figures.acknowledged >= 6
    assert figures.lost == 0
    assert figures.objects_left == 0


def test_a_duplicate_takes_back_its_own_objects(client: StateClient) -> None:
    """A repeated complete (another process, same output) is a duplicate success: the item keeps the first
    call's objects, and the repeat's own copies are deleted, not left behind."""
    sid = client.sessions.create(user_id="u").session_id
    _run_to(client, sid, 6)
    client.executions.start(sid, "generation")
    files = generated_project(200_000, seed=12)
    client.executions.complete(sid, "generation", output_data=files)
    before = _objects(f"payloads/{sid}/")
    again = StateClient(client.config)
    assert again.executions.complete(sid, "generation", output_data=files).duplicate
    assert again.layer.payloads.discarded_objects >= 1
    assert _objects(f"payloads/{sid}/") == before
    assert again.executions.get(sid, "generation").output_data == files


def test_an_unknown_outcome_leaves_the_objects(client: StateClient) -> None:
    """A transaction that timed out may have landed: its objects are never deleted inline, only counted."""
    sid = client.sessions.create(user_id="u").session_id
    with (
        answering(
            client.layer.dynamodb, "TransactWriteItems", lambda _: dynamodb_error("InternalServerError")
        ),
        pytest.raises(StorageUnavailableError),
    ):
        client.executions.complete(sid, "nl_input", output_data=generated_project(100_000))
    assert _objects(f"payloads/{sid}/")
    assert client.layer.payloads.orphaned_objects >= 1
    assert client.layer.payloads.discarded_objects == 0


def test_a_failed_cleanup_never_hides_the_refusal(client: StateClient) -> None:
    """DeleteObject denied: the caller still gets the refusal; the object is left to the bucket lifecycle."""
    sid = client.sessions.create(user_id="u").session_id
    assert client.layer.payloads.s3 is not None
    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "DeleteObject")
    with (
        mock.patch.object(client.layer.payloads.s3, "delete_object", side_effect=denied),
        pytest.raises(InvalidTransitionError),
    ):
        client.executions.complete(sid, "parser", output_data=generated_project(100_000))
    assert _objects(f"payloads/{sid}/")
    assert client.layer.payloads.discarded_objects == 0


def test_a_call_refused_before_any_upload_stores_nothing(client: StateClient) -> None:
    """Bad input is refused before any object is written (the scope has nothing to take back)."""
    sid = client.sessions.create(user_id="u").session_id
    with pytest.raises(Exception, match="agent"):
        client.executions.complete(sid, "not-an-agent", output_data=generated_project(100_000))
    assert _objects(f"payloads/{sid}/") == []
