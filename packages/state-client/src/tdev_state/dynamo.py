"""The one DynamoDB (and payload S3) access layer shared by the state client, the worker and the collector.

It owns what must exist exactly once: client creation (botocore *standard* retries, timeouts, a pool as large
as the async API's thread pool), marshalling (Python floats become exact Decimals; NaN/Infinity are refused),
translation of every botocore error into a `tdev_state.exceptions` error, our own bounded retry of
transactions cancelled by a *concurrent transaction* (botocore never retries TransactionCanceled), and a
meter of the read/write units DynamoDB reports, which the benchmarks and the demo print.

Condition failures surface as `ConditionFailed` / `TransactionCancelled` carrying the item as it was
(`ReturnValuesOnConditionCheckFailure=ALL_OLD`), so callers classify a refusal without a second read.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import math
import random
import secrets
import threading
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Context, Decimal, Inexact, Rounded
from typing import TYPE_CHECKING, Any, Literal

import boto3
from boto3.dynamodb.types import Binary, TypeDeserializer, TypeSerializer
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
)

from tdev_state._chunks import ChunkNames
from tdev_state._crypto import FieldCipher
from tdev_state._jsonform import safe_repr
from tdev_state.config import StateConfig
from tdev_state.exceptions import (
    AccessDeniedError,
    ConfigurationError,
    ConflictError,
    PayloadTooLargeError,
    StateError,
    StorageError,
    StorageUnavailableError,
    TableMissingError,
    ValidationError,
)
from tdev_state.log import get_logger
from tdev_state.usage import UsageEmitter

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_s3 import S3Client

log = get_logger(__name__)

Item = dict[str, Any]
_THROTTLING = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "Throttling",
        "SlowDown",
    }
)
#: Cancellation reason codes of a transaction refused for capacity, not for a condition or a conflict.
_THROTTLED_REASONS = frozenset({"ProvisionedThroughputExceeded", "ThrottlingError", "RequestLimitExceeded"})
_UNAVAILABLE_ERRORS = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ReadTimeoutError,
    ConnectionClosedError,
)
# DynamoDB numbers carry 38 significant digits; repr() of a float needs at most 17.
_DECIMAL_CONTEXT = Context(prec=38, traps=[Inexact, Rounded])


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


def to_dynamo(value: Any, *, path: str = "value") -> Any:
    """Convert a Python value for DynamoDB: floats to exact Decimals, tuples to lists; refuse NaN/Infinity."""
    if isinstance(value, bool) or value is None or isinstance(value, str | bytes):
        return value
    if isinstance(value, int | Decimal):
        return _in_range(value, path)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(
                f"{path} is {value!r}: DynamoDB cannot store NaN or Infinity; "
                "send a finite number, or null for a missing value"
            )
        # repr() is the shortest text that reads back as the same float, so the round trip is exact.
        return _in_range(_DECIMAL_CONTEXT.create_decimal(repr(value)), path)
    if isinstance(value, Mapping):
        for k in value:
            if not isinstance(k, str):  # str(k) could merge 1 and "1" into one attribute, silently
                raise ValidationError(
                    f"{path} has a key of type {type(k).__name__} ({safe_repr(k, 40)}); DynamoDB map keys "
                    "are strings: convert the keys yourself (two keys with the same text would merge)"
                )
        return {k: to_dynamo(v, path=f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_dynamo(v, path=f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, set | frozenset):
        return {to_dynamo(v, path=path) for v in value}
    raise ValidationError(f"{path} has type {type(value).__name__}, which DynamoDB cannot store")


_LARGEST = Decimal("1E126")
_SMALLEST = Decimal("1E-130")


def _in_range(number: int | Decimal, path: str) -> int | Decimal:
    """DynamoDB's real number limits: magnitude below 1e126, at least 1e-130 unless zero."""
    try:
        size = abs(Decimal(number))
        fits = not size or _SMALLEST <= size < _LARGEST
    except ArithmeticError:
        fits = False
    if not fits:
        raise ValidationError(
            f"{path} is {_number_text(number)}: DynamoDB numbers must be 0 or have a magnitude from 1e-130 "
            "to 9.99e125 (38 significant digits)"
        )
    return number


