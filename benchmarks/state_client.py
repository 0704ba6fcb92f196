"""State-client benchmarks (issue #3), run against the endpoint in AWS_ENDPOINT_URL (LocalStack by default).

1. overhead: the client's start/complete of a 9-agent run versus hand-written boto3 doing the same writes
   (the same TransactWriteItems with the same bytes), interleaved A/B rounds, ratio of medians;
2. cost: write units per run from ConsumedCapacity — the client versus the plan's naive way (a full put of
   the item with its raw JSON per update) — for the issue's payload profile and two comparison profiles;
3. concurrency: 50 runs through the async API at once versus one after another, and event-loop lag;
4. encryption: plain versus sealed payloads;
5. large output (issue #24): seconds per 1 MB run, and the payload codec's cost per MB without I/O.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
import uuid
import zlib
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import boto3

from tdev_state import AGENTS, PIPELINE, AsyncStateClient, StateClient, StateConfig
from tdev_state.layer import DynamoLayer
from tdev_state.models import epoch, utcnow
from tdev_state.payloads import PayloadContext
from tdev_state.storage import to_dynamo
from tdev_state.testing import agent_payload, generated_project

# On-demand, us-east-1 (shared/ANCHORS.md): $0.625 per million write request units, $0.125 per million
# read units; S3 standard: $0.005 per 1,000 PUT and $0.0004 per 1,000 GET.
WRU_USD, RRU_USD, S3_PUT_USD, S3_GET_USD = 0.625e-6, 0.125e-6, 0.005e-3, 0.0004e-3


def profile(name: str) -> dict[str, tuple[Any, Any]]:
    """(input, output) per agent. "issue": 1 KB inputs, 3 KB outputs, 1 MB of generated code.
    "orchestrator": T-Developer's real inputs — each agent receives the request plus every earlier output
    (so assembly and download receive the 1 MB of generated files again)."""
    big = {"issue": 1_000_000, "naive-fits": 300_000, "small": 0, "orchestrator": 1_000_000}[name]
    payloads = {}
    accumulated: dict[str, Any] = {"request": agent_payload(1, seed=99)}
    for i, agent in enumerate(AGENTS):
        output: Any = agent_payload(3, seed=i)
        if agent == "generation" and big:
            output = generated_project(big, seed=i)
        if name == "orchestrator":
            payloads[agent] = (dict(accumulated), output)
            accumulated[agent] = output
        else:
            payloads[agent] = (agent_payload(1, seed=100 + i), output)
    return payloads


#: Seconds each agent runs (start -> complete) in the cost benchmark's simulated clock: LLM-bound agents
#: take tens of seconds, which decides how often the recovery index's liveness stamp is refreshed.
AGENT_SECONDS = {a.name: a.typical_seconds for a in PIPELINE}


class SimulatedClock:
    """Wall time of a realistic run, advanced by the benchmark instead of by sleeping."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def run_with_client(
    client: StateClient, payloads: dict[str, tuple[Any, Any]], clock: SimulatedClock | None = None
) -> str:
    sid = client.sessions.create(user_id="bench", project_name="bench").session_id
    for agent in AGENTS:
        inp, out = payloads[agent]
        client.executions.start(sid, agent, input_data=inp, project_id="bench-project")
        if clock:
            clock.advance(AGENT_SECONDS[agent])
        client.executions.complete(sid, agent, output_data=out)
    return sid


# --- 1. overhead against hand-written boto3 ---------------------------------------------------------------


def _stored(value: Any) -> dict[str, Any]:
    raw = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    if len(raw) >= 1024:
        packed = zlib.compress(raw, 6)
        if len(packed) + 1 <= 0.9 * len(raw):
            return {"B": b"\x01" + packed}
    return {"S": raw.decode()}


