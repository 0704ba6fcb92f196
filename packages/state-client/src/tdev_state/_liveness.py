"""When this process last refreshed each session's liveness stamp (`alive_at`).

The recovery index is sorted by `alive_at`, so every change of it rewrites the index entry: a delete and a
put, 4 write units inside a transaction. Refreshing it at most once per interval per session — instead of
on every agent transition — removes most of that cost, while `last_updated` stays exact on the item.
A process that has not seen a session (a restart, a resuming worker) refreshes on its first write.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import datetime, timedelta


class LivenessStamps:
    """A bounded, thread-safe LRU of session_id -> the alive_at this process last wrote."""

    def __init__(self, interval: timedelta, capacity: int = 10_000) -> None:
        self._interval = interval
        self._capacity = capacity
        self._written: OrderedDict[str, datetime] = OrderedDict()
        self._lock = threading.Lock()

    def due(self, session_id: str, now: datetime) -> bool:
        """True if a write at `now` should refresh the session's alive_at."""
        with self._lock:
            last = self._written.get(session_id)
        return last is None or now - last >= self._interval

    def mark(self, session_id: str, written: datetime) -> None:
        """Record that alive_at was written (after the write succeeded)."""
        with self._lock:
            self._written[session_id] = written
            self._written.move_to_end(session_id)
            while len(self._written) > self._capacity:
                self._written.popitem(last=False)