def _number_text(number: int | Decimal) -> str:
    """A number for a message, however large (str() of an int over 4,300 digits raises ValueError)."""
    if isinstance(number, int) and number.bit_length() > 1_000:
        return f"an integer of about {int(number.bit_length() * 0.30103)} digits"
    return str(number)[:40]


@dataclass
class CapacityMeter:
    """Read/write units DynamoDB reported (ReturnConsumedCapacity=TOTAL), per table; thread-safe."""

    read_units: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    write_units: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    s3_puts: int = 0
    s3_gets: int = 0
    s3_put_bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, kind: Literal["read", "write"], consumed: Any) -> None:
        entries = consumed if isinstance(consumed, list) else [consumed] if consumed else []
        with self._lock:
            target = self.read_units if kind == "read" else self.write_units
            for entry in entries:
                target[entry.get("TableName", "?")] += float(entry.get("CapacityUnits", 0.0))

    def count_s3(self, kind: Literal["put", "get"], size: int = 0) -> None:
        with self._lock:
            if kind == "put":
                self.s3_puts += 1
                self.s3_put_bytes += size
            else:
                self.s3_gets += 1

    def snapshot(self) -> dict[str, float]:
        """Totals so far: read_units, write_units, s3_puts, s3_gets, s3_put_bytes."""
        with self._lock:
            return {
                "read_units": sum(self.read_units.values()),
                "write_units": sum(self.write_units.values()),
                "s3_puts": float(self.s3_puts),
                "s3_gets": float(self.s3_gets),
                "s3_put_bytes": float(self.s3_put_bytes),
            }


@dataclass(frozen=True)
class TransactAction:
    """One action of a TransactWriteItems call, in Python values (the layer marshals it)."""

    kind: Literal["Put", "Update", "ConditionCheck", "Delete"]
    table: str
    key: Mapping[str, Any] | None = None
    item: Mapping[str, Any] | None = None
    update: str | None = None
    condition: str | None = None
    names: Mapping[str, str] | None = None
    values: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class QueryPage:
    """One page of a Query: the items and the key to continue from (None on the last page)."""

    items: list[Item]
    last_key: Item | None


def _boto_session(config: StateConfig) -> boto3.session.Session:
    """The session a layer signs with: LocalStack's test credentials for the local target, else boto3's
    chain (with the configured profile, if any)."""
    if config.local_credentials:
        return boto3.session.Session(
            region_name=config.region,
            aws_access_key_id="test",
            aws_secret_access_key="test",  # noqa: S106
        )
    try:
        return boto3.session.Session(region_name=config.region, profile_name=config.profile)
    except ProfileNotFound:
        raise ConfigurationError(
            f"AWS profile {config.profile!r:.60} is not in the AWS config files: pick another with "
            "--profile / AWS_PROFILE"
        ) from None


@dataclass
class PayloadWrite:
    """One public call's payload objects (see `DynamoLayer.payload_scope`).

    `id` is part of every object name the call creates, so its objects are private to it: no other write
    can refer to them until the call is acknowledged and `chunks` (sha256 key -> object name) is published
    to the layer's `chunk_names`."""

    id: str = field(default_factory=lambda: secrets.token_hex(8))
    #: Object keys this call PUT (a 412 on its own, private key means an earlier attempt of this call did).
    created: list[str] = field(default_factory=list)
    #: Chunks this call stored, published for later writes once the call is acknowledged.
    chunks: dict[str, str] = field(default_factory=dict)
    #: Set by `mark_unused()`: the call returned, but nothing it wrote refers to its objects.
    unused: bool = False
    #: The layer whose scope this is (a call on another client, even nested, has a write of its own).
    owner: int = 0

    def mark_unused(self) -> None:
        """The call ended without writing a reference to its objects (a duplicate): take them back."""
        self.unused = True


