"""T-Developer recovery worker: finds failed and stalled pipeline runs and resumes each exactly once.

Run replicas with the `tdev-recovery-worker` console script; embed with `RecoveryWorker`; the plan's
`resume_pipeline(session_id)` performs one resume.
"""

import logging

from tdev_recovery.config import RetryPolicy, WorkerConfig
from tdev_recovery.exceptions import (
    ClaimLostError,
    NotRecoverableError,
    PipelineBusy,
    RecoveryError,
    ResumerConfigError,
    ResumeRejected,
)
from tdev_recovery.metrics import WorkerMetrics
from tdev_recovery.plan import abandon_pipeline, resume_pipeline
from tdev_recovery.resumers import CompletedAgent, HttpResumer, ResumeRequest, load_resumer
from tdev_recovery.worker import Outcome, RecoveryWorker

# A library is quiet unless the host configures logging (Python logging HOWTO, "Configuring Logging for a
# Library"): without this, Python would print our warnings to stderr through its last-resort handler.
logging.getLogger("tdev_recovery").addHandler(logging.NullHandler())

__all__ = [
    "ClaimLostError",
    "CompletedAgent",
    "HttpResumer",
    "NotRecoverableError",
    "Outcome",
    "PipelineBusy",
    "RecoveryError",
    "RecoveryWorker",
    "ResumeRejected",
    "ResumeRequest",
    "ResumerConfigError",
    "RetryPolicy",
    "WorkerConfig",
    "WorkerMetrics",
    "abandon_pipeline",
    "load_resumer",
    "resume_pipeline",
]
