"""One key's aggregate: exact count/sum/sumsq/min/max/errors and DDSketch buckets (1 % relative accuracy).

Values are kept raw and folded into bucket counts (ddsketch's logarithmic mapping) by the flusher thread,
so `add` stays a handful of float operations on the caller's thread. If the flusher falls behind, a key
folds inline once it holds `FOLD_AT` raw values, so memory per key stays bounded either way.
Bucket counts are what the table stores (one numeric attribute per bucket, summed with ADD), and what
`sketch()` rebuilds a mergeable DDSketch from for percentiles.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
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


# ddsketch's LogarithmicMapping.key() is ceil(log2(v) * multiplier) + offset, one value at a time; the
# same formula over a numpy array folds a whole batch at once (tests check they agree).
_MULTIPLIER = float(MAPPING._multiplier)
_OFFSET = float(MAPPING._offset)
_MIN = float(MAPPING.min_possible)


def _keys(values: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    return (np.ceil(np.log2(values) * _MULTIPLIER) + _OFFSET).astype(np.int64)


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
        """Move raw values into bucket counts, vectorised: ~20 ns a value instead of ~300 ns."""
        if not self.raw:
            return
        values = np.asarray(self.raw, dtype=np.float64)
        self.raw = []
        for prefix, part in (("p", values[values > _MIN]), ("n", -values[values < -_MIN])):
            if part.size:
                keys, counts = np.unique(_keys(part), return_counts=True)
                for k, n in zip(keys.tolist(), counts.tolist(), strict=True):
                    self.buckets[f"{prefix}{k}"] += n
        zeros = int(values.size - np.count_nonzero(values > _MIN) - np.count_nonzero(values < -_MIN))
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
