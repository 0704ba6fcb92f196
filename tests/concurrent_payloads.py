"""Writers of one run racing with the same large payload: refused calls take back their objects while others
commit. Shared by the unit tests (moto) and the integration/chaos test (LocalStack); see docs/reliability.md,
"Shared payload objects".

The property: an acknowledged write never refers to a deleted object, under any interleaving and any number
of writers. `refusal_races_an_acknowledged_write` forces the one interleaving that broke it (a refused
writer's cleanup reads the run, an acknowledged writer commits, the cleanup deletes); `concurrent_writers`
runs many writers at once with latency injected before every S3 and DynamoDB call.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tdev_state import AGENTS, StateClient, StateError
from tdev_state.testing import generated_project

#: How long a forced interleaving waits for the other writer before going on (never reached when it holds).
_WAIT = 15.0


def run_at_generation(client: StateClient) -> str:
    """A run whose first six agents completed and whose `generation` is RUNNING."""
    sid = client.sessions.create(user_id="u-race").session_id
    for agent in AGENTS[:6]:
        client.executions.start(sid, agent)
        client.executions.complete(sid, agent, output_data={"ok": agent})
    client.executions.start(sid, "generation")
    return sid


def waits_for(event: threading.Event) -> Callable[..., None]:
    """A botocore hook that holds the call until `event` is set (returning None: the call goes on)."""

    def hold(**_: Any) -> None:
        event.wait(_WAIT)

    return hold


@contextmanager
def hooked(client: Any, event: str, handler: Callable[..., None]) -> Iterator[None]:
    """`handler(**kwargs)` runs on botocore's `event` for this client only."""
    client.meta.events.register(event, handler)
    try:
        yield
    finally:
        client.meta.events.unregister(event, handler)


