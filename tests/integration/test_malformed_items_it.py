"""Chaos scenario "malformed items", on a real endpoint for `make chaos`: session and agent items edited by
hand among healthy runs. The worker keeps sweeping and resumes every healthy run once; the unreadable items
are skipped and counted, listings show the others, and a run whose agent item is unreadable ends with a
recorded reason instead of being resumed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tdev_recovery import RecoveryWorker, ResumeRequest, RetryPolicy, WorkerConfig
from tdev_state import AGENTS, SessionStatus, StateClient
from tdev_state.tables import delete_tables

from ..chaos_report import record

pytestmark = pytest.mark.integration

#: Edits an operator (or another tool) can make to a session item in the AWS console.
EDITS: list[tuple[str, dict[str, str], dict[str, Any] | None]] = [
    ("SET #a = :v", {"#a": "status"}, {":v": "Failed"}),
    ("REMOVE #a", {"#a": "version"}, None),
    ("SET #a = :v", {"#a": "last_updated"}, {":v": "2026-12-06T01:00:00Z"}),
    ("SET #a = :v", {"#a": "progress"}, {":v": "three"}),
    ("SET #a = :v", {"#a": "failed_agents"}, {":v": ["nobody"]}),
]
HEALTHY = 12


@pytest.fixture
def own_tables(client: StateClient) -> Iterator[StateClient]:
    """Tables of this test alone: the worker must meet only this scenario's runs."""
    isolated = StateClient(replace(client.config, env=f"{client.config.env}m"))
    isolated.create_tables(streams=False)
    try:
        yield isolated
    finally:
        delete_tables(isolated.layer)


def failed_run(client: StateClient, user: str) -> str:
    sid = client.sessions.create(user_id=user, project_name="chaos").session_id
    for agent in AGENTS[:2]:
        client.executions.complete(sid, agent, output_data={"out": agent})
    client.sessions.update(sid, status="FAILED")
    return sid


async def test_malformed_items_never_stop_recovery_or_listings(own_tables: StateClient) -> None:
    """Five hand-edited sessions and one hand-edited agent item among twelve healthy FAILED runs."""
    client = own_tables
    healthy = [failed_run(client, "chaos") for _ in range(HEALTHY)]
    bad_sessions = [failed_run(client, "chaos") for _ in EDITS]
    for sid, (update, names, values) in zip(bad_sessions, EDITS, strict=True):
        client.layer.update(
            client.config.tables.sessions, {"session_id": sid}, update=update, names=names, values=values
        )
    bad_agent = failed_run(client, "chaos")
    client.layer.update(
        client.config.tables.executions,
        {"execution_id": bad_agent, "agent_name": "01#nl_input"},
        update="SET #s = :v",
        names={"#s": "status"},
        values={":v": "done"},
    )
    resumed: list[str] = []

    async def resumer(request: ResumeRequest) -> None:
        """The pipeline takes the run back (ACTIVE, alive) — so a second resume would be a real one."""
        resumed.append(request.session_id)
        await asyncio.to_thread(client.sessions.update, request.session_id, status="ACTIVE")

    config = WorkerConfig(
        poll_interval=0.2,
        retry_delay=timedelta(seconds=1),
        stall_threshold=timedelta(seconds=1),  # one threshold for every run: the FAILED runs are due at once
        confirm=timedelta(seconds=0.5),  # still confirmed unchanged on the worker's own clock first
        lease=timedelta(seconds=1),
        retry=RetryPolicy(initial_interval=timedelta(milliseconds=10), maximum_attempts=3),
        batch_size=1000,
    )
    started = time.monotonic()
    worker = RecoveryWorker(StateClient(client.config), resumer, config)
    async with worker:
        while time.monotonic() - started < 60:
            done = set(resumed) >= set(healthy)
            final = client.sessions.get(bad_agent).status is SessionStatus.ABANDONED
            if done and final and worker.metrics.sweeps._value.get() >= 3:
                break
            await asyncio.sleep(0.1)  # polling the worker's effect with a deadline
    sweeps = int(worker.metrics.sweeps._value.get())
    skipped = int(worker.metrics.malformed_items._value.get())
    page = client.sessions.list_for_user("chaos", limit=100)
    by_day = client.sessions.list_by_day(datetime.now(UTC).date(), limit=100)
    unreadable = client.sessions.get(bad_agent)
    assert sorted(resumed) == sorted(healthy)  # each healthy run once, no malformed one
    assert worker.metrics.sweep_errors._value.get() == 0
    assert skipped >= len(EDITS)
    assert unreadable.status is SessionStatus.ABANDONED
    assert "record unreadable" in (unreadable.error_message or "")
    assert {s.session_id for s in page.items} == {*healthy, bad_agent}
    assert len(page.skipped) == len(EDITS)
    assert len(by_day.skipped) == len(EDITS)
    record(
        "malformed items: 5 hand-edited sessions + 1 hand-edited agent item among 12 healthy FAILED runs",
        lost=len(set(healthy) - set(resumed)),
        resumed_twice=len(resumed) - len(set(resumed)),
        sweeps=sweeps,
        sweep_errors=int(worker.metrics.sweep_errors._value.get()),
        malformed_skips_counted=skipped,
        listed=len(page.items),
        listing_skipped=len(page.skipped),
        unreadable_agent_run="ABANDONED with its reason",
        seconds=round(time.monotonic() - started, 1),
    )
