"""Errors of the recovery worker. All derive from `RecoveryError`, itself a `tdev_state.StateError`."""

from __future__ import annotations

from tdev_state.exceptions import ClaimLostError, StateError

__all__ = [
    "ClaimLostError",
    "LiveRunError",
    "NotRecoverableError",
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


class NotRecoverableError(RecoveryError):
    """The session is not open (COMPLETED/ABANDONED), or is leased by a live worker."""


class LiveRunError(NotRecoverableError):
    """The run is live — inside its declared window, its resume's cool-down, or not yet confirmed stalled
    by this claimer's own observation: pass `force=True` to take it anyway."""
