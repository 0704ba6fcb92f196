"""The sessions stream as the event hub's trigger (`tdev_state.events_stream.StreamTrigger`): moto's stream
for the plain path; a scripted stream client for what moto cannot stage (splits, expiry, throttling)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tdev_state import AGENTS, AsyncStateClient, StateClient, StateConfig, ValidationError
from tdev_state.events_stream import StreamTrigger

DEADLINE = 10.0
HOURS = 3600.0  # a fallback or safety interval no test waits out: only the stream can end a wait


async def _yield(_: float) -> None:
    await asyncio.sleep(0)


async def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.005)


def _record(run_id: str, seq: str) -> dict[str, Any]:
    return {"dynamodb": {"Keys": {"session_id": {"S": run_id}}, "SequenceNumber": seq}}


def _error(code: str, op: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, op)


class ScriptedStreams:
    """A stream client whose shards and GetRecords answers a test writes down; each iterator is
    "shard|type|sequence" and every GetShardIterator is kept in `iterators`."""

    def __init__(self, shards: list[dict[str, Any]], answers: dict[str, list[Any]]) -> None:
        self.shards = shards
        self.answers = answers
        self.iterators: list[tuple[str, str, str | None]] = []
        self.describe_failures: list[ClientError] = []

    def describe_stream(self, StreamArn: str, ExclusiveStartShardId: str | None = None) -> dict[str, Any]:
        if self.describe_failures:
            raise self.describe_failures.pop(0)
        ids = [s["ShardId"] for s in self.shards]
        start = ids.index(ExclusiveStartShardId) + 1 if ExclusiveStartShardId else 0
        page = self.shards[start : start + 1]  # one shard per page: the paging is followed
        description: dict[str, Any] = {"StreamStatus": "ENABLED", "Shards": page}
        if start + 1 < len(self.shards):
            description["LastEvaluatedShardId"] = page[0]["ShardId"]
        return {"StreamDescription": description}

    def get_shard_iterator(self, **params: Any) -> dict[str, Any]:
        self.iterators.append((params["ShardId"], params["ShardIteratorType"], params.get("SequenceNumber")))
        return {"ShardIterator": f"{params['ShardId']}|{params['ShardIteratorType']}"}

    def get_records(self, ShardIterator: str, Limit: int) -> dict[str, Any]:
        shard = ShardIterator.split("|", maxsplit=1)[0]
        script = self.answers.get(shard, [])
        answer = script.pop(0) if script else {"Records": []}
        if isinstance(answer, Exception):
            raise answer
        return {"NextShardIterator": ShardIterator} | answer


def _open(shard_id: str) -> dict[str, Any]:
    return {"ShardId": shard_id, "SequenceNumberRange": {"StartingSequenceNumber": "1"}}


def _closed(shard_id: str) -> dict[str, Any]:
    return {
        "ShardId": shard_id,
        "SequenceNumberRange": {"StartingSequenceNumber": "1", "EndingSequenceNumber": "9"},
    }


async def _watching(trigger: StreamTrigger, run_id: str) -> asyncio.Task[None]:
    """The first wait (released when the reader starts: it reads every watched run once), then a second
    one left pending: only a record naming `run_id` ends it."""
    await asyncio.wait_for(trigger.wait(run_id), DEADLINE)
    return asyncio.create_task(trigger.wait(run_id))


async def test_a_transition_in_the_stream_ends_the_wait_of_its_run(aclient: AsyncStateClient) -> None:
    """On moto's stream: another process's agent start wakes the watcher of that run."""
    sid = (await aclient.sessions.create()).session_id
    trigger = StreamTrigger(aclient, fallback_seconds=HOURS, safety_seconds=HOURS, sleep=_yield)
    waiting = await _watching(trigger, sid)
    StateClient(aclient.sync.config).executions.start(sid, AGENTS[0])
    await asyncio.wait_for(waiting, DEADLINE)
    assert trigger.records >= 1
    await trigger.aclose()


def _events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [getattr(r, "tdev_event", "") for r in caplog.records]


async def test_a_table_without_a_stream_is_polled_at_the_fallback_interval(
    aws: None, caplog: pytest.LogCaptureFixture
) -> None:
    """No stream on the sessions table: every wait is a plain poll interval, and nothing reads a stream."""
    client = StateClient(StateConfig(env="nostream"))
    client.create_tables(streams=False)
    trigger = StreamTrigger(AsyncStateClient(client), fallback_seconds=0.01, sleep=_yield)
    caplog.set_level(logging.INFO, logger="tdev_state")
    deadline = time.monotonic() + DEADLINE
    while "events.stream_absent" not in _events(caplog):  # each wait is one fallback interval
        assert time.monotonic() < deadline, "the reader never decided"
        await asyncio.wait_for(trigger.wait("run-1"), DEADLINE)
    await trigger.aclose()
    assert not trigger.healthy
    assert trigger.stream_requests == 0


async def test_a_closed_shard_leads_to_its_child_read_from_its_oldest_record(
    aclient: AsyncStateClient,
) -> None:
    """A split: the parent ends (no next iterator); its child, found by DescribeStream, is read from
    TRIM_HORIZON."""
    streams = ScriptedStreams(
        [_open("A")], {"A": [{"Records": []}, {"Records": [], "NextShardIterator": None}]}
    )
    trigger = StreamTrigger(
        aclient, fallback_seconds=HOURS, safety_seconds=HOURS, sleep=_yield, streams=streams
    )
    waiting = await _watching(trigger, "run-1")
    streams.shards = [_closed("A"), _open("B")]
    streams.answers["B"] = [{"Records": [_record("run-1", "12")]}]
    await asyncio.wait_for(waiting, DEADLINE)
    assert ("B", "TRIM_HORIZON", None) in streams.iterators
    await trigger.aclose()


async def test_an_expired_iterator_resumes_after_the_last_record_and_rereads_watched_runs(
    aclient: AsyncStateClient,
) -> None:
    """ExpiredIterator: a new iterator after the last sequence read, and every watched run is read once."""
    expired = _error("ExpiredIteratorException", "GetRecords")
    streams = ScriptedStreams([_open("A")], {"A": [{"Records": [_record("other", "5")]}, expired]})
    trigger = StreamTrigger(
        aclient, fallback_seconds=HOURS, safety_seconds=HOURS, sleep=_yield, streams=streams
    )
    waiting = await _watching(trigger, "run-1")
    await asyncio.wait_for(waiting, DEADLINE)
    assert ("A", "AFTER_SEQUENCE_NUMBER", "5") in streams.iterators
    assert trigger.lost_positions == 1
    await trigger.aclose()


async def test_a_failing_stream_is_counted_logged_and_read_again(
    aclient: AsyncStateClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Throttled DescribeStream calls: polling meanwhile, counted and logged, then the stream again."""
    streams = ScriptedStreams([_open("A")], {})
    streams.describe_failures = [_error("LimitExceededException", "DescribeStream")] * 2
    trigger = StreamTrigger(aclient, fallback_seconds=0.01, sleep=_yield, streams=streams)
    while not trigger.healthy:
        await asyncio.wait_for(trigger.wait("run-1"), DEADLINE)
    await trigger.aclose()
    assert trigger.failed_reads == 2
    assert _events(caplog).count("events.stream_failed") == 2


