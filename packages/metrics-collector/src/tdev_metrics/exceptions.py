"""Errors of the metrics collector. All derive from `MetricsError`, itself a `tdev_state.StateError`."""

from __future__ import annotations

from tdev_state.exceptions import StateError, ValidationError


class MetricsError(StateError):
    """Root of every error raised by tdev_metrics."""


class MetricValidationError(MetricsError, ValidationError):
    """A record() argument is malformed: name, agent, value (NaN/inf/non-number), timestamp, variant."""


class BufferFullError(MetricsError):
    """The buffer holds its maximum number of keys and the overflow policy is "raise"."""


class CollectorClosedError(MetricsError):
    """record() was called after close()."""