def run_raw(ddb: Any, tables: Any, payloads: dict[str, tuple[Any, Any]]) -> None:
    """The same items, conditions and transactions, written with boto3 directly (no validation, no models,
    no error classification) — what the client's work is measured against."""
    sid = str(uuid.uuid4())
    now = str(epoch(utcnow()))
    ddb.put_item(
        TableName=tables.sessions,
        Item={
            "session_id": {"S": sid},
            "user_id": {"S": "bench"},
            "project_name": {"S": "bench"},
            "pipeline_type": {"S": "SIMPLE"},
            "status": {"S": "ACTIVE"},
            "current_agent": {"S": "nl_input"},
            "progress": {"N": "0"},
            "created_at": {"N": now},
            "last_updated": {"N": now},
            "version": {"N": "1"},
            "resume_count": {"N": "0"},
            "metadata": {"S": "null"},
            "recovery_shard": {"S": "ACTIVE#0"},
            "last_request": {"S": str(uuid.uuid4())},
        },
        ConditionExpression="attribute_not_exists(session_id)",
    )
    for step, agent in enumerate(AGENTS, start=1):
        inp, out = payloads[agent]
        key = {"execution_id": {"S": sid}, "agent_name": {"S": f"{step:02d}#{agent}"}}
        session_key = {"session_id": {"S": sid}}
        ts = {"N": str(epoch(utcnow()))}
        ddb.transact_write_items(
            ClientRequestToken=str(uuid.uuid4()),
            TransactItems=[
                {
                    "Update": {
                        "TableName": tables.executions,
                        "Key": key,
                        "UpdateExpression": "SET #s = :r, fingerprint = :fp, #agent = :a, #step = :step, "
                        "start_time = :now, retry_count = if_not_exists(retry_count, :zero), "
                        "input_data = :i, input_bytes = :n, project_id = :pid REMOVE end_time, error_message",
                        "ConditionExpression": "attribute_not_exists(execution_id)",
                        "ExpressionAttributeNames": {"#s": "status", "#agent": "agent", "#step": "step"},
                        "ExpressionAttributeValues": {
                            ":r": {"S": "RUNNING"},
                            ":fp": {"S": uuid.uuid4().hex},
                            ":a": {"S": agent},
                            ":step": {"N": str(step)},
                            ":now": ts,
                            ":zero": {"N": "0"},
                            ":i": _stored(inp),
                            ":n": {"N": "1000"},
                            ":pid": {"S": "bench-project"},
                        },
                    }
                },
                {
                    "Update": {
                        "TableName": tables.sessions,
                        "Key": session_key,
                        "UpdateExpression": "SET last_updated = :now, version = version + :one, "
                        "current_agent = :a",
                        "ConditionExpression": "attribute_exists(session_id) AND #s = :active "
                        "AND progress = :prev",
                        "ExpressionAttributeNames": {"#s": "status"},
                        "ExpressionAttributeValues": {
                            ":now": ts,
                            ":one": {"N": "1"},
                            ":a": {"S": agent},
                            ":active": {"S": "ACTIVE"},
                            ":prev": {"N": str(step - 1)},
                        },
                    }
                },
            ],
        )
        last = step == len(AGENTS)
        ddb.transact_write_items(
            ClientRequestToken=str(uuid.uuid4()),
            TransactItems=[
                {
                    "Update": {
                        "TableName": tables.executions,
                        "Key": key,
                        "UpdateExpression": "SET #s = :d, end_time = :now, output_data = :o, "
                        "output_bytes = :n, fingerprint = :fp REMOVE error_message",
                        "ConditionExpression": "#s = :r",
                        "ExpressionAttributeNames": {"#s": "status"},
                        "ExpressionAttributeValues": {
                            ":d": {"S": "COMPLETED"},
                            ":r": {"S": "RUNNING"},
                            ":now": ts,
                            ":o": _stored(out),
                            ":n": {"N": "3000"},
                            ":fp": {"S": uuid.uuid4().hex},
                        },
                    }
                },
                {
                    "Update": {
                        "TableName": tables.sessions,
                        "Key": session_key,
                        "UpdateExpression": "SET last_updated = :now, version = version + :one, "
                        "progress = :step, current_agent = :next"
                        + (", #s = :c REMOVE recovery_shard" if last else ""),
                        "ConditionExpression": "attribute_exists(session_id) AND #s = :active "
                        "AND progress = :prev",
                        "ExpressionAttributeNames": {"#s": "status"},
                        "ExpressionAttributeValues": {
                            ":now": ts,
                            ":one": {"N": "1"},
                            ":step": {"N": str(step)},
                            ":next": {"S": AGENTS[step] if not last else agent},
                            ":active": {"S": "ACTIVE"},
                            ":prev": {"N": str(step - 1)},
                            **({":c": {"S": "COMPLETED"}} if last else {}),
                        },
                    }
                },
            ],
        )


