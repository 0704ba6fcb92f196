"""T-Developer recovery worker: finds failed and stalled pipeline runs and resumes each exactly once.

Run replicas with the `tdev-recovery-worker` console script; embed a `RecoveryWorker` (`run()` /
`shutdown()` / `async with`, and `resume_now` / `abandon_now` for one run); the plan's `resume_pipeline`
and `abandon_pipeline` act on one run. Everything a caller needs is named here; the modules behind it are
the implementation.
"""

import logging

from tdev_recovery.config import RetryPolicy, WorkerConfig, recovery_policy
from tdev_recovery.exceptions import (
    ClaimLostError,
    IncompleteRecordError,
    LiveRunError,
    NotRecoverableError,
    PipelineBusy,
    RecoveryError,
    ResumerConfigError,
    ResumeRejected,
)
from tdev_recovery.metrics import WorkerMetrics
from tdev_recovery.ops import OpsServer
from tdev_recovery.outcomes import ActionResult, Outcome
from tdev_recovery.plan import abandon_pipeline, resume_pipeline
from tdev_recovery.resumers import CompletedAgent, HttpResumer, Resumer, ResumeRequest, load_resumer
from tdev_recovery.worker import RecoveryWorker

# A library is quiet unless the host configures logging (Python logging HOWTO, "Configuring Logging for a
# Library"): without this, Python would print our warnings to stderr through its last-resort handler.
logging.getLogger("tdev_recovery").addHandler(logging.NullHandler())

__all__ = [
    "ActionResult",
    "ClaimLostError",
    "CompletedAgent",
    "HttpResumer",
    "IncompleteRecordError",
    "LiveRunError",
    "NotRecoverableError",
    "OpsServer",
    "Outcome",
    "PipelineBusy",
    "RecoveryError",
    "RecoveryWorker",
    "ResumeRejected",
    "ResumeRequest",
    "Resumer",
    "ResumerConfigError",
    "RetryPolicy",
    "WorkerConfig",
    "WorkerMetrics",
    "abandon_pipeline",
    "load_resumer",
    "recovery_policy",
    "resume_pipeline",
]
