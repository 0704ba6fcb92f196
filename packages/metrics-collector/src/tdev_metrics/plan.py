"""`record_metric({...})`, the plan's call, on a process-wide collector built from the environment."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from tdev_metrics.collector import MetricsCollector
from tdev_metrics.exceptions import MetricValidationError
from tdev_state import StateClient
from tdev_state.usage import register_plan_sink

_KEYS = frozenset({"metric_name", "agent_name", "value", "timestamp", "error", "variant"})
_default: MetricsCollector | None = None
_lock = threading.Lock()


def configure(collector: MetricsCollector | None) -> None:
    """Set the collector record_metric uses (None: build one from the environment on next use)."""
    global _default  # noqa: PLW0603 - the one process-wide collector of the plan's call
    with _lock:
        _default = collector


def default_collector() -> MetricsCollector:
    """The process-wide collector (created on first use; it flushes at exit)."""
    global _default  # noqa: PLW0603
    with _lock:
        if _default is None:
            _default = MetricsCollector(StateClient())
        return _default


async def record_metric(metric: Mapping[str, Any]) -> None:
    """`await record_metric({"metric_name": ..., "agent_name": ..., "value": t, "timestamp": ...})`.

    Only updates memory (microseconds); awaiting it never waits for DynamoDB.
    """
    if not isinstance(metric, Mapping):
        raise MetricValidationError(f"record_metric takes a dict, got {type(metric).__name__}")
    missing = [k for k in ("metric_name", "agent_name", "value") if k not in metric]
    if missing:
        raise MetricValidationError(f"record_metric: missing key(s) {', '.join(missing)}")
    unknown = sorted(repr(k)[:40] for k in set(metric) - _KEYS)  # repr: keys may be of mixed types
    if unknown:
        raise MetricValidationError(
            f"record_metric: unknown key(s) {', '.join(unknown)}; accepted: {', '.join(sorted(_KEYS))}"
        )
    default_collector().record(
        metric["metric_name"],
        metric["value"],
        agent_name=metric["agent_name"],
        timestamp=metric.get("timestamp"),
        error=metric.get("error", False),
        variant=metric.get("variant"),
    )


def _new_lock_in_child() -> None:
    # Another thread of the parent may have held the lock at fork(); it does not exist in the child.
    global _lock  # noqa: PLW0603
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)

# The plan's process-wide state client counts usage into the process-wide collector: a pipeline that uses
# the plan's record_metric gets usage counting with it, and one that does not pays nothing.
register_plan_sink(default_collector)