def bench_overhead(client: StateClient, rounds: int) -> dict[str, Any]:
    payloads = profile("small")
    ddb = client.layer.dynamodb  # the same HTTP pool for both sides
    run_with_client(client, payloads)  # warm-up: JVM, connections
    run_raw(ddb, client.config.tables, payloads)
    ours, raw = [], []
    for _ in range(rounds):  # interleaved, so drift on a noisy machine hits both sides alike
        t = time.perf_counter()
        run_with_client(client, payloads)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        run_raw(ddb, client.config.tables, payloads)
        raw.append(time.perf_counter() - t)
    return {
        "rounds": rounds,
        "client_median_ms": statistics.median(ours) * 1000,
        "raw_median_ms": statistics.median(raw) * 1000,
        "ratio": statistics.median(ours) / statistics.median(raw),
    }


# --- 2. write units per run ---------------------------------------------------------------------------


def _naive_put(ddb: Any, table: str, item: dict[str, Any], refused: list[str]) -> float:
    """Put the item; if DynamoDB refuses it (over 400 KB), count what the 1-KB rule would have charged
    and note the refusal — the naive run cannot actually store it."""
    serializer = boto3.dynamodb.types.TypeSerializer()
    try:
        response = ddb.put_item(
            TableName=table,
            Item={k: serializer.serialize(to_dynamo(v)) for k, v in item.items()},
            ReturnConsumedCapacity="TOTAL",
        )
    except ddb.exceptions.ClientError as exc:
        if "size" not in str(exc):
            raise
        size = sum(len(k) + len(str(v).encode()) for k, v in item.items())
        refused.append(f"{item.get('agent_name', 'session')}: {size // 1024} KB")
        return float(math.ceil(size / 1024))
    return float(response["ConsumedCapacity"]["CapacityUnits"])


