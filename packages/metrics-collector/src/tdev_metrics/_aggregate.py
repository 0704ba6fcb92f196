"""One key's aggregate: exact count/sum/sumsq/min/max/errors and DDSketch buckets (1 % relative accuracy).

Values are kept raw and folded into bucket counts (ddsketch's logarithmic mapping) by the flusher thread,
so `add` stays a handful of float operations on the caller's thread. If the flusher falls behind, a key
folds inline once it holds `FOLD_AT` raw values, so memory per key stays bounded either way.
Bucket counts are what the table stores (one numeric attribute per bucket, summed with ADD), and what
`sketch()` rebuilds a mergeable DDSketch from for percentiles.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

from ddsketch.ddsketch import BaseDDSketch
from ddsketch.mapping import LogarithmicMapping
from ddsketch.store import DenseStore

RELATIVE_ACCURACY = 0.01
MAPPING = LogarithmicMapping(RELATIVE_ACCURACY)
FOLD_AT = 65_536


class Key(NamedTuple):
    """What one aggregate (and one table item) is about. `hour` counts hours since the Unix epoch (UTC)."""

    hour: int
    metric: str
    agent: str
    variant: str | None


# ddsketch's LogarithmicMapping.key() is ceil(log(v, 2) * multiplier) + offset behind two method calls;
# the same formula inlined with math.log2 folds a batch in about a third of the time, in pure Python: the
# pipeline's process needs no numpy (tests check the keys equal ddsketch's and the former numpy fold's).
_MULTIPLIER = float(MAPPING._multiplier)
_OFFSET = float(MAPPING._offset)
_MIN = float(MAPPING.min_possible)


def _bucket_counts(values: list[float]) -> tuple[Counter[int], Counter[int], int]:
    """Bucket keys of the positive values, of the negatives' magnitudes, and the count of (near) zeros."""
    log2, ceil, multiplier, offset, low = math.log2, math.ceil, _MULTIPLIER, _OFFSET, _MIN
    above = [v for v in values if v > low]
    below = [-v for v in values if v < -low]
    positive = Counter([int(ceil(log2(v) * multiplier) + offset) for v in above])
    negative = Counter([int(ceil(log2(v) * multiplier) + offset) for v in below])
    return positive, negative, len(values) - len(above) - len(below)


def sketch_bucket_label(value: float) -> str:
    """The stored label of the sketch bucket holding a value, as ddsketch maps one value at a time: "p<k>"
    positive, "n<k>" negative, "z" for (near) zero. The reference `fold` is checked against."""
    if value > MAPPING.min_possible:
        return f"p{MAPPING.key(value)}"
    if value < -MAPPING.min_possible:
        return f"n{MAPPING.key(-value)}"
    return "z"


@dataclass(slots=True)
class Aggregate:
    """Everything recorded for one key since it was last handed to a flush."""

    count: int = 0
    total: float = 0.0
    sumsq: float = 0.0
    errors: int = 0
    low: float = float("inf")
    high: float = float("-inf")
    raw: list[float] = field(default_factory=list)
    buckets: Counter[str] = field(default_factory=Counter)

    def add(self, value: float, error: bool) -> None:
        self.count += 1
        self.total += value
        self.sumsq += value * value
        if error:
            self.errors += 1
        self.low = min(self.low, value)
        self.high = max(self.high, value)
        self.raw.append(value)
        if len(self.raw) >= FOLD_AT:
            self.fold()

    def fold(self) -> None:
        """Move raw values into bucket counts (on the flusher thread, or inline at FOLD_AT values)."""
        if not self.raw:
            return
        values, self.raw = self.raw, []
        positive, negative, zeros = _bucket_counts(values)
        for prefix, counts in (("p", positive), ("n", negative)):
            for k, n in counts.items():
                self.buckets[f"{prefix}{k}"] += n
        if zeros:
            self.buckets["z"] += zeros

    def merge(self, other: Aggregate) -> None:
        self.count += other.count
        self.total += other.total
        self.sumsq += other.sumsq
        self.errors += other.errors
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)
        other.fold()
        self.fold()
        self.buckets.update(other.buckets)


def sketch_from_buckets(buckets: dict[str, float]) -> BaseDDSketch:
    """A DDSketch with these bucket counts (merge sketches of hours into days with `.merge`)."""
    positive, negative = DenseStore(), DenseStore()
    zero = 0.0
    for name, count in buckets.items():
        if name == "z":
            zero += float(count)
        elif name[0] == "p":
            positive.add(int(name[1:]), float(count))
        elif name[0] == "n":
            negative.add(int(name[1:]), float(count))
    return BaseDDSketch(MAPPING, positive, negative, zero)
