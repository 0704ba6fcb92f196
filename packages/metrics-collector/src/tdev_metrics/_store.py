"""Writing aggregates to the metrics table exactly once, and reading them back.

Item: PK `date` (YYYY-MM-DD), SK `metric_name` = "metric#agent#HH[#variant]" (see docs/data-model.md), with
`value` (sum), `count`, `errors`, `sumsq`, `min_value`, `max_value`, one numeric attribute per sketch bucket
(`b_p123`), the plan's `agent_name` and `hour`, and one `w_<writer>` attribute per collector process.

Exactly once, at the price of one UpdateItem per key per flush: every write ADDs its deltas and sets
`w_<writer> = :seq` under the condition `w_<writer> < :seq` (or absent). A writer numbers its writes with a
strictly increasing sequence and never sends a later write for a key before an earlier one is confirmed, so
a retried write (after a timeout whose first attempt landed) fails the condition, and the item returned with
the failure (ALL_OLD) proves it was applied: nothing is added twice. Plain ADD would double count.
min/max cannot be ADDed; they are SET only when this batch beats the stored value, under a condition that
it still does (another writer may have moved it): on that failure the write is re-sent without them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from tdev_metrics._aggregate import Aggregate, Key
from tdev_metrics.exceptions import MetricsError
from tdev_state.log import get_logger
from tdev_state.storage import ConditionFailed, DynamoDoor, Item

log = get_logger(__name__)

#: Buckets per UpdateItem: keeps the expression far below DynamoDB's 4 KB expression limit.
BUCKETS_PER_WRITE = 120


def item_key(key: Key) -> dict[str, str]:
    """The table key of an aggregate key."""
    moment = datetime.fromtimestamp(key.hour * 3600, UTC)
    sort = f"{key.metric}#{key.agent}#{moment.hour:02d}" + (f"#{key.variant}" if key.variant else "")
    return {"date": moment.strftime("%Y-%m-%d"), "metric_name": sort}


@dataclass
class Write:
    """One UpdateItem's worth of a batch: the deltas, the sequence number it carries."""

    seq: int
    count: int = 0
    total: float = 0.0
    sumsq: float = 0.0
    errors: int = 0
    low: float | None = None
    high: float | None = None
    buckets: dict[str, int] = field(default_factory=dict)


def plan_writes(agg: Aggregate, next_seq: Callable[[], int]) -> list[Write]:
    """Split an aggregate into writes of at most BUCKETS_PER_WRITE buckets; totals ride on the first."""
    agg.fold()
    items = sorted(agg.buckets.items())
    chunks = [items[i : i + BUCKETS_PER_WRITE] for i in range(0, len(items), BUCKETS_PER_WRITE)] or [[]]
    writes = [Write(seq=next_seq(), buckets=dict(chunk)) for chunk in chunks]
    first = writes[0]
    first.count, first.total, first.sumsq, first.errors = agg.count, agg.total, agg.sumsq, agg.errors
    first.low = agg.low if agg.count else None
    first.high = agg.high if agg.count else None
    return writes


def expires_at(day: str, retention_days: int | None) -> int | None:
    """The TTL of an item of `day` (YYYY-MM-DD): the end of the retention after that day; None keeps it."""
    if not retention_days:
        return None
    start = datetime.combine(date.fromisoformat(day), datetime.min.time(), UTC)
    return int((start + timedelta(days=retention_days + 1)).timestamp())