async def test_a_record_without_a_session_key_is_counted_and_skipped(aclient: AsyncStateClient) -> None:
    """A malformed record never stops the reader: the next record still wakes its run."""
    bad = {"dynamodb": {"Keys": {"execution_id": {"S": "x"}}}}
    streams = ScriptedStreams([_open("A")], {})
    trigger = StreamTrigger(
        aclient, fallback_seconds=HOURS, safety_seconds=HOURS, sleep=_yield, streams=streams
    )
    waiting = await _watching(trigger, "run-1")
    streams.answers["A"] = [{"Records": [bad, _record("run-1", "7")]}]
    await asyncio.wait_for(waiting, DEADLINE)
    assert trigger.bad_records == 1
    await trigger.aclose()


async def test_an_interval_that_is_not_a_positive_number_is_refused(aclient: AsyncStateClient) -> None:
    """A zero, negative, boolean or text interval is a ValidationError naming it."""
    bad: Any
    for bad in (0, -1.0, True, "1"):
        with pytest.raises(ValidationError, match="safety_seconds"):
            StreamTrigger(aclient, safety_seconds=bad)


async def test_a_stream_this_role_may_not_read_is_polled_without_warnings(
    aclient: AsyncStateClient, caplog: pytest.LogCaptureFixture
) -> None:
    """AccessDenied (a role without the stream grant): polling, an info line, no failure counted."""
    streams = ScriptedStreams([_open("A")], {})
    streams.describe_failures = [_error("AccessDeniedException", "DescribeStream")] * 1000
    trigger = StreamTrigger(aclient, fallback_seconds=0.01, sleep=_yield, streams=streams)
    caplog.set_level(logging.INFO, logger="tdev_state")
    deadline = time.monotonic() + DEADLINE
    while "events.stream_absent" not in _events(caplog):  # each wait is one fallback interval
        assert time.monotonic() < deadline, "the reader never decided"
        await asyncio.wait_for(trigger.wait("run-1"), DEADLINE)
    await trigger.aclose()
    assert not trigger.healthy
    assert trigger.failed_reads == 0