def refusal_races_an_acknowledged_write(
    base: StateClient, files: dict[str, Any], *, serialize_dynamodb: bool = False
) -> tuple[bool, Any]:
    """Writer B starts `assembly` out of order with the generated files in its input (refused); writer A
    completes `generation` with the same files (acknowledged). Forced order: B stores its chunk, then A
    stores the same content; B's transaction is refused and its cleanup reads the run; then A commits;
    then B's cleanup deletes. Returns (A acknowledged, what a fresh reader gets for A's output — the value,
    or the StateError raised)."""
    sid = run_at_generation(base)
    writer_a = writer(base, serialize_dynamodb=serialize_dynamodb)
    writer_b = writer(base, serialize_dynamodb=serialize_dynamodb)
    assert writer_a.layer.payloads.s3 is not None
    assert writer_b.layer.payloads.s3 is not None
    b_stored, b_read, a_done = threading.Event(), threading.Event(), threading.Event()
    acknowledged: list[bool] = []

    def writer_a_completes() -> None:
        try:
            writer_a.executions.complete(sid, "generation", output_data={"files": files})
            acknowledged.append(True)
        finally:
            a_done.set()

    def writer_b_starts_early() -> None:
        try:
            writer_b.executions.start(sid, "assembly", input_data={"generation": {"files": files}})
        except StateError:
            pass
        finally:
            b_stored.set()
            b_read.set()

    with (
        hooked(writer_b.layer.payloads.s3, "after-call.s3.PutObject", lambda **_: b_stored.set()),
        hooked(writer_a.layer.payloads.s3, "before-call.s3.PutObject", waits_for(b_stored)),
        hooked(writer_b.layer.dynamodb, "after-call.dynamodb.GetItem", lambda **_: b_read.set()),
        hooked(writer_a.layer.dynamodb, "before-call.dynamodb.TransactWriteItems", waits_for(b_read)),
        hooked(writer_b.layer.payloads.s3, "before-call.s3.DeleteObject", waits_for(a_done)),
    ):
        threads = [
            threading.Thread(target=writer_a_completes),
            threading.Thread(target=writer_b_starts_early),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(3 * _WAIT)
    try:
        seen: Any = StateClient(base.config).executions.get(sid, "generation").output_data
    except StateError as exc:
        seen = exc
    return bool(acknowledged), seen


class _Serialized:
    """A DynamoDB client whose calls run one at a time: moto's in-memory transactions are not atomic across
    threads (a cancelled one can leave a key-only item), DynamoDB's and DynamoDB Local's are."""

    _lock = threading.Lock()

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            with _Serialized._lock:
                return attribute(*args, **kwargs)

        return call


def writer(base: StateClient, *, serialize_dynamodb: bool) -> StateClient:
    """Another writer process: its own client, caches and connections."""
    client = StateClient(base.config, clock=base.clock)
    if serialize_dynamodb:
        client.layer.dynamodb = _Serialized(client.layer.dynamodb)  # type: ignore[assignment]
    return client


@dataclass
class RaceFigures:
    """What `concurrent_writers` saw: calls acknowledged and refused, and acknowledged payloads that did not
    read back (lost)."""

    writers: int = 0
    acknowledged: int = 0
    refused: int = 0
    lost: int = 0
    objects_taken_back: int = 0
    objects_left: int = 0


def concurrent_writers(
    base: StateClient,
    *,
    runs: int,
    writers: int,
    jitter: float,
    seed: int,
    files: dict[str, Any],
    serialize_dynamodb: bool = False,
) -> RaceFigures:
    """Per run, `writers` threads at once: every third completes `generation` (its own marker, the same
    files: one wins, the others are refused), the rest start `assembly` with the files in their input
    (refused until `generation` is completed, then one wins and the rest are duplicates). Before every S3
    and DynamoDB call, a random delay up to `jitter` seconds. Then a fresh reader checks every acknowledged
    call's payload."""
    figures = RaceFigures()
    rng = random.Random(seed)
    lock = threading.Lock()

    def delay(**_: Any) -> None:
        with lock:
            pause = rng.uniform(0, jitter)
        time.sleep(pause)  # injected latency: widens every window between a writer's calls

    for _ in range(runs):
        sid = run_at_generation(base)
        clients = [writer(base, serialize_dynamodb=serialize_dynamodb) for _ in range(writers)]
        start = threading.Barrier(writers)
        outcomes: list[tuple[str, Any, bool]] = []

        def write(
            k: int,
            client: StateClient,
            sid: str = sid,
            start: threading.Barrier = start,
            outcomes: list[tuple[str, Any, bool]] = outcomes,
        ) -> None:
            if k % 3 == 0:
                agent, value = "generation", {"files": files, "by": k}
            else:
                agent, value = "assembly", {"generation": {"files": files}}
            start.wait(_WAIT)
            try:
                if agent == "generation":
                    client.executions.complete(sid, agent, output_data=value)
                else:
                    client.executions.start(sid, agent, input_data=value)
                ok = True
            except StateError:
                ok = False
            with lock:
                outcomes.append((agent, value if ok else None, ok))
                if not ok:
                    figures.refused += 1

        hooks = []
        for client in clients:
            assert client.layer.payloads.s3 is not None
            for target, event in (
                (client.layer.payloads.s3, "before-call.s3.PutObject"),
                (client.layer.payloads.s3, "before-call.s3.DeleteObject"),
                (client.layer.dynamodb, "before-call.dynamodb.TransactWriteItems"),
                (client.layer.dynamodb, "before-call.dynamodb.Query"),
            ):
                target.meta.events.register(event, delay)
                hooks.append((target, event))
        threads = [threading.Thread(target=write, args=(k, c)) for k, c in enumerate(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10 * _WAIT)
        for target, event in hooks:
            target.meta.events.unregister(event, delay)
        figures.writers += writers
        figures.objects_taken_back += sum(c.layer.payloads.discarded_objects for c in clients)
        figures.objects_left += sum(c.layer.payloads.orphaned_objects for c in clients)
        reader = StateClient(base.config)
        for agent, value, ok in outcomes:
            if not ok:
                continue
            figures.acknowledged += 1
            try:
                stored = reader.executions.get(sid, agent)
                got = stored.output_data if agent == "generation" else stored.input_data
            except StateError:
                got = None
            if got != value:  # (another marker than the winner's would have been refused as a conflict)
                figures.lost += 1
    return figures


def large_files(seed: int = 21) -> dict[str, Any]:
    """Generated files big enough to be one content-addressed chunk (over `chunk_min_bytes`)."""
    return generated_project(150_000, seed=seed)["files"]  # type: ignore[no-any-return]