def run_naive(ddb: Any, tables: Any, payloads: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
    """The plan's sample: every update is a full put of the item, payloads as raw JSON text."""
    sid = str(uuid.uuid4())
    units = 0.0
    session: dict[str, Any] = {
        "session_id": sid,
        "user_id": "bench",
        "project_name": "bench",
        "pipeline_type": "SIMPLE",
        "status": "ACTIVE",
        "current_agent": "nl_input",
        "progress": 0,
        "created_at": epoch(utcnow()),
        "last_updated": epoch(utcnow()),
        "metadata": "{}",
        "recovery_shard": "ACTIVE#0",
    }
    refused: list[str] = []
    units += _naive_put(ddb, tables.sessions, session, refused)
    for step, agent in enumerate(AGENTS, start=1):
        inp, out = payloads[agent]
        execution: dict[str, Any] = {
            "execution_id": f"{sid}-{agent}",  # the plan's f"{project_id}-{agent_name}"
            "agent_name": agent,
            "project_id": sid,
            "status": "RUNNING",
            "start_time": epoch(utcnow()),
            "input_data": json.dumps(inp),
            "retry_count": 0,
        }
        units += _naive_put(ddb, tables.executions, execution, refused)
        session.update(current_agent=agent, last_updated=epoch(utcnow()))
        units += _naive_put(ddb, tables.sessions, session, refused)
        execution.update(status="COMPLETED", end_time=epoch(utcnow()), output_data=json.dumps(out))
        units += _naive_put(ddb, tables.executions, execution, refused)
        session.update(progress=step, last_updated=epoch(utcnow()))
        units += _naive_put(ddb, tables.sessions, session, refused)
    return {"write_units": units, "refused": refused}


def bench_cost(client: StateClient) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in ("issue", "naive-fits", "small", "orchestrator"):
        payloads = profile(name)
        clock = SimulatedClock()
        fresh = StateClient(layer=type(client.layer)(client.config), clock=clock)
        run_with_client(fresh, payloads, clock)
        meter = fresh.layer.meter.snapshot()
        naive = run_naive(client.layer.dynamodb, client.config.tables, payloads)
        ours_usd = (
            meter["write_units"] * WRU_USD
            + meter["read_units"] * RRU_USD
            + meter["s3_puts"] * S3_PUT_USD
            + meter["s3_gets"] * S3_GET_USD
        )
        entry: dict[str, Any] = {
            "client_write_units": meter["write_units"],
            "client_s3_puts": meter["s3_puts"],
            "client_s3_put_bytes": meter["s3_put_bytes"],
            "client_usd_per_million_runs": ours_usd * 1e6,
            "naive_write_units": naive["write_units"],
            "naive_refused_items": naive["refused"],
            "ratio": meter["write_units"] / naive["write_units"],
            "naive_usd_per_million_runs": naive["write_units"] * WRU_USD * 1e6,
        }
        results[name] = entry
    return results


# --- 3. concurrency and event-loop lag ----------------------------------------------------------------


async def _one_run(client: AsyncStateClient, payloads: dict[str, tuple[Any, Any]]) -> None:
    sid = (await client.sessions.create(user_id="bench", project_name="bench")).session_id
    for agent in AGENTS:
        inp, out = payloads[agent]
        await client.executions.start(sid, agent, input_data=inp)
        await client.executions.complete(sid, agent, output_data=out)


async def _lag_probe(stop: asyncio.Event, lags: list[float]) -> None:
    interval = 0.005
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(interval)
        lags.append(max(0.0, time.perf_counter() - t - interval))


async def bench_concurrency(config: StateConfig, runs: int) -> dict[str, Any]:
    payloads = profile("small")
    client = AsyncStateClient(StateClient(config))
    try:
        await _one_run(client, payloads)  # warm-up
        stop, lags = asyncio.Event(), []
        probe = asyncio.create_task(_lag_probe(stop, lags))
        t = time.perf_counter()
        for _ in range(runs):
            await _one_run(client, payloads)
        sequential = time.perf_counter() - t
        stop.set()
        await probe
        # Lag while the async API carries the concurrent runs.
        stop, lags = asyncio.Event(), []
        probe = asyncio.create_task(_lag_probe(stop, lags))
        t = time.perf_counter()
        await asyncio.gather(*(_one_run(client, payloads) for _ in range(runs)))
        concurrent = time.perf_counter() - t
        stop.set()
        await probe
        # Control: what blocking the loop looks like — the sync client called from a coroutine.
        stop, blocked = asyncio.Event(), []
        probe = asyncio.create_task(_lag_probe(stop, blocked))
        await asyncio.sleep(0.02)
        for _ in range(5):
            run_with_client(client.sync, payloads)
            await asyncio.sleep(0)
        stop.set()
        await probe
    finally:
        await client.aclose()
    lags.sort()
    blocked.sort()
    return {
        "runs": runs,
        "sequential_s": sequential,
        "concurrent_s": concurrent,
        "throughput_ratio": sequential / concurrent,
        "loop_lag_p50_ms": lags[len(lags) // 2] * 1000,
        "loop_lag_p99_ms": lags[int(len(lags) * 0.99)] * 1000,
        "loop_lag_max_ms": lags[-1] * 1000,
        "loop_lag_samples": len(lags),
        "blocking_control_lag_p99_ms": blocked[int(len(blocked) * 0.99)] * 1000 if blocked else None,
    }


def idle_loop_control(config: StateConfig, runs: int) -> dict[str, Any]:
    """Lag of an event loop doing nothing, in this process, while a *separate* process drives the same
    concurrent runs: what the machine alone (CPU shared with LocalStack) does to a loop."""
    import os
    import subprocess
    import sys

    code = (
        "import asyncio, sys; sys.path.insert(0, '.');"
        "from tdev_state import StateConfig;"
        "from benchmarks.state_client import bench_concurrency;"
        f"config = StateConfig(env={config.env!r}, endpoint_url={config.endpoint_url!r});"
        f"asyncio.run(bench_concurrency(config, {runs}))"
    )
    env = {**os.environ, "PYTHONPATH": "."}
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL)

    async def probe() -> list[float]:
        stop, lags = asyncio.Event(), []
        task = asyncio.create_task(_lag_probe(stop, lags))
        await asyncio.to_thread(child.wait)
        stop.set()
        await task
        return lags

    lags = sorted(asyncio.run(probe()))
    return {
        "idle_loop_lag_p50_ms": lags[len(lags) // 2] * 1000,
        "idle_loop_lag_p99_ms": lags[int(len(lags) * 0.99)] * 1000,
        "samples": len(lags),
    }


# --- 4. client-side encryption: cost and time -----------------------------------------------------------


def bench_encryption(base: StateConfig, rounds: int = 5) -> dict[str, Any]:
    """Plain vs every payload field sealed: write units, S3 PUTs and KMS calls per run, and the time of a
    run as a ratio measured in the same loop (interleaved, so machine noise hits both alike)."""
    kms = boto3.client("kms", region_name=base.region, endpoint_url=base.endpoint_url)
    key = kms.create_key(Description="bench field encryption")["KeyMetadata"]["KeyId"]
    sealed_config = replace(
        base, kms_key_id=key, encrypt_fields=frozenset({"input_data", "output_data", "metadata"})
    )
    results: dict[str, Any] = {}
    try:
        for name in ("issue", "small"):
            payloads = profile(name)
            times: dict[str, list[float]] = {"plain": [], "sealed": []}
            entry: dict[str, Any] = {}
            for _ in range(rounds):
                for label, config in (("plain", base), ("sealed", sealed_config)):
                    clock = SimulatedClock()
                    client = StateClient(config, clock=clock)
                    started = time.perf_counter()
                    sid = run_with_client(client, payloads, clock)
                    times[label].append(time.perf_counter() - started)
                    meter = client.layer.meter.snapshot()
                    entry[f"{label}_write_units"] = meter["write_units"]
                    entry[f"{label}_s3_puts"] = meter["s3_puts"]
                    if label == "sealed":
                        entry["kms_generate_per_run"] = client.layer.payloads.cipher.stats().generate_calls
                        reader = StateClient(config)
                        reader.executions.list(sid)
                        entry["kms_decrypt_per_run_read"] = reader.layer.payloads.cipher.stats().decrypt_calls
            entry["write_units_ratio"] = entry["sealed_write_units"] / entry["plain_write_units"]
            entry["time_ratio_median"] = statistics.median(
                s / p for s, p in zip(times["sealed"], times["plain"], strict=True)
            )
            entry["plain_run_ms_median"] = statistics.median(times["plain"]) * 1000
            results[name] = entry
    finally:
        kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    return results


# --- 5. the large-output path (issue #24) ------------------------------------------------------------------


class _NoObjectStore:
    """An S3 client that accepts every PUT and keeps nothing: the codec's cost without I/O."""

    def put_object(self, **_: Any) -> dict[str, Any]:
        return {}


def codec_seconds_per_mb(base: StateConfig, rounds: int = 10) -> dict[str, Any]:
    """The payload codec's cost per MB of JSON, in process: encode (canonical JSON), the size probe, the
    chunk split, compression and every SHA-256 of 1 MB of generated code, through the real payload store
    with an S3 client that does nothing (each round a new run, so no chunk is known yet)."""
    layer = DynamoLayer(base, s3=_NoObjectStore())  # type: ignore[arg-type]
    value = generated_project(1_000_000, seed=6)
    context = PayloadContext("agent-executions", "bench", "generation")
    times: list[float] = []
    cpu: list[float] = []
    json_bytes = 0
    for i in range(rounds + 1):
        started, started_cpu = time.perf_counter(), time.process_time()
        encoded = layer.payloads.encode(
            value, field="output_data", object_key=f"codec{i}/generation", context=context
        )
        if i:
            times.append(time.perf_counter() - started)
            cpu.append(time.process_time() - started_cpu)
        json_bytes = encoded.json_bytes
    megabytes = json_bytes / 1e6
    return {
        "codec_ms_per_mb": statistics.median(times) / megabytes * 1000,
        # CPU time: on a machine shared with other jobs, steadier than wall time for in-process work.
        "codec_cpu_ms_per_mb": statistics.median(cpu) / megabytes * 1000,
        "json_bytes": json_bytes,
        "rounds": rounds,
    }


def bench_large_output(base: StateConfig, runs: int = 5) -> dict[str, Any]:
    """Seconds per 9-agent run with 1 MB of generated code (the "issue" profile through the public client,
    median of `runs` after one warm-up run), and the payload codec's cost per MB without I/O."""
    client = StateClient(base)
    payloads = profile("issue")
    times = []
    for i in range(runs + 1):
        started = time.perf_counter()
        run_with_client(client, payloads)
        if i:
            times.append(time.perf_counter() - started)
    entry: dict[str, Any] = {
        "run_s_median": statistics.median(times),
        "run_s_min": min(times),
        "runs": runs,
        **codec_seconds_per_mb(base),
    }
    print(
        f"large output: {entry['run_s_median']:.3f} s per 1 MB run (median of {runs}); payload codec "
        f"{entry['codec_ms_per_mb']:.1f} ms per MB ({entry['codec_cpu_ms_per_mb']:.1f} ms CPU; encode + "
        "chunk + hash, no I/O)"
    )
    return entry


def run_all(base: StateConfig, *, rounds: int, runs: int) -> dict[str, Any]:
    client = StateClient(base)
    return {
        "large_output": bench_large_output(base),
        "overhead": bench_overhead(client, rounds),
        "cost": bench_cost(client),
        "encryption": bench_encryption(base),
        "concurrency": asyncio.run(bench_concurrency(replace(base), runs)),
        "idle_loop_control": idle_loop_control(base, runs),
    }
