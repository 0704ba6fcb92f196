"""A pipeline process for the usage-equals-tables test (run with `python -m tests.usage_child`): it writes
runs through `tdev_state.pipeline_run` with a metrics collector counting their usage, then, with one run
half done, writes `--ready` and waits to be SIGKILLed (its collector never flushes: a 1 h interval).

Runs: `--runs` complete ones (one with a retried agent), one whose critical agent fails (the run is
FAILED), one in flight at the kill.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from tdev_metrics import CollectorConfig, MetricsCollector
from tdev_state import AGENTS, AsyncStateClient, StateClient, StateConfig
from tdev_state.pipeline_run import PipelineRun


async def _agents(run: PipelineRun, agents: tuple[str, ...] | list[str], *, flaky: str | None = None) -> None:
    for agent in agents:
        if agent == flaky:  # one failed attempt, then a retry that succeeds
            async with run.agent(agent, input_data={"agent": agent}) as step:
                step.fail("flaky")
        async with run.agent(agent, input_data={"agent": agent}) as step:
            step.complete({"out": agent})


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--env", required=True)
    parser.add_argument("--endpoint", default=None)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--tag", required=True)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--ready", type=Path, required=True)
    args = parser.parse_args()
    config = StateConfig(env=args.env, endpoint_url=args.endpoint, region=args.region, payload_bucket=None)
    client = AsyncStateClient(StateClient(config))
    MetricsCollector(client.sync, CollectorConfig(flush_interval=3600.0))  # counts; never flushes here
    options = {"on_store_error": "raise"}
    for i in range(args.runs):
        run = await PipelineRun.open(client, f"{args.tag}-ok{i}", pipeline_type="SIMPLE", **options)
        await _agents(run, AGENTS, flaky="parser" if i == 0 else None)
        await run.finish(success=True)
    failed = await PipelineRun.open(client, f"{args.tag}-failed", pipeline_type="PRODUCTION", **options)
    await _agents(failed, AGENTS[:6])
    async with failed.agent("generation", input_data={}) as step:
        step.fail("the model is down")  # critical: the run is FAILED
    live = await PipelineRun.open(client, f"{args.tag}-live", pipeline_type="SIMPLE", **options)
    await _agents(live, AGENTS[:4])
    args.ready.write_text("ready")
    await asyncio.Event().wait()  # SIGKILL comes here


if __name__ == "__main__":
    asyncio.run(main())
