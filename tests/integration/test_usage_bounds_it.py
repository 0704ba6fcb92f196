"""Usage items stay bounded under adversarial input, on a real endpoint that enforces DynamoDB's 400 KB
item limit and its expression limits (issue 23.8): 10,000 distinct tech-stack names (long ones at the
limits included), many writers in one day, 10,000 distinct users. Every count lands; what was capped is
counted and shown in the report."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any

from tdev_metrics import CollectorConfig, MetricsCollector
from tdev_metrics._usage_store import USERS_PER_ITEM
from tdev_metrics.usage import TECH_NAMES_PER_ITEM
from tdev_metrics.usage_reader import UsageReader
from tdev_state import StateClient
from tdev_state.usage import UsageEvent

from .endpoints import raw_client

#: DynamoDB's item limit; every usage item must stay below it by the margin of one write.
ITEM_LIMIT = 400 * 1024


def _usage_items(client: StateClient, day: date) -> list[dict[str, Any]]:
    ddb = raw_client("dynamodb", client.config)
    resp = ddb.query(
        TableName=client.config.tables.metrics,
        KeyConditionExpression="#d = :d AND begins_with(metric_name, :p)",
        ExpressionAttributeNames={"#d": "date"},
        ExpressionAttributeValues={":d": {"S": day.isoformat()}, ":p": {"S": "#usage#"}},
        ConsistentRead=True,
    )
    items: list[dict[str, Any]] = resp["Items"]
    return items


def _size(item: dict[str, Any]) -> int:
    """An upper bound of the item's stored size: name bytes plus value bytes, a number's digits counted
    one byte each (DynamoDB stores about two per byte)."""

    def value(typed: dict[str, Any]) -> int:
        ((kind, raw),) = typed.items()
        if kind in ("NS", "SS"):
            return sum(len(str(v).encode()) for v in raw)
        return len(str(raw).encode())

    return sum(len(k.encode()) + value(v) for k, v in item.items())


def _collector(client: StateClient, **config: Any) -> MetricsCollector:
    """A collector fed by hand (usage=False: the client's own events do not reach it)."""
    return MetricsCollector(client, CollectorConfig(**config), start=False, usage=False)


def test_ten_thousand_distinct_tech_stacks_keep_items_bounded_and_count_every_entry(
    client: StateClient,
) -> None:
    """200 projects x 50 distinct names (10,000, some of 64 four-byte characters): every flush succeeds,
    every usage item stays far below 400 KB, named + "other" entries = 10,000, and the report says so."""
    day = date(2026, 12, 1)
    at = datetime(2026, 12, 1, 9, tzinfo=UTC)
    collector = _collector(client)
    odd = ["\U0001d518" * 64, "x" * 64, "a#b", "c.d", "e f", "\x1b[2J", "\ud800"]
    names = odd + [f"stack-{i}-{uuid.uuid4().hex[:4]}" for i in range(10_000 - len(odd))]
    for project in range(200):
        stack = tuple(names[project * 50 : project * 50 + 50])
        collector.usage(UsageEvent(kind="project_saved", at=at, tech_stack=stack))
        if project % 20 == 19:
            assert collector.flush()
    assert collector.close()
    report = UsageReader(client).report(day, day)
    named = sum(s["projects"] for s in report["projects"]["tech_stack"])
    assert report["projects"]["saved"] == 200
    assert named + report["projects"]["tech_stack_other"] == 10_000
    assert report["capped"]["tech_stack_entries_as_other"] == 10_000 - named > 0
    assert len(report["projects"]["tech_stack"]) <= TECH_NAMES_PER_ITEM
    assert collector.usage_buffer.dropped_writes == 0
    sizes = [_size(i) for i in _usage_items(client, day)]
    assert max(sizes) < ITEM_LIMIT // 8


def test_many_writers_in_one_day_fill_shards_and_count_exactly(client: StateClient) -> None:
    """60 collector processes' worth of writers on one day, with 1 KB shards: each adds its sequence
    attribute, shards fill and writers move on; 60 runs counted, no item past its budget plus one write."""
    day = date(2026, 12, 2)
    at = datetime(2026, 12, 2, 10, tzinfo=UTC)
    budget = 1024
    for _ in range(60):
        writer = _collector(client, usage_item_budget=budget)
        writer.usage(UsageEvent(kind="run_started", at=at, pipeline_type="SIMPLE"))
        assert writer.close()
    report = UsageReader(client).report(day, day)
    assert report["runs"]["started"] == 60
    items = _usage_items(client, day)
    assert len(items) >= 2  # the counts chain grew instead of one item growing without bound
    assert max(_size(i) for i in items) < budget + 512
    assert report["capped"]["usage_items_read"] == len(items)


def test_ten_thousand_users_in_one_day_are_counted_exactly_in_bounded_shards(client: StateClient) -> None:
    """10,000 distinct users in a day: the users set is split into shards of at most USERS_PER_ITEM
    hashes (enforced by the write's condition), and the distinct count is exact."""
    day = date(2026, 12, 3)
    at = datetime(2026, 12, 3, 11, tzinfo=UTC)
    collector = _collector(client)
    for i in range(10_000):
        collector.usage(UsageEvent(kind="user_active", at=at, user_id=f"user-{i}"))
    assert collector.close()
    report = UsageReader(client).report(day, day)
    assert report["active_users"]["total_distinct"] == 10_000
    users = [i for i in _usage_items(client, day) if i["metric_name"]["S"].startswith("#usage#users")]
    assert len(users) == 3
    assert max(len(i["u"]["NS"]) for i in users) <= USERS_PER_ITEM
