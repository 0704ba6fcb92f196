"""The receiving side of a resume under repeats: the same request again is accepted once, and a newer claim
on a run this process still continues is busy (503), never a second continuation of the same run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from tdev_state import (
    AGENTS,
    AsyncStateClient,
    PipelineRun,
    ResumeBusyError,
    StaleResumeError,
    StateClient,
    accept_resume,
    deferred_writes,
)
from tdev_state.resume import ResumeRequest

pytestmark = pytest.mark.unit


@pytest.fixture
async def aclient(client: StateClient) -> AsyncIterator[AsyncStateClient]:
    async with AsyncStateClient(client) as a:
        yield a
        deferred_writes(a).close()


def failed_run(client: StateClient) -> str:
    """A run whose generation failed for good after six agents: FAILED, open for recovery."""
    sid = client.sessions.create().session_id
    for agent in AGENTS[:6]:
        client.executions.complete(sid, agent, output_data={"out": agent})
    client.executions.fail(sid, "generation", error_message="model overloaded")
    return sid


def claimed(client: StateClient, sid: str, worker: str) -> ResumeRequest:
    claim = client.claims.claim(client.sessions.candidate(sid), worker_id=worker, lease=timedelta(minutes=5))
    assert claim is not None
    return ResumeRequest(
        session_id=sid, next_agent="generation", fencing_token=claim.fencing_token, attempt=1, reason="FAILED"
    )


class Gate:
    """A continuation that counts its starts and runs until released (a pipeline still driving the run)."""

    def __init__(self) -> None:
        self.started = 0
        self.release = asyncio.Event()

    async def __call__(self, run: PipelineRun, request: ResumeRequest) -> Any:
        self.started += 1
        await self.release.wait()


async def test_the_same_request_again_is_accepted_once(
    aclient: AsyncStateClient, client: StateClient
) -> None:
    """A re-sent request (its answer was lost) returns the continuation it started; nothing runs twice."""
    sid = failed_run(client)
    request = claimed(client, sid, "w1")
    gate = Gate()
    first = await accept_resume(aclient, request.to_json(), gate)
    again = await accept_resume(aclient, request.to_json(), gate)
    await asyncio.sleep(0)
    assert again is first
    gate.release.set()
    await first
    assert gate.started == 1


async def test_a_newer_claim_on_a_run_still_continued_here_is_busy(
    aclient: AsyncStateClient, client: StateClient
) -> None:
    """While this process still drives the run, a newer token gets ResumeBusyError (503), starting nothing;
    once the continuation ended the newer token is accepted, and the older one is then stale."""
    sid = failed_run(client)
    old = claimed(client, sid, "w1")
    gate = Gate()
    running = await accept_resume(aclient, old.to_json(), gate)
    # A later claim's request (a worker judged the slow run stalled): a higher token than the one running.
    newer = ResumeRequest(**{**old.__dict__, "fencing_token": old.fencing_token + 1})
    with pytest.raises(ResumeBusyError):
        await accept_resume(aclient, newer.to_json(), gate)
    gate.release.set()
    await running
    second = await accept_resume(aclient, newer.to_json(), gate)
    with pytest.raises(StaleResumeError):
        await accept_resume(aclient, old.to_json(), gate)
    await second
    assert gate.started == 2