#: The payload write of the current call (None outside a payload scope).
_CURRENT_WRITE: contextvars.ContextVar[PayloadWrite | None] = contextvars.ContextVar(
    "tdev_payload_write", default=None
)
#: Refusals that leave the outcome at DynamoDB unknown (the request may have landed, or land later): the
#: objects such a call created are never deleted inline, whatever a read says.
_OUTCOME_UNKNOWN: tuple[type[StateError], ...] = (StorageUnavailableError,)


def current_write() -> PayloadWrite | None:
    """The payload write of the call running in this context, if it runs in a payload scope."""
    return _CURRENT_WRITE.get()


#: PutObject with If-None-Match: the object exists (412), or another upload of it is in flight (409).
_ALREADY_THERE = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})


def _searchable(value: Any) -> str:  # noqa: PLR0911 - one return per stored form
    """An attribute's text, to look for object references in: JSON text as is, compressed text
    decompressed, maps and lists as JSON (an offloaded field's `{"s3": {"key": …}}`). A sealed inline
    value holds a payload, never a reference: sealed payloads are not chunked, and a sealed offloaded
    payload is referred to by an unsealed map."""
    if isinstance(value, Binary):
        value = value.__bytes__()
    if isinstance(value, bytes | bytearray):
        body = bytes(value)
        if body.startswith(b"\x01"):
            try:
                return zlib.decompress(body[1:]).decode("utf-8", "replace")
            except zlib.error:
                return ""
        if body.startswith(b"\x00"):
            return body[1:].decode("utf-8", "replace")
        return ""  # sealed (see above)
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return ""