class MetricsStore:
    """The metrics table through the shared DynamoDB door (no S3, KMS or usage bus: `tdev_state.storage`)."""

    def __init__(self, layer: DynamoDoor, writer_id: str) -> None:
        self._layer = layer
        self._table = layer.tables.metrics
        self._writer_attr = f"w_{writer_id}"
        #: Stored min/max per item as last seen, to send min/max only when they would change.
        self._known: dict[tuple[str, str], tuple[float | None, float | None]] = {}

    def apply(self, key: Key, write: Write) -> bool:
        """Apply one write exactly once. Returns False if it had already been applied (a retry)."""
        table_key = item_key(key)
        known_low, known_high = self._known.get((table_key["date"], table_key["metric_name"]), (None, None))
        send_low = write.low is not None and (known_low is None or write.low < known_low)
        send_high = write.high is not None and (known_high is None or write.high > known_high)
        for _ in range(4):
            try:
                item = self._update(key, table_key, write, send_low=send_low, send_high=send_high)
            except ConditionFailed as exc:
                old = exc.old_item or {}
                if int(old.get(self._writer_attr, -1)) >= write.seq:
                    log.info("flush.duplicate_ignored", metric_name=table_key["metric_name"], seq=write.seq)
                    return False
                # Another writer moved min/max past ours: send the rest without them.
                if send_low and "min_value" in old and float(old["min_value"]) <= float(write.low or 0):
                    send_low = False
                if send_high and "max_value" in old and float(old["max_value"]) >= float(write.high or 0):
                    send_high = False
                continue
            self._known[(table_key["date"], table_key["metric_name"])] = (
                _num(item.get("min_value")),
                _num(item.get("max_value")),
            )
            return True
        raise MetricsError(  # pragma: no cover - four writers moving min/max past ours in a row
            f"could not apply a metrics write to {table_key['metric_name']} after 4 attempts; it is kept "
            "and retried with the next flush"
        )

    def _update(
        self, key: Key, table_key: dict[str, str], write: Write, *, send_low: bool, send_high: bool
    ) -> Item:
        # Placeholders for every name: several (hour, count, value…) are DynamoDB reserved words.
        names: dict[str, str] = {
            "#w": self._writer_attr,
            "#metric": "metric",
            "#agent": "agent_name",
            "#hour": "hour",
        }
        values: dict[str, Any] = {
            ":seq": write.seq,
            ":metric": key.metric,
            ":agent": key.agent,
            ":hour": datetime.fromtimestamp(key.hour * 3600, UTC).hour,
        }
        adds: list[str] = []
        sets = ["#w = :seq", "#metric = :metric", "#agent = :agent", "#hour = :hour"]
        conditions = ["(attribute_not_exists(#w) OR #w < :seq)"]
        if key.variant:
            sets.append("#variant = :variant")
            names["#variant"] = "variant"
            values[":variant"] = key.variant
        if write.count:
            adds += ["#count :count", "#value :total", "#sumsq :sumsq", "#errors :errors"]
            names.update({"#count": "count", "#value": "value", "#sumsq": "sumsq", "#errors": "errors"})
            values.update(
                {":count": write.count, ":total": write.total, ":sumsq": write.sumsq, ":errors": write.errors}
            )
        if send_low:
            sets.append("#min = :low")
            conditions.append("(attribute_not_exists(#min) OR #min > :low)")
            names["#min"] = "min_value"
            values[":low"] = write.low
        if send_high:
            sets.append("#max = :high")
            conditions.append("(attribute_not_exists(#max) OR #max < :high)")
            names["#max"] = "max_value"
            values[":high"] = write.high
        for i, (bucket, n) in enumerate(sorted(write.buckets.items())):
            names[f"#b{i}"] = f"b_{bucket}"
            values[f":b{i}"] = n
            adds.append(f"#b{i} :b{i}")
        expiry = expires_at(table_key["date"], self._layer.config.retention_days)
        if expiry is not None:
            sets.append("#exp = :exp")
            names["#exp"] = "expires_at"
            values[":exp"] = expiry
        expression = "SET " + ", ".join(sets) + (" ADD " + ", ".join(adds) if adds else "")
        item = self._layer.update(
            self._table,
            table_key,
            update=expression,
            condition=" AND ".join(conditions),
            names=names,
            values=values,
            return_values="ALL_NEW",
        )
        assert item is not None
        return item

    def query_day(self, day: str, prefix: str) -> list[Item]:
        """Every item of `day` whose sort key starts with `prefix` ("metric#" or "metric#agent#")."""
        return list(
            self._layer.query_all(
                self._table,
                key_condition="#d = :d AND begins_with(metric_name, :p)",
                names={"#d": "date"},
                values={":d": day, ":p": prefix},
                consistent=True,
            )
        )

    def sort_keys_of_day(self, day: str) -> list[str]:
        """The sort keys of every item of `day` (metrics and the usage counters alike), for listing names."""
        return [
            str(item.get("metric_name", ""))
            for item in self._layer.query_all(
                self._table,
                key_condition="#d = :d",
                names={"#d": "date"},
                values={":d": day},
                consistent=True,
            )
        ]


def _num(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None
