"""Usage counting (#15): what it adds to a run's writes, and what a 30-day report reads at two scales.

1. write cost: the realistic run of the cost benchmark (T-Developer's orchestrator profile: accumulated
   inputs, 1 MB generated, agents taking their real seconds on a simulated clock), then the project saved
   and downloaded once, as the pipeline ends a run. Measured without a collector and with one counting
   usage, flushed after every run (the worst case: nothing shared with other runs) and after ten runs. All
   figures are ConsumedCapacity of the same client's calls.
2. report reads: two fresh environments hold 30 days of usage, one from 100 runs, one from 100,000. The
   usage items are written by the real collector from the events the stores emit (`UsageEvent`s, made
   here — driving 100,000 full runs through LocalStack would take hours, and the report never reads the
   runs' own tables). Then `UsageReader.report` over the 30 days; read units from ConsumedCapacity.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks.state_client import AGENT_SECONDS, SimulatedClock, profile, run_with_client
from tdev_metrics import MetricsCollector
from tdev_metrics.usage_reader import UsageReader
from tdev_state import AGENTS, StateClient, StateConfig
from tdev_state.layer import DynamoLayer
from tdev_state.tables import delete_tables
from tdev_state.usage import UsageEvent


def _end_of_run(client: StateClient, sid: str) -> None:
    """What the pipeline does when a run is done: save the project, and the user downloads it once."""
    client.projects.save(user_id="bench", project_id=sid, project_name="bench", tech_stack=["React", "Node"])
    client.projects.record_download("bench", sid)


def _runs(
    config: StateConfig, n: int, *, usage: bool, flush_every: int, flush_each_agent: bool = False
) -> dict[str, float]:
    clock = SimulatedClock()
    client = StateClient(layer=DynamoLayer(config), clock=clock)
    collector = MetricsCollector(client, start=False) if usage else None
    payloads = profile("orchestrator")
    for i in range(n):
        if flush_each_agent and collector is not None:
            sid = client.sessions.create(user_id="bench", project_name="bench").session_id
            for agent in AGENTS:
                inp, out = payloads[agent]
                client.executions.start(sid, agent, input_data=inp, project_id="bench-project")
                clock.advance(AGENT_SECONDS[agent])
                client.executions.complete(sid, agent, output_data=out)
                assert collector.flush()
        else:
            sid = run_with_client(client, payloads, clock)
        _end_of_run(client, sid)
        if collector is not None and (i + 1) % flush_every == 0:
            assert collector.flush()
    if collector is not None:
        assert collector.close()
    meter = client.layer.meter.snapshot()
    return {"write_units": meter["write_units"] / n, "read_units": meter["read_units"] / n}


def bench_write_cost(config: StateConfig) -> dict[str, Any]:
    base = _runs(config, 10, usage=False, flush_every=1)
    out: dict[str, Any] = {"run_without_usage": base}
    scenarios = (
        ("flush_after_every_agent", 1, True),  # a run alone in its process, 10 s flushes, 5-120 s agents
        ("flush_every_run", 1, False),
        ("flush_every_10_runs", 10, False),
    )
    for label, every, each_agent in scenarios:
        with_usage = _runs(config, 10, usage=True, flush_every=every, flush_each_agent=each_agent)
        extra_w = with_usage["write_units"] - base["write_units"]
        out[label] = {
            **with_usage,
            "extra_write_units_per_run": round(extra_w, 2),
            "extra_read_units_per_run": round(with_usage["read_units"] - base["read_units"], 2),
            "extra_write_share": round(extra_w / base["write_units"], 4),
        }
    return out


def _synthesize(client: StateClient, runs: int, days: int, rng: random.Random) -> None:
    """The events `runs` runs over `days` days make (outcomes and users drawn as the demo mixes them)."""
    collector = MetricsCollector(client, start=False, usage=False)
    last = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    users = [f"user{u}" for u in range(50)]
    stacks = ["React", "Vue", "Svelte", "Node", "Django", "Rails", "Go", "Flutter"]
    for i in range(runs):
        start = last - timedelta(days=rng.randrange(days)) + timedelta(seconds=rng.uniform(0, 80_000))
        sid = f"s{i}"
        kind = rng.choice(("SIMPLE", "PRODUCTION"))
        user = rng.choice(users)
        at = start

        def emit(event: str, moment: datetime, sid: str = sid, **extra: Any) -> None:
            collector.usage(UsageEvent(event, moment, session_id=sid, **extra))  # type: ignore[arg-type]

        emit("run_started", at, pipeline_type=kind, user_id=user)
        collector.usage(UsageEvent("user_active", at, user_id=user))
        fate = rng.random()
        stop = len(AGENTS) if fate > 0.1 else rng.randrange(1, len(AGENTS))
        for agent in AGENTS[:stop]:
            emit("agent_started", at, agent=agent)
            seconds = rng.lognormvariate(2.5, 0.8)
            at += timedelta(seconds=seconds)
            if rng.random() < 0.05:
                emit("agent_failed", at, agent=agent)
                emit("agent_retried", at, agent=agent)
            emit("agent_completed", at, agent=agent, seconds=seconds)
        if stop == len(AGENTS):
            emit("run_completed", at, pipeline_type=kind, seconds=(at - start).total_seconds())
            collector.usage(
                UsageEvent("project_saved", at, user_id=user, tech_stack=tuple(rng.sample(stacks, 2)))
            )
        else:
            emit("run_failed", at, pipeline_type=kind)
            emit("run_abandoned", at, pipeline_type=kind)
    assert collector.close()


def bench_report_reads(base: StateConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rng = random.Random(15)
    for runs in (100, 100_000):
        config = replace(base, env=f"{base.env}r{runs}", payload_bucket=None)
        client = StateClient(config)
        client.create_tables()
        try:
            _synthesize(client, runs, 30, rng)
            reader_client = StateClient(config)
            last = datetime.now(UTC).date() - timedelta(days=1)
            report = UsageReader(reader_client).report(last - timedelta(days=29), last)
            meter = reader_client.layer.meter.snapshot()
            out[str(runs)] = {
                "report_read_units": meter["read_units"],
                "runs_started_reported": report["runs"]["started"],
                "distinct_users_reported": report["active_users"]["total_distinct"],
            }
        finally:
            delete_tables(client.layer)
    out["ratio"] = round(out["100000"]["report_read_units"] / out["100"]["report_read_units"], 3)
    return out


def run_all(config: StateConfig) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:4]
    return {
        "write_cost": bench_write_cost(config),
        "report_reads": bench_report_reads(replace(config, env=f"{config.env}{tag}")),
    }
