"""Every error the state client raises. One root, `StateError`; no botocore error reaches a caller.

Each message says what was wrong and how to fix it. Errors raised for bad input are raised before anything
is written.
"""

from __future__ import annotations

from typing import Any


class StateError(Exception):
    """Root of every error raised by tdev_state and the packages built on it."""


class ConfigurationError(StateError):
    """The client's configuration (env name, endpoint, bucket, limits) is unusable."""


class ValidationError(StateError, ValueError):
    """An argument is malformed: wrong type, missing key, unknown agent or status, non-JSON value, NaN."""


class NotFoundError(StateError, LookupError):
    """The addressed item does not exist."""


class SessionNotFoundError(NotFoundError):
    """No pipeline session has that session_id."""


class ExecutionNotFoundError(NotFoundError):
    """No agent execution exists for that (execution_id, agent_name)."""


class ProjectNotFoundError(NotFoundError):
    """No user project exists for that (user_id, project_id)."""


class ConflictError(StateError):
    """Another writer changed the item since it was read; re-read and decide again."""


class ClaimLostError(ConflictError):
    """A recovery claim's write was refused: another worker holds the run now (its fencing token moved on)."""


class SessionExistsError(ConflictError):
    """A session with that session_id already exists; creating it again would overwrite it."""


class RefTakenError(ConflictError):
    """A ref given to a new run already points at another run (refs are unique per env); nothing written."""

    def __init__(self, message: str, *, ref: str, run_id: str | None) -> None:
        super().__init__(message)
        self.ref = ref
        self.run_id = run_id


class RunExistsError(SessionExistsError):
    """`PipelineRun.open` was asked for a new run whose id is taken; resume it with `PipelineRun.resume`."""


class StaleResumeError(ConflictError):
    """A resume request's fencing token is older than the run's (another claim moved on), or was used."""


class ResumeBusyError(StateError):
    """This process still continues the run from an earlier resume: send the request again later (503)."""


class InvalidTransitionError(StateError):
    """The requested status/agent transition is not legal from the item's current state."""

    def __init__(self, message: str, *, current: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        #: The item's state at the moment the transition was refused (None if unknown).
        self.current = current


class RunActiveError(ConflictError):
    """A fork of a run that is ACTIVE or leased by a worker (or became so while the fork was written)."""


class ForkPointError(InvalidTransitionError):
    """A fork from an agent the run has not reached: an agent before it is not stored as finished."""


class MalformedItemError(StateError):
    """A stored item is not as the library writes it (an attribute missing, of the wrong type, or outside
    its values — e.g. edited by hand): the one item is unreadable; listings and recovery skip it."""

    def __init__(
        self, message: str, *, table: str, key: dict[str, Any], attribute: str, problem: str
    ) -> None:
        super().__init__(message)
        #: The table's logical name (pipeline-sessions, agent-executions, user-projects).
        self.table = table
        #: The item's primary key, as stored.
        self.key = key
        #: The attribute that could not be read, and what was wrong with it.
        self.attribute = attribute
        self.problem = problem


class PayloadTooLargeError(StateError):
    """A payload does not fit in a DynamoDB item and no payload bucket is configured to offload it."""


class StorageError(StateError):
    """DynamoDB or S3 refused a request for a reason other than the caller's input (bug, misconfiguration)."""


class TableMissingError(StorageError):
    """A table does not exist in this environment: create it (`make tables ENV=...`) or deploy infra."""


class StorageUnavailableError(StorageError):
    """The store stayed throttled, timed out or unreachable after every retry; retry later."""


class PayloadIntegrityError(StorageError):
    """A stored payload does not match its recorded checksum, or could not be decoded."""


class EncryptionError(StorageError):
    """KMS refused to make or open a data key for this caller (permissions, disabled key, wrong key id)."""


class AccessDeniedError(StorageError):
    """IAM does not allow this caller the call: the component runs with the wrong policy or role."""
