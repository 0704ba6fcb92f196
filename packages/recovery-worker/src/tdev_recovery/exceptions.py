"""Errors of the recovery worker. All derive from `RecoveryError`, itself a `tdev_state.StateError`."""

from __future__ import annotations

from tdev_state.exceptions import ClaimLostError, StateError

__all__ = [
    "ClaimLostError",
    "IncompleteRecordError",
    "LiveRunError",
    "NotRecoverableError",
    "PipelineBusy",
    "RecoveryError",
    "ResumeRejected",
    "ResumerConfigError",
]


class RecoveryError(StateError):
    """Root of every error raised by tdev_recovery."""


class ResumerConfigError(RecoveryError):
    """The resumer spec (`module:function` or an http(s) URL) cannot be loaded."""


class ResumeRejected(RecoveryError):
    """The pipeline refused or failed a resume request; `retryable` says whether to try again."""

    def __init__(self, message: str, *, retryable: bool, stale: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        #: The pipeline has seen a newer fencing token: another worker owns this run now.
        self.stale = stale


class PipelineBusy(ResumeRejected):
    """The pipeline is busy (HTTP 429/503, no answer within the timeout, or a resumer's own "busy"): back-
    pressure, not a failed resume. The worker waits and sends the same request again without using an
    attempt, for at most `WorkerConfig.busy_timeout` per attempt."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message, retryable=True)
        #: Seconds the pipeline asked to wait (HTTP Retry-After), if it said.
        self.retry_after = retry_after


class NotRecoverableError(RecoveryError):
    """The session is not open (COMPLETED/ABANDONED), or is leased by a live worker."""


class LiveRunError(NotRecoverableError):
    """The run is live — inside its declared window, its resume's cool-down, or not yet confirmed stalled
    by this claimer's own observation: pass `force=True` to take it anyway."""

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        #: The recovery rule's reason alone (`Verdict.reason`), for callers that word their own refusal.
        self.reason = reason or message


class IncompleteRecordError(RecoveryError):
    """The run's stored record is not whole: an agent it finished has no item (expired or deleted) or not the
    status its progress says. Never resumed as if whole: the worker abandons it with this reason."""
