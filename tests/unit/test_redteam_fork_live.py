"""Red-team findings on forks (#27) and the sessions-stream trigger (#26): each test is one bug seen."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tdev_recovery import Outcome, RecoveryWorker
from tdev_recovery.testing import RecordingResumer
from tdev_state import AsyncStateClient, SessionStatus, StateClient, ValidationError
from tdev_state.cli import main as tdev
from tdev_state.diff import diff_runs
from tdev_state.events import EventHub, event_hub
from tdev_state.events_http import events_app
from tdev_state.events_stream import StreamTrigger
from tdev_state.testing import FakeClock, agent_payload, make_client

from .test_forks import WORKER, completed_run, offloaded_run, raw_agents
from .test_stream_trigger import (
    DEADLINE,
    HOURS,
    ScriptedStreams,
    _closed,
    _open,
    _record,
    _until,
    _watching,
    _yield,
)

pytestmark = pytest.mark.unit


class CountingStreams(ScriptedStreams):
    """A scripted stream that counts its DescribeStream pages."""

    def __init__(self, shards: list[dict[str, Any]], answers: dict[str, list[Any]]) -> None:
        super().__init__(shards, answers)
        self.describes = 0

    def describe_stream(self, StreamArn: str, ExclusiveStartShardId: str | None = None) -> dict[str, Any]:
        self.describes += 1
        return super().describe_stream(StreamArn, ExclusiveStartShardId)


async def test_a_closed_shard_whose_child_shows_late_is_still_followed(aclient: AsyncStateClient) -> None:
    """The stream lists a closed shard's child only after a while: the reader keeps looking for it."""
    streams = CountingStreams([_open("A")], {})
    trigger = StreamTrigger(
        aclient, fallback_seconds=HOURS, safety_seconds=HOURS, sleep=_yield, streams=streams
    )
    waiting = await _watching(trigger, "run-1")
    streams.shards = [_closed("A")]  # the child is not listed yet
    streams.answers["A"] = [{"Records": [], "NextShardIterator": None}]
    described = streams.describes
    await _until(lambda: not streams.answers["A"] and streams.describes > described)
    streams.shards = [_closed("A"), _open("B")]
    streams.answers["B"] = [{"Records": [_record("run-1", "12")]}]
    await asyncio.wait_for(waiting, DEADLINE)
    await trigger.aclose()


async def test_a_run_waited_on_longer_than_the_linger_is_still_woken(aclient: AsyncStateClient) -> None:
    """A wait longer than `linger_seconds` (safety interval above it) is a watcher still there: its
    run's record ends it."""
    streams = ScriptedStreams([_open("A")], {})
    trigger = StreamTrigger(
        aclient,
        fallback_seconds=HOURS,
        safety_seconds=HOURS,
        linger_seconds=1e-9,
        sleep=_yield,
        streams=streams,
    )
    waiting = await _watching(trigger, "run-1")
    streams.answers["A"] = [{"Records": []}] * 3 + [
        {"Records": [_record("run-1", "12")]}
    ]  # rounds past the linger
    await asyncio.wait_for(waiting, DEADLINE)
    await trigger.aclose()


async def test_the_process_hub_after_a_close_is_a_live_one(
    aclient: AsyncStateClient, client: StateClient
) -> None:
    """`event_hub` after its hub was closed (a host's shutdown hook) hands out one that reads the stream
    again, not the closed one polling for ever."""
    closed = event_hub(aclient)  # still held (by the app that closed it)
    await closed.aclose()
    hub = event_hub(aclient)
    sid = client.sessions.create().session_id
    async with contextlib.aclosing(hub.watch(sid)) as stream:
        await asyncio.wait_for(anext(stream), DEADLINE)
        assert isinstance(hub.trigger, StreamTrigger)
        trigger = hub.trigger
        await _until(lambda: trigger.healthy)
    await hub.aclose()


async def test_waits_poll_while_no_shard_can_be_read(aclient: AsyncStateClient) -> None:
    """Every shard closed and no child listed yet: the trigger is not healthy (waits poll meanwhile)."""
    streams = ScriptedStreams([_open("A")], {})
    trigger = StreamTrigger(
        aclient, fallback_seconds=HOURS, safety_seconds=HOURS, sleep=_yield, streams=streams
    )
    waiting = await _watching(trigger, "run-1")
    assert trigger.healthy
    streams.shards = [_closed("A")]
    streams.answers["A"] = [{"Records": [], "NextShardIterator": None}]
    await _until(lambda: not trigger.healthy)
    waiting.cancel()
    await trigger.aclose()


def refreshed_by_fork(client: StateClient, run: str, agent: str) -> set[str]:
    """The object keys whose age a fork of `run` from `agent` restarted."""
    objects = client.layer.payloads.objects
    refreshed: set[str] = set()
    real = objects.refresh

    def recording(bucket: str, key: str, *, created_before: Any) -> bool:
        copied = real(bucket, key, created_before=created_before)
        if copied:
            refreshed.add(key)
        return copied

    objects.refresh = recording  # type: ignore[method-assign]
    client.sessions.fork(run, from_agent=agent)
    return refreshed


