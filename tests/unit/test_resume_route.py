"""The receiving side of a resume under repeats: the same request again is accepted once, and a newer claim
on a run this process still continues is busy (503), never a second continuation of the same run."""

from __future__ import annotations

import asyncio
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
    ValidationError,
    accept_resume,
)
from tdev_state.resume import ResumeRequest

pytestmark = pytest.mark.unit


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


async def test_the_same_request_after_its_continuation_finished_the_run_is_still_accepted(
    aclient: AsyncStateClient, client: StateClient
) -> None:
    """A re-sent request whose continuation already finished the run gets that continuation, not 'nothing to
    resume' — so the worker records the resume the pipeline accepted (the demo's invariant under load)."""
    sid = failed_run(client)
    request = claimed(client, sid, "w1")

    def drive_to_the_end() -> None:
        client.executions.retry(sid, "generation")
        for agent in AGENTS[AGENTS.index("generation") :]:
            client.executions.complete(sid, agent, output_data={"out": agent})

    async def finish(run: PipelineRun, request: ResumeRequest) -> None:
        await asyncio.to_thread(drive_to_the_end)

    first = await accept_resume(aclient, request.to_json(), finish)
    await first
    assert client.sessions.get(sid).status.value == "COMPLETED"
    again = await accept_resume(aclient, request.to_json(), finish)
    assert again is first


async def test_back_pressure_refuses_a_new_run_but_never_a_repeat(
    aclient: AsyncStateClient, client: StateClient
) -> None:
    """At max_running a new run's request is busy (503) and starts nothing; the accepted run's request sent
    again still gets its continuation; once a continuation ends the new run is accepted."""
    first_sid, second_sid = failed_run(client), failed_run(client)
    first, second = claimed(client, first_sid, "w1"), claimed(client, second_sid, "w1")
    gate = Gate()
    running = await accept_resume(aclient, first.to_json(), gate, max_running=1)
    with pytest.raises(ResumeBusyError, match="its limit"):
        await accept_resume(aclient, second.to_json(), gate, max_running=1)
    assert await accept_resume(aclient, first.to_json(), gate, max_running=1) is running
    gate.release.set()
    await running
    await asyncio.sleep(0)  # the finished task leaves the running set in its done callback
    later = await accept_resume(aclient, second.to_json(), gate, max_running=1)
    await later
    assert gate.started == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "8"])
async def test_max_running_must_be_a_whole_number_of_runs(
    aclient: AsyncStateClient, client: StateClient, bad: Any
) -> None:
    """A wrong max_running is the package's ValidationError, and nothing is started."""
    sid = failed_run(client)
    gate = Gate()
    with pytest.raises(ValidationError, match="max_running"):
        await accept_resume(aclient, claimed(client, sid, "w1").to_json(), gate, max_running=bad)
    assert gate.started == 0


class VariantSink:
    """A metrics sink that keeps the A/B arm each observation was recorded under."""

    def __init__(self) -> None:
        self.variants: list[Any] = []

    def record(
        self, metric_name: str, value: float, *, agent_name: str, error: bool = False, variant: Any = None
    ) -> None:
        self.variants.append(variant)


@pytest.mark.parametrize("mode", ["defer", "raise"])
async def test_a_resumed_run_keeps_the_variant_it_was_opened_with(
    aclient: AsyncStateClient, client: StateClient, mode: str
) -> None:
    """A resume (the worker's, through accept_resume) records the run's metrics under the A/B arm it was
    opened with; before, a resumed run's metrics landed unlabelled and `--compare A B` lost that arm."""
    opened = await PipelineRun.open(aclient, f"ab-{mode}-run", variant="A", on_store_error=mode)
    sink = VariantSink()
    resumed = await PipelineRun.resume(aclient, opened.session_id, metrics=sink, on_store_error=mode)
    assert resumed.variant == "A"
    async with resumed.agent(AGENTS[0]) as step:
        step.complete({"out": 1})
    assert sink.variants
    assert set(sink.variants) == {"A"}


async def test_back_pressure_holds_for_requests_that_arrive_together(
    aclient: AsyncStateClient, client: StateClient
) -> None:
    """Two new runs' requests at once with max_running=1: one is accepted, the other is busy (503) — the
    limit is not passed by requests that were both checked before either started its continuation."""
    requests = [claimed(client, failed_run(client), "w1") for _ in range(2)]
    gate = Gate()
    outcomes = await asyncio.gather(
        *(accept_resume(aclient, r.to_json(), gate, max_running=1) for r in requests), return_exceptions=True
    )
    assert sorted(type(o).__name__ for o in outcomes) == ["ResumeBusyError", "Task"]
    gate.release.set()
    await asyncio.gather(*(o for o in outcomes if isinstance(o, asyncio.Task)))


async def test_the_same_request_while_its_continuation_is_starting_is_busy_not_stale(
    aclient: AsyncStateClient, client: StateClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same request again while the first is still starting (the worker re-sent it after a timeout) is
    busy (503: send it again), never stale — stale makes the worker drop a claim whose resume was accepted."""
    request = claimed(client, failed_run(client), "w1")
    gate, starting = Gate(), asyncio.Event()
    original = PipelineRun.resume

    async def slow_resume(*args: Any, **kwargs: Any) -> PipelineRun:
        starting.set()
        await gate.release.wait()  # the store is slow: the first request is still starting
        return await original(*args, **kwargs)

    monkeypatch.setattr(PipelineRun, "resume", slow_resume)
    first = asyncio.ensure_future(accept_resume(aclient, request.to_json(), gate))
    await starting.wait()
    with pytest.raises(ResumeBusyError):
        await accept_resume(aclient, request.to_json(), gate)
    gate.release.set()
    await (await first)
    assert gate.started == 1
