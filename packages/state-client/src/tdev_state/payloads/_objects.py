"""Payload objects in S3: one call's objects (its payload scope), written before the item that refers to
them, kept when the call is acknowledged and taken back when it is refused.

The argument that makes taking them back safe under any interleaving of writers is in docs/reliability.md
("Shared payload objects"); `PayloadObjects.scope` states it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import secrets
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import Binary
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from tdev_state.exceptions import PayloadTooLargeError, StateError, StorageError, StorageUnavailableError
from tdev_state.log import get_logger
from tdev_state.payloads._chunks import ChunkNames
from tdev_state.storage import DynamoDoor, Item

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = get_logger(__name__)


@dataclass
class PayloadWrite:
    """One public call's payload objects (see `PayloadObjects.scope`).

    `id` is part of every object name the call creates, so its objects are private to it: no other write
    can refer to them until the call is acknowledged and `chunks` (sha256 key -> object name) is published
    to the store's `chunk_names`."""

    id: str = field(default_factory=lambda: secrets.token_hex(8))
    #: Object keys this call PUT (a 412 on its own, private key means an earlier attempt of this call did).
    created: list[str] = field(default_factory=list)
    #: Chunks this call stored, published for later writes once the call is acknowledged.
    chunks: dict[str, str] = field(default_factory=dict)
    #: Set by `mark_unused()`: the call returned, but nothing it wrote refers to its objects.
    unused: bool = False
    #: The store whose scope this is (a call on another client, even nested, has a write of its own).
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


class PayloadObjects:
    """The payload bucket of one client: PUT/GET/DELETE through the door's error boundary, metered, and
    the payload scope of each public call. `s3` may be injected; otherwise it is created from the door's
    session when a bucket is configured."""

    def __init__(self, door: DynamoDoor, *, s3: S3Client | None = None) -> None:
        self._door = door
        self.config = door.config
        self._meter = door.meter
        #: Chunks of this process's acknowledged writes: a subtree stored once is referred to, not PUT again.
        self.chunk_names = ChunkNames()
        self.s3: S3Client | None = s3
        if self.s3 is None and door.config.payload_bucket:
            path_style = BotoConfig(s3={"addressing_style": "path"}) if door.config.endpoint_url else None
            self.s3 = door.extra_client("s3", config=path_style)
        #: Payload objects deleted because the call that created them was refused (see `scope`).
        self.discarded_objects = 0
        #: Payload objects left to the bucket's lifecycle (their call's outcome unknown, or cleanup failed).
        self.orphaned_objects = 0
        self._counts_lock = threading.Lock()

    def put_object(self, key: str, body: bytes, *, metadata: Mapping[str, str]) -> None:
        """Write a payload object to the configured bucket, `If-None-Match: *`.

        Keys carry their call's write id (`PayloadWrite`), so an object that exists already was made by an
        earlier attempt of this very call (a retry after a lost answer): it counts as created, and the call
        takes it back if it is refused (see `scope`)."""
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
        self._door.guarded("PutObject", f"s3://{bucket}/{key}", put)
        self._meter.count_s3("put", len(body))

    @contextlib.contextmanager
    def scope(self, run_items: Callable[[], list[Item]]) -> Iterator[PayloadWrite]:
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

        Nested scopes of the same client join the outermost one. A call that returns normally but wrote
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
                self._door.guarded(
                    "DeleteObject",
                    f"s3://{bucket}/{key}",
                    functools.partial(s3.delete_object, Bucket=bucket, Key=key),
                )
                with self._counts_lock:
                    self.discarded_objects += 1
        except StateError as exc:  # never hides the refusal itself
            with self._counts_lock:
                self.orphaned_objects += len(write.created)
            log.warning("payload.orphans_left", objects=len(write.created), error=str(exc))

    def refresh(self, bucket: str, key: str, *, created_before: datetime) -> bool:
        """Restart the lifecycle age of an object created before `created_before`: a server-side copy onto
        itself (its bytes, name and metadata unchanged; no byte leaves S3). True when it was copied.

        The bucket expires an object counting from its creation; a fork's items refer to its parent's
        objects and may live longer than them (docs/data-model.md, "Fork and lineage"). A versioned
        bucket keeps the replaced version as noncurrent for a day, then deletes it."""
        s3 = self._require_bucket()[0]
        where = f"s3://{bucket}/{key}"
        head = self._door.guarded(
            "HeadObject", where, functools.partial(s3.head_object, Bucket=bucket, Key=key)
        )
        self._meter.count_s3("get")
        if head["LastModified"] >= created_before:
            return False
        copy = functools.partial(
            s3.copy_object,
            Bucket=bucket,
            Key=key,
            CopySource={"Bucket": bucket, "Key": key},
            Metadata=dict(head.get("Metadata") or {}),
            MetadataDirective="REPLACE",  # S3 refuses a copy onto itself that changes nothing
        )
        self._door.guarded("CopyObject", where, copy)
        self._meter.count_s3("put")
        return True

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

        body: bytes = self._door.guarded("GetObject", f"s3://{bucket}/{key}", read)
        self._meter.count_s3("get")
        return bytes(body)

    def _require_bucket(self) -> tuple[S3Client, str]:
        if self.s3 is None or not self.config.payload_bucket:
            raise PayloadTooLargeError("no payload bucket is configured")
        return self.s3, self.config.payload_bucket
