"""The usage items in the metrics table: exactly-once writes whose items stay bounded under any input.

A day's usage lives in three item families — counts, durations, users (see tdev_metrics.usage) — each a
chain of *shards*: `#usage#counts`, then `#usage#counts#1`, `#usage#counts#2`… A shard takes writes until
it is full, then writers go on in the next one; the report reads them all (one Query per day, as before).
Shards exist so that no input can push an item past DynamoDB's 400 KB — after which every collector's
writes for that day would fail, for everyone:

- counts and durations: each successful write returns the item (ALL_NEW); the writer measures it, and the
  first to see it past `item_budget` marks it `full`. Writes carry `attribute_not_exists(full)` in their
  condition, so a write to a full shard is refused atomically and moved on, with its sequence number, to
  the next shard. Should an item still reach DynamoDB's own limit (an item written before shards existed),
  the refusal is checked against the writer's sequence attribute first (applied or not), then moved.
- users: the condition `size(u) <= :room` bounds each shard's set exactly.

Exactly once still holds across shards: a write is only ever re-sent to the shard it was sent to, until a
refusal proves it was not applied there (the returned item's `w_<writer>` is below its sequence number);
only then does it move. One UpdateItem carries at most ATTRS_PER_WRITE attributes, which keeps each
expression far below DynamoDB's limits (4 KB per expression string, 300 operators per update expression).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tdev_metrics._store import expires_at
from tdev_state import PayloadTooLargeError
from tdev_state.log import get_logger
from tdev_state.storage import ConditionFailed, DynamoDoor, Item

log = get_logger(__name__)

COUNTS = "#usage#counts"
DURATIONS = "#usage#durations"
USERS = "#usage#users"
#: A day's counts of the facts the tables hold, folded by the recovery worker (tdev_metrics.usage_tables).
TABLES = "#usage#tables"
PREFIX = "#usage#"
#: Attributes per UpdateItem (with 64-character tech-stack names: about 1 KB of update expression).
ATTRS_PER_WRITE = 50
#: User hashes per UpdateItem (one set operand; bounds one request).
USERS_PER_WRITE = 1000
#: A counts/durations shard measured at or past this many bytes is marked full. Well below DynamoDB's
#: 400 KB so that writes racing the mark still fit; small, because every write to an item costs one
#: write unit per KB of the item (a 300 KB item would make each usage write cost 300).
ITEM_BUDGET = 48 * 1024
#: Distinct users per users shard (enforced exactly by the write's condition): about 40 KB.
USERS_PER_ITEM = 4000
#: A writer follows the chain at most this far in one write (a day with 1,000 full shards is an attack).
MAX_SHARDS = 1000
FULL = "full"


def shard_name(family: str, shard: int) -> str:
    """The sort key of a family's shard: the family's own name for the first (as before shards)."""
    return family if shard == 0 else f"{family}#{shard}"


def family_of(sort_key: str) -> str | None:
    """COUNTS, DURATIONS or USERS for any of their shards, TABLES for the day's fold; None for anything
    else."""
    if sort_key == TABLES:
        return TABLES
    parts = sort_key.split("#")
    if len(parts) < 3 or parts[1] != "usage":
        return None
    family = f"#usage#{parts[2]}"
    return family if family in (COUNTS, DURATIONS, USERS) else None


def item_size(item: Item) -> int:
    """DynamoDB's size of an item, to within a few bytes: names plus values (numbers ~1 byte per 2 digits)."""
    return sum(len(name.encode("utf-8", "surrogatepass")) + _value_size(v) for name, v in item.items())


def _value_size(value: Any) -> int:
    size = 32  # an unknown type: a generous guess
    if isinstance(value, str):
        size = len(value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, bool) or value is None:
        size = 1
    elif isinstance(value, int | float | Decimal):
        size = len(str(value).lstrip("-").replace(".", "")) // 2 + 2
    elif isinstance(value, set | frozenset | list | tuple):
        size = 3 + sum(_value_size(v) for v in value)
    elif isinstance(value, dict):
        size = 3 + item_size(value)
    elif isinstance(value, bytes | bytearray):
        size = len(value)
    return size


@dataclass
class UsageWrite:
    """One UpdateItem's worth of a day's family: fixed sequence number and content; `shard` is set when it
    is first sent and moves only on a refusal that proves it was not applied."""

    day: str
    family: str
    seq: int
    attrs: dict[str, int] = field(default_factory=dict)
    users: set[int] = field(default_factory=set)
    shard: int | None = None


@dataclass
class _ShardView:
    """What this writer last saw of a shard (from its own writes' ALL_NEW)."""

    names: set[str] = field(default_factory=set)
    size: int = 0


