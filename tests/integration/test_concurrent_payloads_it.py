"""Concurrent refused writes on a real endpoint (issue 23.2), for `make chaos`: writers of one run race with
the same large payload while refused ones take back what they stored; no acknowledged payload may ever refer
to a deleted object (docs/reliability.md, "Shared payload objects")."""

from __future__ import annotations

import time

from tdev_state import StateClient

from ..chaos_report import record
from ..concurrent_payloads import concurrent_writers, large_files, refusal_races_an_acknowledged_write


def test_a_refused_cleanup_never_deletes_what_an_acknowledged_write_refers_to(client: StateClient) -> None:
    """The forced interleaving: B stores the chunk, A stores the same content, B is refused and reads the
    run, A commits, B deletes. A's acknowledged output reads back."""
    files = large_files()
    acknowledged, seen = refusal_races_an_acknowledged_write(client, files)
    assert acknowledged
    assert seen == {"files": files}


def test_concurrent_refused_writes_lose_no_acknowledged_payload(client: StateClient) -> None:
    """Eight runs, eight writers each, latency injected before every S3 and DynamoDB call: every acknowledged
    payload reads back; every refused call took back its own objects."""
    started = time.monotonic()
    figures = concurrent_writers(client, runs=8, writers=8, jitter=0.01, seed=23, files=large_files(seed=5))
    record(
        "concurrent refused writes (8 runs x 8 writers, the same 150 KB of files, 0-10 ms injected before "
        "every S3/DynamoDB call)",
        lost=figures.lost,
        writers=figures.writers,
        acknowledged=figures.acknowledged,
        refused=figures.refused,
        objects_taken_back=figures.objects_taken_back,
        objects_left_to_lifecycle=figures.objects_left,
        seconds=round(time.monotonic() - started, 1),
    )
    assert figures.refused >= 8
    assert figures.lost == 0
    assert figures.objects_left == 0
