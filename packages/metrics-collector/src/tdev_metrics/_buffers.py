"""The collector's memory: one buffer per recording thread, and the writes handed to delivery."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from tdev_metrics._aggregate import Aggregate
from tdev_metrics._store import Write


@dataclass(slots=True)
class Shard:
    """One thread's buffer. Only its thread writes it; a flush swaps `aggs` out under `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    aggs: dict[tuple[int, str, str, str | None], Aggregate] = field(default_factory=dict)
    records: int = 0
    #: True while its thread is inside record() (a signal handler on that thread must not flush).
    busy: bool = False


@dataclass
class Pending:
    """A key's data handed to delivery: writes not yet confirmed (kept verbatim for retries)."""

    writes: list[Write]