class UsageStore:
    """The usage shards through the shared DynamoDB door (`tdev_state.storage`)."""

    def __init__(self, layer: DynamoDoor, writer_id: str, *, item_budget: int = ITEM_BUDGET) -> None:
        self._layer = layer
        self._table = layer.tables.metrics
        self._writer_attr = f"w_{writer_id}"
        self._budget = item_budget
        #: (day, family) -> the shard this writer writes next.
        self._cursor: dict[tuple[str, str], int] = {}
        self._views: dict[tuple[str, str, int], _ShardView] = {}
        #: Moves to a next shard (a full one was met), and shards this writer marked full.
        self.shard_moves = 0
        self.shards_filled = 0

    def days(self) -> set[str]:
        """The days this writer holds cursors or views for."""
        return {k[0] for k in self._cursor} | {k[0] for k in self._views}

    def forget_days_before(self, day: str) -> None:
        """Drop cursors and views of days before `day` (a long-running process writes new days forever)."""
        self._cursor = {k: v for k, v in self._cursor.items() if k[0] >= day}
        self._views = {k: v for k, v in self._views.items() if k[0] >= day}

    def target(self, write: UsageWrite) -> _ShardView:
        """Fix the write's shard (first send) and return this writer's view of it."""
        if write.shard is None:
            write.shard = self._cursor.get((write.day, write.family), 0)
        return self._views.setdefault((write.day, write.family, write.shard), _ShardView())

    def apply(self, write: UsageWrite) -> bool:
        """Apply one write exactly once; False when it had been applied already (a retry)."""
        self.target(write)
        for _ in range(MAX_SHARDS):
            assert write.shard is not None
            try:
                item = self._update(write)
            except ConditionFailed as exc:
                old = exc.old_item or {}
                if write.family != USERS and int(old.get(self._writer_attr, -1)) >= write.seq:
                    log.info("usage.duplicate_ignored", item=write.family, day=write.day, seq=write.seq)
                    return False
                self._move(write, reason="full")  # refused by full/size(u): not applied there
                continue
            except PayloadTooLargeError as exc:
                if "item size" not in str(exc).lower():
                    raise  # an expression too large, say: moving would not help (the caller drops it)
                # DynamoDB's own 400 KB refusal (an item grown before shards existed). Applied or not is
                # read back from the writer's sequence attribute before anything moves.
                if write.family != USERS and self._applied(write):
                    return False
                self._mark_full(write.day, write.family, write.shard)
                self._move(write, reason="item_size")
                continue
            if item is not None:
                view = self._views.setdefault((write.day, write.family, write.shard), _ShardView())
                view.names, view.size = set(item), item_size(item)
                if view.size >= self._budget and FULL not in item:
                    self._mark_full(write.day, write.family, write.shard)
                    self._cursor[(write.day, write.family)] = write.shard + 1
            return True
        raise PayloadTooLargeError(  # pragma: no cover - a day with MAX_SHARDS full shards
            f"usage {write.family} of {write.day}: {MAX_SHARDS} shards are full; the write is dropped"
        )

    def _move(self, write: UsageWrite, *, reason: str) -> None:
        assert write.shard is not None
        write.shard += 1
        self.shard_moves += 1
        key = (write.day, write.family)
        self._cursor[key] = max(self._cursor.get(key, 0), write.shard)
        log.info("usage.shard_moved", item=write.family, day=write.day, shard=write.shard, reason=reason)

    def _applied(self, write: UsageWrite) -> bool:
        assert write.shard is not None
        item = self._layer.get(
            self._table,
            {"date": write.day, "metric_name": shard_name(write.family, write.shard)},
            attributes=[self._writer_attr],
        )
        return int((item or {}).get(self._writer_attr, -1)) >= write.seq

    def _mark_full(self, day: str, family: str, shard: int) -> None:
        self._layer.update(
            self._table,
            {"date": day, "metric_name": shard_name(family, shard)},
            update="SET #full = :one",
            names={"#full": FULL},
            values={":one": 1},
        )
        self.shards_filled += 1
        log.info("usage.shard_full", item=family, day=day, shard=shard)

    def _update(self, write: UsageWrite) -> Item | None:
        assert write.shard is not None
        names: dict[str, str] = {"#kind": "kind"}
        values: dict[str, Any] = {":kind": "usage"}
        sets = ["#kind = :kind"]
        adds: list[str] = []
        if write.family == USERS:
            names["#u"] = "u"
            values[":u"] = {Decimal(h) for h in write.users}
            values[":room"] = USERS_PER_ITEM - len(write.users)
            adds.append("#u :u")
            condition = "attribute_not_exists(#u) OR size(#u) <= :room"
            returns = "NONE"
        else:
            names["#w"] = self._writer_attr
            names["#full"] = FULL
            values[":seq"] = write.seq
            sets.append("#w = :seq")
            condition = "(attribute_not_exists(#w) OR #w < :seq) AND attribute_not_exists(#full)"
            for i, (attr, n) in enumerate(sorted(write.attrs.items())):
                names[f"#a{i}"] = attr
                values[f":a{i}"] = n
                adds.append(f"#a{i} :a{i}")
            returns = "ALL_NEW"
        expiry = expires_at(write.day, self._layer.config.retention_days)
        if expiry is not None:
            sets.append("#exp = :exp")
            names["#exp"] = "expires_at"
            values[":exp"] = expiry
        return self._layer.update(
            self._table,
            {"date": write.day, "metric_name": shard_name(write.family, write.shard)},
            update="SET " + ", ".join(sets) + (" ADD " + ", ".join(adds) if adds else ""),
            condition=condition,
            names=names,
            values=values,
            return_values=returns,  # type: ignore[arg-type]
        )

    def day(self, day: str) -> dict[str, list[Item]]:
        """The day's usage shards by family, and its fold under TABLES (one consistent Query)."""
        items = self._layer.query_all(
            self._table,
            key_condition="#d = :d AND begins_with(metric_name, :p)",
            names={"#d": "date"},
            values={":d": day, ":p": PREFIX},
            consistent=True,
        )
        found: dict[str, list[Item]] = {COUNTS: [], DURATIONS: [], USERS: [], TABLES: []}
        for item in items:
            family = family_of(str(item["metric_name"]))
            if family is not None:
                found[family].append(item)
        return found
