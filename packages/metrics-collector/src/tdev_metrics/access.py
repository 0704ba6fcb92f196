"""The metrics collector's AWS access, declared next to its code (see `tdev_state.access`).

Flushes are sequence-guarded UpdateItems on the metrics table; `tdev-metrics report` queries it. Nothing
else: the collector never sees sessions, executions, projects or payloads.
"""

from __future__ import annotations

from tdev_state.access import ComponentAccess, Grant
from tdev_state.schema import METRICS

METRICS_COLLECTOR = ComponentAccess(
    component="metrics-collector",
    description="tdev_metrics.MetricsCollector in the pipeline process, and `tdev-metrics report`.",
    grants=(Grant("table", frozenset({"dynamodb:UpdateItem", "dynamodb:Query"}), table=METRICS),),
)
