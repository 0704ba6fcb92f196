"""The DynamoDB door: the one DynamoDB access layer shared by the state client, the worker and the collector.

It owns what must exist exactly once: client creation (botocore *standard* retries, timeouts, a pool as large
as the async API's thread pool), marshalling (`_marshal`), translation of every botocore error into a
`tdev_state.exceptions` error (`_refusals`), our own bounded retry of transactions cancelled by a *concurrent
transaction* (botocore never retries TransactionCanceled), and a meter of the read/write units DynamoDB
reports (`_meter`). It knows nothing of payloads, S3, KMS or usage events: the payload store
(`tdev_state.payloads`) and the state client's layer (`tdev_state.layer`) are built on it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, ProfileNotFound

from tdev_state.config import StateConfig
from tdev_state.exceptions import (
    ConfigurationError,
    ConflictError,
    PayloadTooLargeError,
    StorageError,
    StorageUnavailableError,
)
from tdev_state.log import get_logger
from tdev_state.storage import _marshal, _refusals
from tdev_state.storage._marshal import Item
from tdev_state.storage._meter import CapacityMeter
from tdev_state.storage._refusals import CancellationReason, TransactionCancelled

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

log = get_logger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class TransactAction:
    """One action of a TransactWriteItems call, in Python values (the door marshals it)."""

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
    """The session a door signs with: LocalStack's test credentials for the local target, else boto3's
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


class DynamoDoor:
    """DynamoDB access for one environment. Create one per process and share it.

    A client may be injected (moto, LocalStack, a pre-configured session); otherwise it is created here,
    once, from the config. boto3 clients are thread-safe, so one door serves every thread.
    """

    def __init__(
        self,
        config: StateConfig,
        *,
        session: boto3.session.Session | None = None,
        dynamodb: DynamoDBClient | None = None,
    ) -> None:
        self.config = config
        self.tables = config.tables
        self.meter = CapacityMeter()
        boto_config = BotoConfig(
            region_name=config.region,
            retries={"mode": "standard", "total_max_attempts": config.max_attempts},
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            max_pool_connections=config.max_pool_connections,
            tcp_keepalive=True,
        )
        boto_session = session or _boto_session(config)
        self._boto_session, self._boto_config = boto_session, boto_config
        #: The boto3 session (credentials) this door's clients use; share it to act as the same principal.
        self.session = boto_session
        self.dynamodb: DynamoDBClient = dynamodb or boto_session.client(
            "dynamodb", endpoint_url=config.endpoint_url, config=boto_config
        )
        self._probe_client: DynamoDBClient | None = None

    def extra_client(self, service: str, *, config: BotoConfig | None = None) -> Any:
        """Another AWS client (e.g. "cloudwatch", "s3") with this door's session, endpoint and retries
        (`config` is merged over them)."""
        return self._boto_session.client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.config.endpoint_url,
            config=self._boto_config.merge(config) if config is not None else self._boto_config,
        )

    # --- marshalling -----------------------------------------------------------------------------------

    @staticmethod
    def serialize(item: Mapping[str, Any]) -> dict[str, Any]:
        """Python values to DynamoDB's wire format (see `_marshal.serialize`)."""
        return _marshal.serialize(item)

    @staticmethod
    def deserialize(item: Mapping[str, Any] | None) -> Item | None:
        """DynamoDB's wire format to Python values (numbers come back as Decimal, binary as bytes)."""
        return _marshal.deserialize(item)

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
                        if codes & _refusals.THROTTLED_REASONS:
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
                raise _refusals.translate(self.config, exc, "TransactWriteItems", tables) from None
            except _refusals.UNAVAILABLE_ERRORS as exc:
                raise _refusals.unavailable(self.config, exc, "TransactWriteItems", tables) from None
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

    # --- plumbing -------------------------------------------------------------------------------------

    def _call(self, op: str, table: str, fn: Any, args: dict[str, Any]) -> dict[str, Any]:
        resp: dict[str, Any] = self.guarded(op, table, lambda: fn(**args))
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
        self.guarded("DescribeTable", table, lambda: client.describe_table(TableName=table))

    def guarded(self, op: str, target: str, call: Callable[[], T]) -> T:
        """Run one AWS request (DynamoDB, or another service's, its body read included) behind the error
        boundary: every botocore error becomes this package's (see `_refusals.guarded`)."""
        return _refusals.guarded(self.config, op, target, call)

    @staticmethod
    def _backoff(attempt: int, op: str, target: str, reason: object = None) -> int:
        # Full jitter (AWS architecture blog): spreads competing writers apart, 25 ms doubling, cap 1 s.
        delay = random.uniform(0, min(1.0, 0.025 * 2**attempt))
        log.debug("retrying", op=op, target=target, attempt=attempt + 1, reason=reason, delay=delay)
        time.sleep(delay)
        return attempt + 1
