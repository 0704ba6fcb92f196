"""The sessions table's DynamoDB stream as the event hub's trigger: a watched run is read when it moved.

    hub = EventHub(client, trigger=StreamTrigger(client))    # what `event_hub(client)` builds

Every versioned transition bumps its session, so the sessions stream (KEYS_ONLY, `schema.STREAM_VIEW_TYPE`)
names each run that moved. One reader per trigger (one per hub, so one per process and event loop) follows
every shard of the stream — `DescribeStream` (paged), an iterator per open shard (`LATEST` for the shards
open when it starts, `TRIM_HORIZON` for the children of a split found later), a `GetRecords` loop — and marks
the watched runs it sees; unwatched runs cost nothing. The hub still derives the events from the stored
items (`sessions.events`), so a record lost, late or reordered costs a read, never a gap, and a run is read
at least every `safety_seconds` even if its records never come.

Falls back on its own: a table without a stream, or a process whose IAM role may not read it (the read-only
console's), polls every `fallback_seconds` and asks again every `recheck_seconds`; a failing stream read
(throttling, an outage) polls meanwhile — counted, logged, and retried with backoff (up to `max_backoff`)
until the stream answers again. A closed shard is followed to its children (when none is listed yet, the
stream is described again after a growing pause, polling meanwhile); an expired iterator is renewed after
the last record read; a trimmed one restarts at the shard's oldest record. Each of those may have skipped
records, so every watched run is then read once. A record without a session key is counted and skipped.

Limits: DynamoDB Streams serves about five GetRecords per second per shard, shared by all its readers, and
AWS advises at most two readers per shard: at the default `idle_seconds` (0.25 s, four reads per second per
shard while the stream is quiet) one process per shard fits. More processes need a longer `idle_seconds` or
the fan-out described in docs/data-model.md. GetRecords is not billed in table read units (stream read
requests are their own meter: `stream_requests`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from tdev_state.client import AsyncStateClient
from tdev_state.exceptions import AccessDeniedError, StateError, ValidationError
from tdev_state.log import get_logger

log = get_logger(__name__)

__all__ = ["StreamTrigger"]

#: Answers of GetRecords that cost the shard's position, not the stream: renew the iterator and go on.
_ITERATOR_LOST = ("ExpiredIteratorException", "TrimmedDataAccessException")


def checked_async_client(client: object, what: str) -> AsyncStateClient:
    """`client` if it is an AsyncStateClient; else a ValidationError saying how to make one (a StateClient
    is the usual mistake: the live events run on the event loop)."""
    if not isinstance(client, AsyncStateClient):
        raise ValidationError(
            f"{what} needs an AsyncStateClient, got {type(client).__name__}; wrap a StateClient as "
            "AsyncStateClient(client)"
        )
    return client


class _NoStream(StateError):
    """The sessions table has no stream (or it is disabled): this process polls."""


@dataclass
class _Shard:
    shard_id: str
    iterator: str | None = None
    last_sequence: str | None = None


class StreamTrigger:
    """A `PollTrigger` woken by the sessions table's stream (see the module's docstring).

    `fallback_seconds`: the poll interval while the stream cannot be read (1 s: polling's rate).
    `safety_seconds`: a watched run is read at least this often even when the stream says nothing.
    `idle_seconds`: the pause between two rounds of GetRecords that brought nothing.
    `recheck_seconds`: how often a table without a stream is asked again (infra may enable it later).
    """

    def __init__(
        self,
        client: AsyncStateClient,
        *,
        fallback_seconds: float = 1.0,
        safety_seconds: float = 30.0,
        idle_seconds: float = 0.25,
        recheck_seconds: float = 300.0,
        first_backoff: float = 1.0,
        max_backoff: float = 30.0,
        linger_seconds: float = 60.0,
        streams: Any = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        for name, value in (
            ("fallback_seconds", fallback_seconds),
            ("safety_seconds", safety_seconds),
            ("idle_seconds", idle_seconds),
            ("recheck_seconds", recheck_seconds),
            ("first_backoff", first_backoff),
            ("linger_seconds", linger_seconds),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValidationError(f"{name} must be a number of seconds > 0, got {value!r}")
        if not first_backoff <= max_backoff:
            raise ValidationError("the backoffs must satisfy 0 < first_backoff <= max_backoff")
        self.client = checked_async_client(client, "StreamTrigger")
        self.fallback_seconds = fallback_seconds
        self.safety_seconds = safety_seconds
        self.idle_seconds = idle_seconds
        self.recheck_seconds = recheck_seconds
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.linger_seconds = linger_seconds
        self.sleep = sleep
        self._streams = streams  # the dynamodbstreams client: injected (tests) or made at first use
        #: True while the stream is being read: waits then rest on it (with `safety_seconds` as a floor).
        self.healthy = False
        self.stream_requests = 0  # DescribeStream, GetShardIterator, GetRecords: a meter apart from units
        self.records = 0
        self.bad_records = 0
        self.failed_reads = 0
        self.lost_positions = 0  # expired or trimmed iterators: every watched run read once more
        self._changed: dict[str, asyncio.Event] = {}
        self._last_wait: dict[str, float] = {}
        self._waiting: dict[str, int] = {}  # runs in a wait now (never idle, whatever `linger_seconds`)
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

    # --- the hub's side ---------------------------------------------------------------------------------

    async def wait(self, run_id: str) -> None:
        """Until the stream names `run_id` (at once if it did since the last wait), or the fallback or
        safety interval passes."""
        self._ensure_reader()
        self._last_wait[run_id] = time.monotonic()
        changed = self._changed.get(run_id)
        if changed is None:
            changed = self._changed[run_id] = asyncio.Event()
        timeout = self.safety_seconds if self.healthy else self.fallback_seconds
        self._waiting[run_id] = self._waiting.get(run_id, 0) + 1  # watched while waited on, however long
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout)
        finally:
            left = self._waiting.pop(run_id, 1) - 1
            if left:
                self._waiting[run_id] = left
            if run_id in self._last_wait:  # the linger counts from the end of the last wait
                self._last_wait[run_id] = time.monotonic()
        changed.clear()

    def fire(self, run_id: str) -> None:
        """Mark `run_id` moved (the reader does; a host that knows may too). Unwatched runs are ignored."""
        changed = self._changed.get(run_id)
        if changed is not None:
            changed.set()

    def forget(self, run_id: str) -> None:
        """`run_id` has no poller any more (the hub says so): its records are ignored from now on."""
        self._changed.pop(run_id, None)
        self._last_wait.pop(run_id, None)

    def fire_all(self) -> None:
        """Every watched run is read once more (records may have been skipped)."""
        for changed in self._changed.values():
            changed.set()

    async def aclose(self) -> None:
        """Stop the reader for good (idempotent; the hub's `aclose` calls it): later waits are plain
        `fallback_seconds` polls."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)  # a request in flight ends on its own; its answer is dropped
        self.healthy = False

    def _ensure_reader(self) -> None:
        if self._closed or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.get_running_loop().create_task(self._read())

    def _forget_idle_runs(self) -> None:
        """Runs no poller waited on for `linger_seconds` are no longer watched (their pollers ended)."""
        cutoff = time.monotonic() - self.linger_seconds
        for run_id in [r for r, at in self._last_wait.items() if at < cutoff and r not in self._waiting]:
            self._last_wait.pop(run_id, None)
            self._changed.pop(run_id, None)

    # --- the reader -------------------------------------------------------------------------------------

    async def _read(self) -> None:
        """Follow the stream while anyone watches; survive anything one round throws."""
        backoff = 0.0
        shards: dict[str, _Shard] | None = None
        arn: str | None = None
        while self._changed or self._last_wait:
            try:
                if arn is None:
                    arn = await self._call(self._stream_arn)
                if shards is None:
                    shards = await self._call(self._start_shards, arn)
                    self.healthy = True
                    self.fire_all()  # a write between a run's last read and LATEST is not in the stream
                    log.info("events.stream_reading", stream=arn, shards=len(shards))
                got = await self._round(arn, shards)
                self._forget_idle_runs()
                if not any(s.iterator for s in shards.values()):
                    # Every shard read to its end and no child listed yet: nothing is read, so waits poll
                    # meanwhile, and the stream is described again after a growing pause.
                    self.healthy = False
                    backoff = min(max(backoff * 2, self.first_backoff), self.max_backoff)
                    await self.sleep(backoff)
                    continue
                self.healthy, backoff = True, 0.0
                if not got:
                    await self.sleep(self.idle_seconds)
            except (_NoStream, AccessDeniedError) as exc:  # no stream, or not ours to read: poll, ask rarely
                self.healthy, arn, shards = False, None, None
                log.info("events.stream_absent", reason=str(exc)[:200], polling_every=self.fallback_seconds)
                await self.sleep(self.recheck_seconds)
            except Exception as exc:  # the stream failed: poll meanwhile, count, log, back off, try again
                self.healthy, arn, shards = False, None, None
                self.failed_reads += 1
                backoff = min(max(backoff * 2, self.first_backoff), self.max_backoff)
                log.warning("events.stream_failed", error=repr(exc)[:300], retry_in=backoff)
                self.fire_all()
                await self.sleep(backoff * random.uniform(0.5, 1.0))
        self.healthy = False

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one blocking stream request on the reader's own thread. Not `asyncio.to_thread`: the loop's
        default pool is shared with the host (a FastAPI app's sync endpoints, a pipeline's own threads), and
        a reader queued behind them delivers nothing — the bench's ten writer threads held it for seconds."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tdev-stream")
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    def _client(self) -> Any:
        if self._streams is None:
            self._streams = self.client.sync.layer.extra_client("dynamodbstreams")
        return self._streams

    def _request(self, op: str, **params: Any) -> Any:
        """One stream request through the store's error boundary (a StateError on failure)."""
        layer = self.client.sync.layer
        self.stream_requests += 1
        client = self._client()
        method = getattr(client, _snake(op))
        return layer.guarded(op, layer.tables.sessions, lambda: method(**params))

    def _stream_arn(self) -> str:
        layer = self.client.sync.layer
        table = layer.guarded(
            "DescribeTable",
            layer.tables.sessions,
            lambda: layer.dynamodb.describe_table(TableName=layer.tables.sessions),
        )["Table"]
        spec: dict[str, Any] = dict(table.get("StreamSpecification") or {})
        arn = table.get("LatestStreamArn")
        if not spec.get("StreamEnabled") or not arn:
            raise _NoStream(f"table {layer.tables.sessions} has no stream enabled")
        return str(arn)

    def _describe(self, arn: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        start: str | None = None
        while True:
            params: dict[str, Any] = {"StreamArn": arn}
            if start:
                params["ExclusiveStartShardId"] = start
            description = self._request("DescribeStream", **params)["StreamDescription"]
            if description.get("StreamStatus") in ("DISABLED", "DISABLING"):
                raise _NoStream(f"the stream {arn} is {description['StreamStatus']}")
            found.extend(description.get("Shards", []))
            start = description.get("LastEvaluatedShardId")
            if not start:
                return found

    def _start_shards(self, arn: str) -> dict[str, _Shard]:
        """Iterators at LATEST for every shard open now (records before this moment are in the items)."""
        shards: dict[str, _Shard] = {}
        for shard in self._describe(arn):
            if "EndingSequenceNumber" in shard.get("SequenceNumberRange", {}):
                shards[shard["ShardId"]] = _Shard(shard["ShardId"])  # closed: known, nothing to read
                continue
            state = _Shard(shard["ShardId"])
            state.iterator = self._iterator(arn, state, "LATEST")
            shards[state.shard_id] = state
        return shards

    def _iterator(self, arn: str, shard: _Shard, kind: str) -> str | None:
        params: dict[str, Any] = {"StreamArn": arn, "ShardId": shard.shard_id, "ShardIteratorType": kind}
        if kind == "AFTER_SEQUENCE_NUMBER":
            params["SequenceNumber"] = shard.last_sequence
        iterator = self._request("GetShardIterator", **params).get("ShardIterator")
        return str(iterator) if iterator else None

    async def _round(self, arn: str, shards: dict[str, _Shard]) -> bool:
        """One GetRecords per open shard; True if any brought records. A closed shard sends us to its
        children (found by DescribeStream: they begin where it ended, so from their oldest record)."""
        got = False
        split = False
        for shard in [s for s in shards.values() if s.iterator]:
            records, lost = await self._call(self._records, arn, shard)
            if lost:
                self.fire_all()
            got = got or bool(records)
            for record in records:
                self._take(record)
            split = split or shard.iterator is None
        # Every shard read to its end: their children may be listed only after a while, so look again each
        # round until one shows (else the reader would idle for ever on nothing, still "healthy").
        if split or not any(s.iterator for s in shards.values()):
            for found in await self._call(self._describe, arn):
                if found["ShardId"] not in shards:
                    child = _Shard(found["ShardId"])
                    child.iterator = await self._call(self._iterator, arn, child, "TRIM_HORIZON")
                    shards[child.shard_id] = child
        return got

    def _records(self, arn: str, shard: _Shard) -> tuple[list[dict[str, Any]], bool]:
        """The shard's next records, and whether its position was lost (then renewed, records maybe
        skipped: the caller reads every watched run once)."""
        answer = self._get_records(str(shard.iterator))
        if isinstance(answer, str):
            # The position is gone (iterators live 15 minutes; records 24 hours): start again after the
            # last record read, or at the oldest one left.
            self.lost_positions += 1
            log.warning("events.stream_position_lost", shard=shard.shard_id, code=answer)
            after = shard.last_sequence and answer == "ExpiredIteratorException"
            shard.iterator = self._iterator(arn, shard, "AFTER_SEQUENCE_NUMBER" if after else "TRIM_HORIZON")
            return [], True
        records: list[dict[str, Any]] = answer.get("Records", [])
        shard.iterator = answer.get("NextShardIterator")  # None: the shard is closed and read to its end
        if records:
            shard.last_sequence = records[-1].get("dynamodb", {}).get("SequenceNumber", shard.last_sequence)
        return records, False

    def _get_records(self, iterator: str) -> Any:
        """GetRecords' answer, or the error code of an iterator that lost its place; any other fault is
        the store's typed error."""
        layer = self.client.sync.layer
        method = self._client().get_records
        self.stream_requests += 1

        def call() -> Any:
            try:
                return method(ShardIterator=iterator, Limit=1000)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code in _ITERATOR_LOST:
                    return code
                raise

        return layer.guarded("GetRecords", layer.tables.sessions, call)

    def _take(self, record: dict[str, Any]) -> None:
        """Mark the run one record names; a record without a session key is counted, logged, skipped."""
        self.records += 1
        try:
            run_id = record["dynamodb"]["Keys"]["session_id"]["S"]
        except (KeyError, TypeError) as exc:
            run_id = exc
        if not isinstance(run_id, str):
            self.bad_records += 1
            log.warning("events.stream_bad_record", error=repr(run_id)[:200], record=repr(record)[:300])
            return
        if run_id.startswith("ref#"):
            return  # a ref item (written with its run's creation): the run's own record says it moved
        self.fire(run_id)


def _snake(op: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in op).lstrip("_")
