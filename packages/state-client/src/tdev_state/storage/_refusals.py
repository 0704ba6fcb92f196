"""Error translation at the boundary: every botocore error becomes this package's own.

A false condition surfaces as `ConditionFailed` / `TransactionCancelled` carrying the item as it was
(`ReturnValuesOnConditionCheckFailure=ALL_OLD`), so callers classify a refusal without a second read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from tdev_state.config import StateConfig
from tdev_state.exceptions import (
    AccessDeniedError,
    PayloadTooLargeError,
    StateError,
    StorageError,
    StorageUnavailableError,
    TableMissingError,
    ValidationError,
)
from tdev_state.storage._marshal import Item, deserialize

T = TypeVar("T")

THROTTLING = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "Throttling",
        "SlowDown",
    }
)
#: Cancellation reason codes of a transaction refused for capacity, not for a condition or a conflict.
THROTTLED_REASONS = frozenset({"ProvisionedThroughputExceeded", "ThrottlingError", "RequestLimitExceeded"})
UNAVAILABLE_ERRORS = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ReadTimeoutError,
    ConnectionClosedError,
)


class ConditionFailed(StateError):
    """A single-item write's condition was false; `old_item` is the item as it was (None if absent)."""

    def __init__(self, old_item: Item | None) -> None:
        super().__init__("condition check failed")
        self.old_item = old_item


@dataclass(frozen=True)
class CancellationReason:
    """Why one action of a cancelled transaction failed, with the item as it was."""

    code: str
    old_item: Item | None
    message: str = ""


class TransactionCancelled(StateError):
    """A transaction's condition failed; `reasons[i]` belongs to action i (code "None" where it held)."""

    def __init__(self, reasons: list[CancellationReason]) -> None:
        super().__init__("transaction cancelled: " + ", ".join(r.code for r in reasons))
        self.reasons = reasons


def guarded(config: StateConfig, op: str, target: str, call: Callable[[], T]) -> T:
    """The error boundary: every botocore error of a call becomes this package's (missing credentials,
    TLS and streaming failures included); a false condition becomes ConditionFailed with the old item."""
    try:
        return call()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "ConditionalCheckFailedException":
            raise ConditionFailed(deserialize(exc.response.get("Item"))) from None  # type: ignore[arg-type]
        raise translate(config, exc, op, target) from None
    except UNAVAILABLE_ERRORS as exc:
        raise unavailable(config, exc, op, target) from None
    except NoCredentialsError:
        raise AccessDeniedError(
            f"{op} on {target}: no AWS credentials were found; configure them as boto3 does "
            "(environment, profile, role), or point at LocalStack (AWS_ENDPOINT_URL)"
        ) from None
    except (BotoCoreError, OSError) as exc:
        raise StorageUnavailableError(f"{op} on {target} failed: {type(exc).__name__}: {exc}") from None


def translate(config: StateConfig, exc: ClientError, op: str, target: str) -> StateError:  # noqa: PLR0911
    """The StateError a refused AWS request stands for (a table of codes)."""
    error = exc.response.get("Error", {})
    code, message = error.get("Code", "Unknown"), error.get("Message", "")
    if code == "ResourceNotFoundException":
        return TableMissingError(
            f"{op}: {target} does not exist in env {config.env!r}; create the tables "
            f"(`make tables ENV={config.env}`) or deploy infra (`make deploy ENV=...`)"
        )
    if code in ("AccessDeniedException", "AccessDenied"):
        return AccessDeniedError(
            f"{op} on {target} was denied by IAM ({message}); run this component with the policy "
            "infra creates for it (t-developer-{env}-<component>, see infra/README.md)"
        )
    if code in ("NoSuchBucket", "NoSuchKey", "404"):
        return StorageError(f"{op}: {target}: {code}; check payload_bucket and its lifecycle")
    if code in THROTTLING:
        return StorageUnavailableError(
            f"{op} on {target} was throttled on all {config.max_attempts} attempts "
            f"({code}); nothing was written by the failed call, retry later or raise capacity"
        )
    if code == "ValidationException" and "size" in message.lower():
        return PayloadTooLargeError(
            f"{op} on {target}: {message}; configure a payload bucket (TDEV_PAYLOAD_BUCKET)"
        )
    if code == "ValidationException":  # the request can never succeed as sent: not worth a retry
        return ValidationError(f"{op} on {target} was refused by DynamoDB as invalid: {message}")
    if code in ("InternalServerError", "ServiceUnavailable", "InternalFailure"):
        return StorageUnavailableError(f"{op} on {target} failed after retries: {code}")
    return StorageError(f"{op} on {target} failed: {code}: {message}")


def unavailable(config: StateConfig, exc: Exception, op: str, target: str) -> StorageUnavailableError:
    """An endpoint that did not answer, after botocore's retries."""
    where = config.endpoint_url or f"AWS {config.region}"
    return StorageUnavailableError(
        f"{op} on {target}: {where} did not answer ({type(exc).__name__}) after "
        f"{config.max_attempts} attempts; is it running? (`make localstack-up` for local)"
    )
