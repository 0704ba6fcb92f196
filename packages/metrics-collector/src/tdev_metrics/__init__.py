"""T-Developer metrics collector: buffered, aggregated, exactly-once metrics from the pipeline to DynamoDB.

`MetricsCollector.record()` (or the plan's `await record_metric({...})`) costs about a microsecond and only
touches memory; flushes write one UpdateItem per key, exactly once. `MetricsReader` reads hourly/daily
summaries with percentiles and A/B comparisons; `tdev-metrics report` prints and charts them.
"""

import logging

from tdev_metrics.collector import CollectorConfig, MetricsCollector, install_signal_handlers
from tdev_metrics.exceptions import (
    BufferFullError,
    CollectorClosedError,
    MetricsError,
    MetricValidationError,
)
from tdev_metrics.plan import configure, record_metric
from tdev_metrics.report import Comparison, Interval, MetricsReader, Summary

# A library is quiet unless the host configures logging (Python logging HOWTO, "Configuring Logging for a
# Library"): without this, Python would print our warnings to stderr through its last-resort handler.
logging.getLogger("tdev_metrics").addHandler(logging.NullHandler())

__all__ = [
    "BufferFullError",
    "CollectorClosedError",
    "CollectorConfig",
    "Comparison",
    "Interval",
    "MetricValidationError",
    "MetricsCollector",
    "MetricsError",
    "MetricsReader",
    "Summary",
    "configure",
    "install_signal_handlers",
    "record_metric",
]
