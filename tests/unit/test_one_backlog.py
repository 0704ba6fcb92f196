"""One backlog: the worker's `tdev_recovery_backlog` gauge, the console's backlog page and `tdev backlog
list` count the same runs (`sessions.backlog` under the worker's RecoveryPolicy)."""

from __future__ import annotations

from datetime import timedelta

from tdev_console import _views
from tdev_recovery import RecoveryWorker, ResumeRequest, WorkerConfig
from tdev_recovery.backlog import list_backlog
from tdev_state import AGENTS, StateClient
from tdev_state.testing import FakeClock


async def test_the_worker_gauge_the_console_and_the_cli_count_one_backlog(
    client: StateClient, clock: FakeClock
) -> None:
    """A stalled run and a FAILED run younger than the retry delay: all three say 2 (before, the gauge
    said 1 — it counted only what this sweep could claim — while the console listed 2)."""
    stalled = client.sessions.create().session_id
    client.executions.start(stalled, AGENTS[0])
    clock.advance(minutes=5)  # past the 30 s threshold: stalled
    young = client.sessions.create().session_id
    for agent in AGENTS[:6]:
        client.executions.complete(young, agent, output_data={})
    client.executions.fail(young, "generation", error_message="down")  # critical: FAILED now
    resumed: list[str] = []

    async def resumer(request: ResumeRequest) -> None:
        resumed.append(request.session_id)

    config = WorkerConfig(
        worker_id="gauge", stall_threshold=timedelta(seconds=30), retry_delay=timedelta(hours=1),
        confirm=timedelta(0),
    )  # fmt: skip
    worker = RecoveryWorker(client, resumer, config, clock=clock)
    now = clock()
    cli = list_backlog(client, worker.policy, now=now)
    console = _views.backlog(client, now=now, policy=worker.policy, limit=100)
    await worker.sweep()
    await worker.wait_for_inflight()
    gauge = worker.metrics.registry.get_sample_value("tdev_recovery_backlog")
    assert (gauge, len(cli), len(console)) == (2, 2, 2)
    assert {r.session_id for r in cli} == {r.run.session_id for r in console} == {stalled, young}
    assert resumed == [stalled]  # the young FAILED run waits for the retry delay: counted, not claimed
