"""T-Developer state client: pipeline sessions, agent executions and user projects on DynamoDB.

Typed API: `StateClient` (blocking) and `AsyncStateClient` (awaitable), each with `.sessions`,
`.executions`, `.projects` and `.claims`; `PipelineRun` wraps an orchestrator's per-agent attempts.
The plan's dict API: `save_pipeline_session`, `update_agent_execution`, `get_failed_sessions`,
`save_user_project`, `resume_pipeline` (implemented by tdev-recovery-worker, found by entry point).
The other packages build on `tdev_state.storage.DynamoDoor` (DynamoDB only) or the client's
`tdev_state.layer.DynamoLayer`, and on `tdev_state.schema`.
"""

import logging

from tdev_state.adoption.resume_route import accept_resume, resume_app
from tdev_state.agents import PIPELINE, Agent
from tdev_state.client import AsyncStateClient, StateClient
from tdev_state.config import StateConfig
from tdev_state.exceptions import (
    AccessDeniedError,
    ClaimLostError,
    ConfigurationError,
    ConflictError,
    EncryptionError,
    ExecutionNotFoundError,
    ForkPointError,
    InvalidTransitionError,
    MalformedItemError,
    NotFoundError,
    PayloadIntegrityError,
    PayloadTooLargeError,
    ProjectNotFoundError,
    RefTakenError,
    ResumeBusyError,
    RunActiveError,
    RunExistsError,
    SessionExistsError,
    SessionNotFoundError,
    StaleResumeError,
    StateError,
    StorageError,
    StorageUnavailableError,
    TableMissingError,
    ValidationError,
)
from tdev_state.lineage import ForkChild, Lineage
from tdev_state.models import (
    AGENTS,
    AgentExecution,
    AgentStatus,
    AgentTransition,
    Page,
    PipelineType,
    RecoveryCandidate,
    RecoveryEvent,
    RecoveryHistory,
    RunPolicy,
    Session,
    SessionStatus,
    UserProject,
)
from tdev_state.payloads import LossyValue
from tdev_state.pipeline_run import (
    AgentStep,
    DeferPolicy,
    DeferredWrites,
    MetricsSink,
    PipelineRun,
    ProgressEvent,
    deferred_writes,
)
from tdev_state.plan import (
    configure,
    fork_pipeline,
    get_failed_sessions,
    resume_pipeline,
    save_pipeline_session,
    save_user_project,
    update_agent_execution,
)
from tdev_state.runs.claims import Claim
from tdev_state.runs.policy import LivenessObserver, RecoveryPolicy, RunFilter, Verdict

# A library is quiet unless the host configures logging (Python logging HOWTO, "Configuring Logging for a
# Library"): without this, Python would print our warnings to stderr through its last-resort handler.
logging.getLogger("tdev_state").addHandler(logging.NullHandler())

__all__ = [
    "AGENTS",
    "PIPELINE",
    "AccessDeniedError",
    "Agent",
    "AgentExecution",
    "AgentStatus",
    "AgentStep",
    "AgentTransition",
    "AsyncStateClient",
    "Claim",
    "ClaimLostError",
    "ConfigurationError",
    "ConflictError",
    "DeferPolicy",
    "DeferredWrites",
    "EncryptionError",
    "ExecutionNotFoundError",
    "ForkChild",
    "ForkPointError",
    "InvalidTransitionError",
    "Lineage",
    "LivenessObserver",
    "LossyValue",
    "MalformedItemError",
    "MetricsSink",
    "NotFoundError",
    "Page",
    "PayloadIntegrityError",
    "PayloadTooLargeError",
    "PipelineRun",
    "PipelineType",
    "ProgressEvent",
    "ProjectNotFoundError",
    "RecoveryCandidate",
    "RecoveryEvent",
    "RecoveryHistory",
    "RecoveryPolicy",
    "RefTakenError",
    "ResumeBusyError",
    "RunActiveError",
    "RunExistsError",
    "RunFilter",
    "RunPolicy",
    "Session",
    "SessionExistsError",
    "SessionNotFoundError",
    "SessionStatus",
    "StaleResumeError",
    "StateClient",
    "StateConfig",
    "StateError",
    "StorageError",
    "StorageUnavailableError",
    "TableMissingError",
    "UserProject",
    "ValidationError",
    "Verdict",
    "accept_resume",
    "configure",
    "deferred_writes",
    "fork_pipeline",
    "get_failed_sessions",
    "resume_app",
    "resume_pipeline",
    "save_pipeline_session",
    "save_user_project",
    "update_agent_execution",
]
