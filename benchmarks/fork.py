"""Fork and replay (issue #27): what a fork writes, and the model time it does not spend again.

A parent run of the orchestrator's profile (each agent's input is the request plus every earlier output; 1
MB of generated code, offloaded to S3 in chunks) is stored with a simulated clock advancing each agent's
typical seconds, then forked at a few agents *k*. Per fork:

- items written: every item a DynamoDB write call carried (PutItem, UpdateItem, DeleteItem, each action of
  a TransactWriteItems but its ConditionChecks, each request of a BatchWriteItem), counted on the client's
  own calls; the goal is at most k + 2;
- write units: ReturnConsumedCapacity as the endpoint reports it (the client's capacity meter; on
  LocalStack that is DynamoDB Local, never moto) and, because DynamoDB Local reports one item's units per
  table for a whole transaction, the units DynamoDB bills computed from each written item's size;
- S3 PutObject calls and bytes (goal: 0 — a fork references the parent's payloads), and every S3 call it
  made (a CopyObject restarts the age of a shared object that would expire before the child).

The model-call seconds a fork at agent k saves are the parent's stored durations of agents 1..k-1 (the
agents the child does not run): read back from the parent's items, in this profile and in the demo's.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from benchmarks.state_client import AGENT_SECONDS, SimulatedClock, profile, run_with_client
from tdev_state import AGENTS, PIPELINE, AgentStatus, StateClient, StateConfig

#: Where the benchmark forks: early, in the middle, just before and after the 1 MB agent, and the last.
FORK_POINTS = (AGENTS[1], *AGENTS[5:])  # ui_selection, then search to download


def item_bytes(value: Any, name: str = "") -> int:
    """An item's (or attribute's) size by DynamoDB's documented rule, from its wire form: names and strings
    in UTF-8 bytes, binary as is, a number about one byte per two digits plus one, a map or list 3 bytes
    plus 1 per element. An estimate within a few bytes — enough to place it in 1 KB write units."""
    size = len(name.encode())
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in WIRE_TYPES:
        return size + sum(item_bytes(v, k) for k, v in value.items())  # a whole item: name -> attribute
    kind, inner = next(iter(value.items()))
    scalar = {
        "S": lambda: len(inner.encode()),
        "B": lambda: len(inner),
        "N": lambda: len(inner.lstrip("-").replace(".", "")) // 2 + 1,
        "BOOL": lambda: 1,
        "NULL": lambda: 1,
        "SS": lambda: sum(len(v.encode()) for v in inner),
        "BS": lambda: sum(len(v) for v in inner),
        "NS": lambda: sum(len(v) // 2 + 1 for v in inner),
        "L": lambda: 3 + sum(1 + item_bytes(v) for v in inner),
        "M": lambda: 3 + sum(1 + item_bytes(v, k) for k, v in inner.items()),
    }
    return size + int(scalar[kind]())


WIRE_TYPES = frozenset({"S", "N", "B", "BOOL", "NULL", "SS", "NS", "BS", "L", "M"})


class WriteItems:
    """Counts the items each DynamoDB write call of one client carries (botocore's before-call event), and
    the size of each item a Put carries."""

    def __init__(self, client: StateClient) -> None:
        self.items: Counter[str] = Counter()
        self.put_bytes: list[int] = []
        self.s3_calls: Counter[str] = Counter()
        self._ddb = client.layer.dynamodb
        self._ddb.meta.events.register("provide-client-params.dynamodb.*", self._seen)
        self._s3 = client.layer.payloads.s3
        if self._s3 is not None:
            self._s3.meta.events.register("provide-client-params.s3.*", self._s3_seen)

    def _s3_seen(self, model: Any, **_: Any) -> None:
        self.s3_calls[model.name] += 1

    def _seen(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        name = model.name
        if name in ("PutItem", "UpdateItem", "DeleteItem"):
            self.items[name] += 1
            if name == "PutItem":
                self.put_bytes.append(item_bytes(params["Item"]))
        elif name == "TransactWriteItems":
            for action in params.get("TransactItems", []):
                kind = next(iter(action))
                if kind != "ConditionCheck":
                    self.items[f"Transact.{kind}"] += 1
                if kind == "Put":
                    self.put_bytes.append(item_bytes(action["Put"]["Item"]))
        elif name == "BatchWriteItem":
            self.items[name] += sum(len(v) for v in params.get("RequestItems", {}).values())

    def total(self) -> int:
        return sum(self.items.values())

    def close(self) -> None:
        self._ddb.meta.events.unregister("provide-client-params.dynamodb.*", self._seen)
        if self._s3 is not None:
            self._s3.meta.events.unregister("provide-client-params.s3.*", self._s3_seen)


def saved_seconds(client: StateClient, parent: str, fork_point: str) -> float:
    """The parent's stored durations of the agents a fork at `fork_point` does not run again."""
    before = set(AGENTS[: AGENTS.index(fork_point)])
    return sum(
        e.duration_seconds or 0.0
        for e in client.executions.list(parent, load_payloads=False)
        if e.agent_name in before and e.status is AgentStatus.COMPLETED
    )


def measure_fork(client: StateClient, parent: str, agent: str) -> dict[str, Any]:
    """One fork of `parent` at `agent`: items written, units (by table) and S3 writes it cost."""
    k = AGENTS.index(agent) + 1
    writes = WriteItems(client)
    meter = client.layer.meter
    tables = dict(meter.write_units)
    before = meter.snapshot()
    try:
        child = client.sessions.fork(parent, from_agent=agent)
    finally:
        writes.close()
    after = meter.snapshot()
    by_table = {t.rsplit("-", 1)[-1]: round(u - tables.get(t, 0.0), 1) for t, u in meter.write_units.items()}
    # DynamoDB bills a transactional write 2 units per started KB of each item (an Update: of the item's
    # larger image, here the parent after its `children` grew). DynamoDB Local reports ONE item's units per
    # table for a whole transaction (measured: 1, 3, 7 and 10 Puts of 100 B all report 2.0), so the units
    # DynamoDB would bill are computed from the sizes as well.
    table = client.layer.tables.sessions
    parent_item = client.layer.dynamodb.get_item(TableName=table, Key={"session_id": {"S": parent}})["Item"]
    sizes = [*writes.put_bytes, item_bytes(parent_item)]
    billed = sum(2 * math.ceil(size / 1024) for size in sizes)
    return {
        "k": k,
        "items_written": writes.total(),
        "goal_items": k + 2,
        "write_units_reported": round(after["write_units"] - before["write_units"], 1),
        "write_units_reported_by_table": {t: u for t, u in by_table.items() if u},
        "write_units_by_item_size": billed,
        "item_bytes": sizes,
        "read_units": round(after["read_units"] - before["read_units"], 1),
        "s3_puts": int(after["s3_puts"] - before["s3_puts"]),
        "s3_put_bytes": int(after["s3_put_bytes"] - before["s3_put_bytes"]),
        # Every S3 call the fork made (PutObject, CopyObject — a shared object's age restarted —, reads).
        "s3_calls": dict(writes.s3_calls),
        "by_call": dict(writes.items),
        "child": child.session_id,
    }


def bench_fork_writes(config: StateConfig) -> dict[str, Any]:
    clock = SimulatedClock()
    client = StateClient(config, clock=clock)
    try:
        payloads = profile("orchestrator")
        parent = run_with_client(client, payloads, clock)
        # Each fork appends the child to the parent's `children`, so the parent's item (updated in the
        # same transaction) grows by one entry per fork: the forks below are the parent's 1st..5th.
        out: dict[str, Any] = {agent: measure_fork(client, parent, agent) for agent in FORK_POINTS}
        # A fork of a fork: the fork at search runs to its end, then is forked at assembly — its agents
        # before search are the first parent's items, copied again as stored.
        first = out["search"]["child"]
        for agent in AGENTS[AGENTS.index("search") :]:
            inp, output = payloads[agent]
            client.executions.start(first, agent, input_data=inp)
            clock.advance(AGENT_SECONDS[agent])
            client.executions.complete(first, agent, output_data=output)
        out["assembly, of the fork at search"] = measure_fork(client, first, "assembly")
        seconds = saved_seconds(client, parent, "ui_selection")
        typical = {a.name: a.typical_seconds for a in PIPELINE}
        return {
            "profile": "orchestrator (accumulated inputs, 1 MB generated code in S3 chunks)",
            "forks": out,
            "saved_at_ui_selection": {
                "profile": "typical agent seconds (tdev_state.agents.PIPELINE), stored by the parent",
                "model_seconds_saved": round(seconds, 2),
                "model_seconds_whole_run": sum(typical.values()),
                "demo_profile_seconds_saved": "n/a here (make demo prints it)",
            },
        }
    finally:
        client.close()


def run_all(config: StateConfig) -> dict[str, Any]:
    return bench_fork_writes(config)
