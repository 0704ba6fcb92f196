"""A meter of the read/write units DynamoDB reports, which the benchmarks and the demo print."""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class CapacityMeter:
    """Read/write units DynamoDB reported (ReturnConsumedCapacity=TOTAL), per table; thread-safe."""

    read_units: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    write_units: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    s3_puts: int = 0
    s3_gets: int = 0
    s3_put_bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, kind: Literal["read", "write"], consumed: Any) -> None:
        entries = consumed if isinstance(consumed, list) else [consumed] if consumed else []
        with self._lock:
            target = self.read_units if kind == "read" else self.write_units
            for entry in entries:
                target[entry.get("TableName", "?")] += float(entry.get("CapacityUnits", 0.0))

    def count_s3(self, kind: Literal["put", "get"], size: int = 0) -> None:
        with self._lock:
            if kind == "put":
                self.s3_puts += 1
                self.s3_put_bytes += size
            else:
                self.s3_gets += 1

    def snapshot(self) -> dict[str, float]:
        """Totals so far: read_units, write_units, s3_puts, s3_gets, s3_put_bytes."""
        with self._lock:
            return {
                "read_units": sum(self.read_units.values()),
                "write_units": sum(self.write_units.values()),
                "s3_puts": float(self.s3_puts),
                "s3_gets": float(self.s3_gets),
                "s3_put_bytes": float(self.s3_put_bytes),
            }