class DynamoLayer:
    """DynamoDB and payload-S3 access for one environment. Create one per process and share it.

    Clients may be injected (moto, LocalStack, a pre-configured session); otherwise they are created here,
    once, from the config. boto3 clients are thread-safe, so one layer serves every thread.
    """

    def __init__(
        self,
        config: StateConfig,
        *,
        session: boto3.session.Session | None = None,
        dynamodb: DynamoDBClient | None = None,
        s3: S3Client | None = None,
    ) -> None:
        self.config = config
        self.tables = config.tables
        self.meter = CapacityMeter()
        #: Chunks of this process's acknowledged writes: a subtree stored once is referred to, not PUT again.
        self.chunk_names = ChunkNames()
        self._serializer = TypeSerializer()
        self._deserializer = TypeDeserializer()
        boto_config = BotoConfig(
            region_name=config.region,
            retries={"mode": "standard", "total_max_attempts": config.max_attempts},
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            max_pool_connections=config.max_pool_connections,
            tcp_keepalive=True,
            s3={"addressing_style": "path"} if config.endpoint_url else None,
        )
        boto_session = session or _boto_session(config)
        self._boto_session, self._boto_config = boto_session, boto_config
        #: The boto3 session (credentials) this layer's clients use; share it to act as the same principal.
        self.session = boto_session
        self.dynamodb: DynamoDBClient = dynamodb or boto_session.client(
            "dynamodb", endpoint_url=config.endpoint_url, config=boto_config
        )
        self.s3: S3Client | None = s3
        self._probe_client: DynamoDBClient | None = None
        #: Usage events of this client's stores (a no-op until a sink, the metrics collector, attaches).
        self.usage = UsageEmitter()
        #: Payload objects deleted because the call that created them was refused (payload_scope).
        self.discarded_objects = 0
        #: Payload objects left to the bucket's lifecycle (their call's outcome unknown, or cleanup failed).
        self.orphaned_objects = 0
        self._counts_lock = threading.Lock()
        if self.s3 is None and config.payload_bucket:
            self.s3 = boto_session.client("s3", endpoint_url=config.endpoint_url, config=boto_config)

    @functools.cached_property
    def cipher(self) -> FieldCipher:
        """The field cipher (KMS data keys, AES-GCM); ConfigurationError when no KMS key is configured."""
        if not self.config.kms_key_id:
            raise ConfigurationError(
                "a sealed payload needs a KMS key: set kms_key_id (TDEV_KMS_KEY_ID) to the key it was "
                "sealed with"
            )
        return FieldCipher(
            self.extra_client("kms"),
            self.config.kms_key_id,
            env=self.config.env,
            max_age_seconds=self.config.data_key_max_age_seconds,
            max_uses=self.config.data_key_max_uses,
        )

    def extra_client(self, service: str) -> Any:
        """Another AWS client (e.g. "cloudwatch") with this layer's session, endpoint and retries."""
        return self._boto_session.client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.config.endpoint_url,
            config=self._boto_config,
        )

    # --- marshalling -----------------------------------------------------------------------------------

    def serialize(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """Python values to DynamoDB's wire format (after `to_dynamo`); a number DynamoDB cannot hold
        (beyond 9.99e125, below 1e-130, or more than 38 digits) is a ValidationError, not a raw decimal
        error."""
        out: dict[str, Any] = {}
        for key, value in item.items():
            try:
                out[key] = self._serializer.serialize(to_dynamo(value, path=key))
            except (ArithmeticError, TypeError) as exc:
                raise ValidationError(
                    f"{key} holds a number DynamoDB cannot store ({type(exc).__name__}): its numbers have "
                    "at most 38 significant digits and a magnitude between 1e-130 and 9.99e125"
                ) from None
        return out

    def deserialize(self, item: Mapping[str, Any] | None) -> Item | None:
        """DynamoDB's wire format to Python values (numbers come back as Decimal, binary as bytes)."""
        if item is None:
            return None
        out: Item = {}
        for k, v in item.items():
            value = self._deserializer.deserialize(v)
            out[k] = value.value if isinstance(value, Binary) else value  # type: ignore[attr-defined]
        return out

    def _expression_args(
        self,
        *,
        condition: str | None,
        names: Mapping[str, str] | None,
        values: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if condition:
            args["ConditionExpression"] = condition
        if names:
            args["ExpressionAttributeNames"] = dict(names)
        if values:
            args["ExpressionAttributeValues"] = self.serialize(values)
        return args

    # --- single-item operations -------------------------------------------------------------------------

    def get(
        self,
        table: str,
        key: Mapping[str, Any],
        *,
        consistent: bool = True,
        attributes: Sequence[str] | None = None,
    ) -> Item | None:
        """GetItem; None when absent. Strongly consistent by default: state is read to be written."""
        args: dict[str, Any] = {"TableName": table, "Key": self.serialize(key)}
        args["ConsistentRead"] = consistent
        args["ReturnConsumedCapacity"] = "TOTAL"
        if attributes:
            args["ProjectionExpression"] = ", ".join(f"#p{i}" for i in range(len(attributes)))
            args["ExpressionAttributeNames"] = {f"#p{i}": a for i, a in enumerate(attributes)}
        resp = self._call("GetItem", table, self.dynamodb.get_item, args)
        self.meter.record("read", resp.get("ConsumedCapacity"))
        return self.deserialize(resp.get("Item"))

    def put(
        self,
        table: str,
        item: Mapping[str, Any],
        *,
        condition: str | None = None,
        names: Mapping[str, str] | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> None:
        """PutItem; raises ConditionFailed (with the existing item) when `condition` is false."""
        args: dict[str, Any] = {
            "TableName": table,
            "Item": self.serialize(item),
            "ReturnConsumedCapacity": "TOTAL",
            **self._expression_args(condition=condition, names=names, values=values),
        }
        if condition:
            args["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        resp = self._call("PutItem", table, self.dynamodb.put_item, args)
        self.meter.record("write", resp.get("ConsumedCapacity"))

    def update(
        self,
        table: str,
        key: Mapping[str, Any],
        *,
        update: str,
        condition: str | None = None,
        names: Mapping[str, str] | None = None,
        values: Mapping[str, Any] | None = None,
        return_values: Literal["NONE", "ALL_NEW", "ALL_OLD", "UPDATED_NEW"] = "NONE",
    ) -> Item | None:
        """UpdateItem; returns the requested image; ConditionFailed carries the item as it was."""
        args: dict[str, Any] = {
            "TableName": table,
            "Key": self.serialize(key),
            "UpdateExpression": update,
            "ReturnValues": return_values,
            "ReturnConsumedCapacity": "TOTAL",
            **self._expression_args(condition=condition, names=names, values=values),
        }
        if condition:
            args["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        resp = self._call("UpdateItem", table, self.dynamodb.update_item, args)
        self.meter.record("write", resp.get("ConsumedCapacity"))
        return self.deserialize(resp.get("Attributes"))

    def delete(self, table: str, key: Mapping[str, Any]) -> Item | None:
        """DeleteItem, unconditional (so a retried delete succeeds); returns the deleted item or None."""
        args: dict[str, Any] = {
            "TableName": table,
            "Key": self.serialize(key),
            "ReturnValues": "ALL_OLD",
            "ReturnConsumedCapacity": "TOTAL",
        }
        resp = self._call("DeleteItem", table, self.dynamodb.delete_item, args)
        self.meter.record("write", resp.get("ConsumedCapacity"))
        return self.deserialize(resp.get("Attributes"))

    # --- multi-item operations --------------------------------------------------------------------------

    def query(
        self,
        table: str,
        *,
        key_condition: str,
        names: Mapping[str, str] | None = None,
        values: Mapping[str, Any] | None = None,
        index: str | None = None,
        forward: bool = True,
        limit: int | None = None,
        start_key: Mapping[str, Any] | None = None,
        consistent: bool = False,
    ) -> QueryPage:
        """One Query page. Consistent reads are not available on a GSI; pass consistent=False there."""
        args: dict[str, Any] = {
            "TableName": table,
            "KeyConditionExpression": key_condition,
            "ScanIndexForward": forward,
            "ConsistentRead": consistent,
            "ReturnConsumedCapacity": "TOTAL",
            **self._expression_args(condition=None, names=names, values=values),
        }
        if index:
            args["IndexName"] = index
        if limit:
            args["Limit"] = limit
        if start_key:
            args["ExclusiveStartKey"] = self.serialize(start_key)
        resp = self._call("Query", table, self.dynamodb.query, args)
        self.meter.record("read", resp.get("ConsumedCapacity"))
        items = [self.deserialize(i) or {} for i in resp.get("Items", [])]
        return QueryPage(items=items, last_key=self.deserialize(resp.get("LastEvaluatedKey")))

    def query_all(self, table: str, **kwargs: Any) -> Iterator[Item]:
        """Every item a Query matches, following LastEvaluatedKey."""
        start_key: Item | None = None
        while True:
            page = self.query(table, start_key=start_key, **kwargs)
            yield from page.items
            if page.last_key is None:
                return
            start_key = page.last_key

    def batch_get(
        self, table: str, keys: Sequence[Mapping[str, Any]], *, consistent: bool = True
    ) -> list[Item]:
        """BatchGetItem in chunks of 100, retrying UnprocessedKeys with backoff; order follows `keys`."""
        found: dict[tuple[Any, ...], Item] = {}
        key_names = tuple(keys[0].keys()) if keys else ()
        for start in range(0, len(keys), 100):
            pending: list[dict[str, Any]] = [self.serialize(k) for k in keys[start : start + 100]]
            attempt = 0
            while pending:
                args: dict[str, Any] = {
                    "RequestItems": {table: {"Keys": pending, "ConsistentRead": consistent}},
                    "ReturnConsumedCapacity": "TOTAL",
                }
                resp = self._call("BatchGetItem", table, self.dynamodb.batch_get_item, args)
                self.meter.record("read", resp.get("ConsumedCapacity"))
                for raw in resp.get("Responses", {}).get(table, []):
                    item = self.deserialize(raw) or {}
                    found[tuple(item[k] for k in key_names)] = item
                pending = list(resp.get("UnprocessedKeys", {}).get(table, {}).get("Keys", []))
                if pending:
                    if attempt >= self.config.max_attempts:
                        raise StorageUnavailableError(
                            f"BatchGetItem on {table}: {len(pending)} key(s) stayed unprocessed (throttled) "
                            f"after {attempt + 1} attempts; retry later or raise capacity"
                        )
                    attempt = self._backoff(attempt, "BatchGetItem", table)
        return [
            found[tuple(k[n] for n in key_names)] for k in keys if tuple(k[n] for n in key_names) in found
        ]

    def transact_write(self, actions: Sequence[TransactAction], *, token: str) -> None:
        """TransactWriteItems with an idempotency token (a retry with the same token is a no-op).

        A cancellation caused by a concurrent transaction on the same items is retried here, bounded,
        with the same token; one caused by a false condition raises TransactionCancelled at once.
        """
        request = [self._transact_item(a) for a in actions]
        tables = ",".join(sorted({a.table for a in actions}))
        attempt = 0
        while True:
            try:
                resp = self.dynamodb.transact_write_items(
                    TransactItems=request,  # type: ignore[arg-type]
                    ClientRequestToken=token,
                    ReturnConsumedCapacity="TOTAL",
                )
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code == "TransactionCanceledException":
                    reasons = [
                        CancellationReason(
                            code=r.get("Code", "None"),
                            old_item=self.deserialize(r.get("Item")),
                            message=r.get("Message", ""),
                        )
                        for r in exc.response.get("CancellationReasons", [])
                    ]
                    codes = {r.code for r in reasons}
                    if "ConditionalCheckFailed" in codes:
                        raise TransactionCancelled(reasons) from None
                    if "ValidationError" in codes:
                        detail = "; ".join(r.message for r in reasons if r.message)
                        if "size" in detail.lower():
                            raise PayloadTooLargeError(
                                f"an item in this write exceeds DynamoDB's 400 KB limit ({detail}); "
                                "configure a payload bucket (TDEV_PAYLOAD_BUCKET) to offload payloads"
                            ) from None
                        raise StorageError(f"TransactWriteItems refused: {detail}") from None
                    if attempt >= self.config.transaction_conflict_retries:
                        if codes & _THROTTLED_REASONS:
                            raise StorageUnavailableError(
                                f"transaction on {tables} was throttled ({', '.join(sorted(codes))}) on "
                                f"{attempt + 1} attempts; nothing was written, retry later or raise capacity"
                            ) from None
                        raise ConflictError(
                            f"transaction on {tables} kept conflicting with concurrent writers "
                            f"({', '.join(sorted(codes))}) after {attempt + 1} attempts; retry later"
                        ) from None
                    attempt = self._backoff(attempt, "TransactWriteItems", tables, reason=codes)
                    continue
                if code == "TransactionInProgressException":
                    # The same token is still being applied by an earlier attempt: wait for its outcome.
                    if attempt >= self.config.transaction_conflict_retries:
                        raise StorageUnavailableError(
                            "a transaction with this token is still in progress; retry later"
                        ) from None
                    attempt = self._backoff(attempt, "TransactWriteItems", tables, reason={code})
                    continue
                if code == "IdempotentParameterMismatchException":
                    raise ConflictError(
                        "this idempotency token was already used for a different write; "
                        "a retried call must send the same values"
                    ) from None
                raise self._translate(exc, "TransactWriteItems", tables) from None
            except _UNAVAILABLE_ERRORS as exc:
                raise self._unavailable(exc, "TransactWriteItems", tables) from None
            except BotoCoreError as exc:
                raise StorageError(f"TransactWriteItems on {tables} failed: {exc}") from None
            self.meter.record("write", resp.get("ConsumedCapacity"))
            return

    def _transact_item(self, action: TransactAction) -> dict[str, Any]:
        body: dict[str, Any] = {"TableName": action.table}
        if action.item is not None:
            body["Item"] = self.serialize(action.item)
        if action.key is not None:
            body["Key"] = self.serialize(action.key)
        if action.update is not None:
            body["UpdateExpression"] = action.update
        body.update(
            self._expression_args(condition=action.condition, names=action.names, values=action.values)
        )
        if action.condition:
            body["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        return {action.kind: body}

    # --- payload objects ------------------------------------------------------------------------------

    def put_object(self, key: str, body: bytes, *, metadata: Mapping[str, str]) -> None:
        """Write a payload object to the configured bucket, `If-None-Match: *`.

        Keys carry their call's write id (`PayloadWrite`), so an object that exists already was made by an
        earlier attempt of this very call (a retry after a lost answer): it counts as created, and the call
        takes it back if it is refused (see `payload_scope`)."""
        s3, bucket = self._require_bucket()

        def put() -> None:
            try:
                s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata=dict(metadata), IfNoneMatch="*")
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in _ALREADY_THERE:
                    raise

        write = _CURRENT_WRITE.get()
        if write is not None:
            write.created.append(key)  # before the PUT: a PUT that fails may still have landed
        self._s3_call("PutObject", f"s3://{bucket}/{key}", put)
        self.meter.count_s3("put", len(body))

    @contextlib.contextmanager
    def payload_scope(self, run_items: Callable[[], list[Item]]) -> Iterator[PayloadWrite]:
        """One public call's payload objects: kept and published when the call is acknowledged, taken back
        when it is refused.

        Objects are written before the item that refers to them (an item must never refer to a missing
        one), so a call refused at DynamoDB would otherwise leave them behind. The rule that makes taking
        them back safe under any interleaving of any number of writers (the argument is in
        docs/reliability.md, "Shared payload objects"):

        - every object a call creates is named with its write id: no other call can refer to it, and this
          process's cache (`chunk_names`) learns its chunks only once the call is acknowledged;
        - so only this call's own requests can make an item refer to its objects. When the store answered
          the call's last request definitely (a refusal), a consistent read of the run (`run_items()`) sees
          every such reference there will ever be: the objects are deleted unless one is seen;
        - when the outcome is unknown (`StorageUnavailableError`: a timeout may hide a write that landed or
          is still in flight) nothing is deleted — the objects are counted in `orphaned_objects`, logged, and
          left to the bucket's lifecycle; likewise when the cleanup itself fails.

        Nested scopes of the same layer join the outermost one. A call that returns normally but wrote
        nothing that refers to its objects (a duplicate of an earlier call) says so with `mark_unused()`,
        and they are taken back too.
        """
        outer = _CURRENT_WRITE.get()
        if outer is not None and outer.owner == id(self):
            yield outer
            return
        write = PayloadWrite(owner=id(self))
        token = _CURRENT_WRITE.set(write)
        try:
            yield write
        except StateError as exc:
            if write.created:
                self._take_back(write, run_items, unknown=isinstance(exc, _OUTCOME_UNKNOWN))
            raise
        else:
            if write.unused:
                if write.created:
                    self._take_back(write, run_items, unknown=False)
            elif write.chunks:
                self.chunk_names.publish(write.chunks)
        finally:
            _CURRENT_WRITE.reset(token)

    def _take_back(self, write: PayloadWrite, run_items: Callable[[], list[Item]], *, unknown: bool) -> None:
        """Delete a refused call's objects, unless its outcome is unknown or an item refers to them."""
        if unknown:
            with self._counts_lock:
                self.orphaned_objects += len(write.created)
            log.warning("payload.orphans_left", objects=len(write.created), reason="outcome unknown")
            return
        try:
            if any(write.id in _searchable(value) for item in run_items() for value in item.values()):
                return  # the call's own write landed after all (an earlier attempt): its objects stay
            s3, bucket = self._require_bucket()
            for key in dict.fromkeys(write.created):
                self._s3_call(
                    "DeleteObject",
                    f"s3://{bucket}/{key}",
                    lambda k=key: s3.delete_object(Bucket=bucket, Key=k),
                )
                with self._counts_lock:
                    self.discarded_objects += 1
        except StateError as exc:  # never hides the refusal itself
            with self._counts_lock:
                self.orphaned_objects += len(write.created)
            log.warning("payload.orphans_left", objects=len(write.created), error=str(exc))

    def get_object(self, bucket: str, key: str) -> bytes:
        """Read a payload object."""
        if self.s3 is None:
            raise StorageError(
                f"payload s3://{bucket}/{key} is stored in S3 but this client has no S3 access; "
                "configure payload_bucket (TDEV_PAYLOAD_BUCKET)"
            )
        s3 = self.s3

        def read() -> bytes:
            return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())

        body: bytes = self._s3_call("GetObject", f"s3://{bucket}/{key}", read)
        self.meter.count_s3("get")
        return bytes(body)

    def _s3_call(self, op: str, target: str, call: Any) -> Any:
        """One S3 request (the body read included), translated like every DynamoDB call."""
        return self._guarded(op, target, call)

    def _require_bucket(self) -> tuple[S3Client, str]:
        if self.s3 is None or not self.config.payload_bucket:
            raise PayloadTooLargeError("no payload bucket is configured")
        return self.s3, self.config.payload_bucket

    # --- plumbing -------------------------------------------------------------------------------------

    def _call(self, op: str, table: str, fn: Any, args: dict[str, Any]) -> dict[str, Any]:
        resp: dict[str, Any] = self._guarded(op, table, lambda: fn(**args))
        return resp

    def probe(self, table: str) -> None:
        """Return if DynamoDB answers a DescribeTable of `table` now; else the call's StateError.

        For readiness probes: one attempt with one-second timeouts on a client of its own (created once),
        because a probe must answer within its own timeout instead of retrying through a long outage."""
        if self._probe_client is None:
            self._probe_client = self._boto_session.client(
                "dynamodb",
                endpoint_url=self.config.endpoint_url,
                config=self._boto_config.merge(
                    BotoConfig(
                        retries={"mode": "standard", "total_max_attempts": 1},
                        connect_timeout=1,
                        read_timeout=1,
                    )
                ),
            )
        client = self._probe_client
        self._guarded("DescribeTable", table, lambda: client.describe_table(TableName=table))

    def _guarded(self, op: str, target: str, call: Any) -> Any:
        """The error boundary: every botocore error of a call becomes this package's (missing credentials,
        TLS and streaming failures included); a false condition becomes ConditionFailed with the old item."""
        try:
            return call()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "ConditionalCheckFailedException":
                raise ConditionFailed(self.deserialize(exc.response.get("Item"))) from None  # type: ignore[arg-type]
            raise self._translate(exc, op, target) from None
        except _UNAVAILABLE_ERRORS as exc:
            raise self._unavailable(exc, op, target) from None
        except NoCredentialsError:
            raise AccessDeniedError(
                f"{op} on {target}: no AWS credentials were found; configure them as boto3 does "
                "(environment, profile, role), or point at LocalStack (AWS_ENDPOINT_URL)"
            ) from None
        except (BotoCoreError, OSError) as exc:
            raise StorageUnavailableError(f"{op} on {target} failed: {type(exc).__name__}: {exc}") from None

    def _translate(self, exc: ClientError, op: str, target: str) -> StateError:  # noqa: PLR0911 - a table
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "Unknown"), error.get("Message", "")
        if code == "ResourceNotFoundException":
            return TableMissingError(
                f"{op}: {target} does not exist in env {self.config.env!r}; create the tables "
                f"(`make tables ENV={self.config.env}`) or deploy infra (`make deploy ENV=...`)"
            )
        if code in ("AccessDeniedException", "AccessDenied"):
            return AccessDeniedError(
                f"{op} on {target} was denied by IAM ({message}); run this component with the policy "
                "infra creates for it (t-developer-{env}-<component>, see infra/README.md)"
            )
        if code in ("NoSuchBucket", "NoSuchKey", "404"):
            return StorageError(f"{op}: {target}: {code}; check payload_bucket and its lifecycle")
        if code in _THROTTLING:
            return StorageUnavailableError(
                f"{op} on {target} was throttled on all {self.config.max_attempts} attempts "
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

    def _unavailable(self, exc: Exception, op: str, target: str) -> StorageUnavailableError:
        where = self.config.endpoint_url or f"AWS {self.config.region}"
        return StorageUnavailableError(
            f"{op} on {target}: {where} did not answer ({type(exc).__name__}) after "
            f"{self.config.max_attempts} attempts; is it running? (`make localstack-up` for local)"
        )

    @staticmethod
    def _backoff(attempt: int, op: str, target: str, reason: object = None) -> int:
        # Full jitter (AWS architecture blog): spreads competing writers apart, 25 ms doubling, cap 1 s.
        delay = random.uniform(0, min(1.0, 0.025 * 2**attempt))
        log.debug("retrying", op=op, target=target, attempt=attempt + 1, reason=reason, delay=delay)
        time.sleep(delay)
        return attempt + 1