@pytest.fixture
def retained(aws: None) -> Iterator[tuple[StateClient, FakeClock]]:
    """A client with a retention rule and S3 offloading, its clock at the real time (as S3's stamps)."""
    clock = FakeClock(datetime.now(UTC))
    client = make_client(clock, offload_threshold=1024, retention_days=30)
    yield client, clock
    client.close()


def test_a_fork_of_a_fork_keeps_alive_the_input_its_fork_point_shares(
    retained: tuple[StateClient, FakeClock],
) -> None:
    """The fork point's input, copied as stored into the child and started there days later, still names
    the parent's object: a fork of the child restarts that object's age too."""
    client, clock = retained
    parent = offloaded_run(client)  # ui_selection's input is an S3 object written now
    clock.advance(days=5)  # young enough: the first fork refreshes nothing
    child = client.sessions.fork(parent, from_agent="ui_selection").session_id
    client.executions.complete(
        child, "ui_selection", output_data={"ok": True}
    )  # its input as the fork wrote it
    client.sessions.update(child, status="FAILED")
    clock.advance(days=3)  # the object is 8 days old, past the 6 a fork's copies need
    payloads = client.layer.payloads
    shared = {key for _, key in payloads.objects_of(raw_agents(client, child)["ui_selection"]["input_data"])}
    assert shared
    assert shared <= refreshed_by_fork(client, child, "parser")


def test_a_fork_of_a_fork_keeps_alive_the_metadata_it_shares(retained: tuple[StateClient, FakeClock]) -> None:
    """The run's metadata, copied as stored into the child, still names the parent's object: a fork of the
    child restarts that object's age too (the child's own creation time does not bound it)."""
    client, clock = retained
    parent = client.sessions.create(metadata={"notes": agent_payload(20, seed=3)}).session_id
    client.sessions.update(parent, status="FAILED")
    clock.advance(days=5)
    child = client.sessions.fork(parent, from_agent="nl_input").session_id
    client.sessions.update(child, status="FAILED")
    clock.advance(days=3)
    payloads = client.layer.payloads
    stored = client.layer.get(client.layer.tables.sessions, {"session_id": child})
    assert stored is not None
    shared = {key for _, key in payloads.objects_of(stored["metadata"])}
    assert shared
    assert shared <= refreshed_by_fork(client, child, "nl_input")


def test_tdev_runs_diff_shows_run_ids_as_text_not_markup(
    client: StateClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run id that reads as console markup (`[x]run`) is printed as it is in the diff's title."""
    monkeypatch.setenv("TDEV_ENV", client.config.env)
    monkeypatch.setenv("COLUMNS", "200")
    sid = client.sessions.create(session_id="[notastyle]run").session_id
    assert tdev(["runs", "diff", sid, sid]) == 0
    assert "[notastyle]run vs [notastyle]run" in capsys.readouterr().out


async def test_a_forks_start_does_not_use_its_recovery_budget(client: StateClient, clock: FakeClock) -> None:
    """The hand-over that starts a fork is not a recovery: with max_resumes=1 a fork that stalls after it
    is still recovered once, as any run is, not abandoned."""
    parent = completed_run(client, 4)
    child = client.sessions.fork(parent, from_agent="match_rate").session_id
    recorder = RecordingResumer()
    worker = RecoveryWorker(client, recorder, dataclasses.replace(WORKER, max_resumes=1), clock=clock)
    await worker.resume_now(child)  # its start
    await worker.wait_for_inflight()
    result = await worker.resume_now(child, force=True)  # its first recovery
    await worker.wait_for_inflight()
    assert result.outcome is Outcome.RESUMED
    assert client.sessions.get(child).status is SessionStatus.ACTIVE


@pytest.mark.parametrize(
    "make",
    [EventHub, StreamTrigger, event_hub, events_app],
    ids=["EventHub", "StreamTrigger", "event_hub", "events_app"],
)
async def test_a_sync_client_is_refused_with_a_validation_error(client: StateClient, make: Any) -> None:
    """The live events given a StateClient (not async): a ValidationError saying how to wrap it."""
    with pytest.raises(ValidationError, match=r"AsyncStateClient\(client\)"):
        make(client)


@pytest.mark.parametrize("kind", ["async", "text"])
def test_diff_runs_refuses_what_is_not_a_state_client(client: StateClient, kind: str) -> None:
    """diff_runs given an AsyncStateClient (or anything else): a ValidationError, not a TypeError."""
    sid = client.sessions.create().session_id
    given: Any = AsyncStateClient(client) if kind == "async" else "client"
    with pytest.raises(ValidationError, match=r"asyncio\.to_thread"):
        diff_runs(given, sid, sid)
