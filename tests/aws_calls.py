"""Record every AWS API call a block of code makes, as the IAM (action, resource) pairs it needs.

Patches botocore's one funnel (`BaseClient._make_api_call`), so it sees the calls of every client — the
state layer's, S3's, KMS's — without the code under test knowing. Resources are named as in
`tdev_state.access.Grant.resource_id`; anything outside the platform's tables, bucket prefix and key gets a
name that no grant has (so a stray call fails the comparison instead of hiding).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import botocore.client

from tdev_state.config import PAYLOAD_PREFIX
from tdev_state.schema import ALL_TABLES, TableNames

#: TransactWriteItems/TransactGetItems have no IAM action of their own: each part needs its item action.
_TRANSACT_PARTS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
    "Get": "GetItem",
}
#: What S3 calls on the caller's behalf when the bucket encrypts with SSE-KMS.
S3_KMS_IMPLIED = {"PutObject": "kms:GenerateDataKey", "GetObject": "kms:Decrypt"}


class CallRecorder:
    """Collects (action, resource_id) pairs, plus the raw (service, operation) list for messages."""

    def __init__(self, env: str, bucket: str | None, payload_prefix: str = PAYLOAD_PREFIX) -> None:
        names = TableNames(env)
        self._tables = {spec.physical_name(names.env): spec.logical_name for spec in ALL_TABLES}
        self._bucket = bucket
        self._prefix = payload_prefix
        self._lock = threading.Lock()
        self.pairs: set[tuple[str, str]] = set()
        self.implied: set[tuple[str, str]] = set()
        self.operations: list[tuple[str, str]] = []
        #: Shard iterators handed out, by the stream resource they read (GetRecords names only its iterator).
        self._iterators: dict[str, str] = {}

    def _table(self, name: str, index: str | None = None) -> str:
        logical = self._tables.get(name, f"foreign:{name}")
        return f"index:{logical}/{index}" if index else f"table:{logical}"

    def needs(  # noqa: PLR0911 - one return per service's way of naming its resource
        self, service: str, operation: str, params: Mapping[str, Any]
    ) -> set[tuple[str, str]]:
        """The IAM pairs one API call needs."""
        if service == "dynamodb":
            if operation in ("TransactWriteItems", "TransactGetItems"):
                out = set()
                for part in params.get("TransactItems", []):
                    ((kind, body),) = part.items()
                    out.add((f"dynamodb:{_TRANSACT_PARTS[kind]}", self._table(body["TableName"])))
                return out
            if operation in ("BatchGetItem", "BatchWriteItem"):
                return {(f"dynamodb:{operation}", self._table(t)) for t in params.get("RequestItems", {})}
            return {(f"dynamodb:{operation}", self._table(params["TableName"], params.get("IndexName")))}
        if service == "dynamodbstreams":  # IAM names stream actions dynamodb:*, on the table's stream ARN
            if "StreamArn" in params:
                table = str(params["StreamArn"]).split(":table/", 1)[-1].split("/stream/", 1)[0]
                resource = "stream:" + self._table(table).split(":", 1)[1]
            else:
                resource = self._iterators.get(str(params.get("ShardIterator")), "foreign:iterator")
            return {(f"dynamodb:{operation}", resource)}
        if service == "s3":
            key = str(params.get("Key", ""))
            in_scope = params.get("Bucket") == self._bucket and key.startswith(self._prefix)
            return {(f"s3:{operation}", "payloads" if in_scope else f"foreign:{params.get('Bucket')}/{key}")}
        if service == "kms":
            return {(f"kms:{operation}", "key")}
        return {(f"{service}:{operation}", "foreign")}

    @contextmanager
    def recording(self) -> Iterator[CallRecorder]:
        original = botocore.client.BaseClient._make_api_call
        recorder = self

        def record(client: Any, operation: str, params: Mapping[str, Any]) -> Any:
            service = client.meta.service_model.service_name
            pairs = recorder.needs(service, operation, params)
            with recorder._lock:
                recorder.operations.append((service, operation))
                recorder.pairs |= pairs
                if service == "s3" and operation in S3_KMS_IMPLIED:
                    recorder.implied.add((S3_KMS_IMPLIED[operation], "key"))
            answer = original(client, operation, params)
            if service == "dynamodbstreams":
                (resource,) = {r for _, r in pairs}
                for key in ("ShardIterator", "NextShardIterator"):
                    if answer.get(key):
                        with recorder._lock:
                            recorder._iterators[answer[key]] = resource
            return answer

        botocore.client.BaseClient._make_api_call = record  # type: ignore[method-assign]
        try:
            yield self
        finally:
            botocore.client.BaseClient._make_api_call = original  # type: ignore[method-assign]
