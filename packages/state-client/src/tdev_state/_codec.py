"""Payload codec: any JSON value in, the same value out — never truncated.

A payload is stored in one attribute, in one of three forms the attribute's DynamoDB type tells apart:

- `S`: the JSON text itself, when small (below `compress_threshold`) or when compression saves < 10 %;
- `B`: a one-byte format tag + zlib-compressed JSON text;
- `M`: when the encoded payload exceeds `offload_threshold` and a bucket is configured, content-addressed
  chunks of the run in S3 and the skeleton that references them, `{"chunks": {bucket, prefix, tree, sha256,
  bytes}}` (`_chunks`: a subtree that recurs in the run, like the generated files in every later agent's
  accumulated input, is stored once); a sealed payload goes whole to one object, `{"s3": {bucket, key,
  sha256, bytes, sealed}}`.

A field the configuration marks sensitive (`StateConfig.encrypt_fields`) is sealed (`_crypto`) after
compression, so it is stored as `B` with the sealed tag, or offloaded as a sealed S3 object whose name and
checksum are those of the ciphertext (never a hash of the plaintext, which would let a reader confirm a
guess). Its associated data is the item's table, id, agent and field (`PayloadContext`).

JSON (not DynamoDB's native map) is the stored form on purpose: floats round-trip exactly, any nesting depth
and key works, and the bytes we are billed for are the compressed ones. S3 keys are content-addressed (the
SHA-256 of the JSON), so a retried write puts the same object again instead of leaving a second copy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from enum import Enum
from pathlib import PurePath
from typing import Any

from tdev_state import _chunks
from tdev_state._crypto import SEALED_TAG
from tdev_state.config import StateConfig
from tdev_state.dynamo import DynamoLayer
from tdev_state.exceptions import PayloadIntegrityError, PayloadTooLargeError, ValidationError

_RAW_TAG = b"\x00"
_ZLIB_TAG = _chunks.ZLIB_TAG
#: Room kept in an item for its keys and non-payload attributes.
_ITEM_OVERHEAD = 8 * 1024

JSONValue = Any


@dataclass(frozen=True)
class PayloadContext:
    """Where a payload lives — the associated data that binds a sealed payload to its place."""

    table: str
    item_id: str
    agent: str | None = None

    def aad(self, field: str) -> bytes:
        return "|".join(("t-developer/v1", self.table, self.item_id, self.agent or "", field)).encode()


@dataclass(frozen=True)
class EncodedPayload:
    """A payload ready to store: the attribute value plus sizes for logs, metrics and the CLI."""

    value: str | bytes | dict[str, Any]
    json_bytes: int
    stored_bytes: int
    form: str  # "json" | "zlib" | "s3", with "+sealed" when encrypted
    #: SHA-256 of the JSON text: what duplicate detection compares (never stored in clear when sealed).
    digest: str = ""

    @property
    def sealed(self) -> bool:
        return self.form.endswith("+sealed")


class _NoJSONForm(TypeError):
    def __init__(self, value: Any) -> None:
        super().__init__(type(value).__name__)
        self.value = value


def json_default(value: Any) -> Any:  # noqa: PLR0911 - one return per kind of value
    """The one encoder of plain Python values in payloads (json's `default` hook), documented in
    docs/data-model.md: what an agent returns — often an object flattened by `__dict__` — is stored as:

    datetime / date / time -> ISO 8601 text; `Path` -> its text; `Enum` -> its value; set / frozenset -> a
    list (sorted when its members compare); a dataclass instance or an object with `model_dump()`
    (pydantic) -> its dict; `Decimal` -> a number (int when integral). Tuples are lists already. Anything
    else has no JSON form and is refused (`ValidationError` naming the field and the type); nothing is
    written.
    """
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        try:
            return sorted(value)
        except TypeError:
            return list(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("NaN or Infinity")
        return int(value) if value == value.to_integral_value() else float(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        dumped = dump()
        if isinstance(dumped, dict):
            return dumped
    raise _NoJSONForm(value)


def _check_keys(value: Any, field: str, path: str = "", depth: int = 0) -> None:
    """Refuse dict keys that are not strings: JSON would silently turn `1` into `"1"` (and lose a value)."""
    if depth > 200:
        return  # json.dumps reports the depth itself
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(
                    f"{field}{path} has a key of type {type(key).__name__} ({key!r:.40}); payload keys must "
                    "be strings (JSON would turn it into text and could merge two keys)"
                )
            if isinstance(item, dict | list | tuple):
                _check_keys(item, field, f"{path}.{key}", depth + 1)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            if isinstance(item, dict | list | tuple):
                _check_keys(item, field, f"{path}[{i}]", depth + 1)


def dumps(value: JSONValue, *, field: str) -> bytes:
    """Canonical compact JSON of a payload (plain Python values through `json_default`), refusing NaN,
    Infinity, non-string keys, cycles and values with no JSON form, with a message naming the field."""
    _check_keys(value, field)
    try:
        text = json.dumps(
            value, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=json_default
        )
    except _NoJSONForm as exc:
        raise ValidationError(
            f"{field} contains a {type(exc.value).__name__} ({exc.value!r:.60}), which has no JSON form; "
            "send dicts, lists, str, numbers, bool, None, datetimes, Paths, Enums, sets, dataclasses or "
            "objects with model_dump(). Nothing was written."
        ) from None
    except ValueError as exc:
        if "circular" in str(exc).lower():
            raise ValidationError(f"{field} refers to itself (a circular reference); send a tree") from None
        raise ValidationError(
            f"{field} contains NaN or Infinity ({exc}); JSON has no such numbers — "
            "send null or a finite number"
        ) from None
    except RecursionError:
        raise ValidationError(f"{field} is nested too deeply (more than ~900 levels)") from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(
            f"{field} contains a lone surrogate (invalid Unicode); decode your text properly first"
        ) from None


def encode(
    value: JSONValue,
    *,
    field: str,
    object_key: str,
    context: PayloadContext,
    layer: DynamoLayer,
    share_of_item: float = 0.5,
) -> EncodedPayload:
    """Encode `value` for the attribute `field`; offload to S3 under `object_key` when too large.

    `share_of_item` is the part of the item budget this field may use when no bucket is configured (an
    execution item holds an input and an output, so each gets half).
    """
    config: StateConfig = layer.config
    raw = dumps(value, field=field)
    raw_digest = hashlib.sha256(raw).hexdigest()
    stored: str | bytes = raw.decode("utf-8")
    form = "json"
    if len(raw) >= config.compress_threshold:
        packed = zlib.compress(raw, 6)
        if len(packed) + 1 <= 0.9 * len(raw):
            stored, form = _ZLIB_TAG + packed, "zlib"
    sealed = config.should_encrypt(field, context.agent)
    if sealed:
        inner = stored if isinstance(stored, bytes) else _RAW_TAG + raw
        stored, form = layer.cipher.seal(inner, context.aad(field), field=field), form + "+sealed"
    size = len(stored) if isinstance(stored, bytes) else len(raw)

    if config.payload_bucket and size > config.offload_threshold and not sealed:
        return _offload_chunked(raw, raw_digest, field=field, run=object_key.split("/", 1)[0], layer=layer)
    if config.payload_bucket and size > config.offload_threshold:
        body = stored if isinstance(stored, bytes) else _ZLIB_TAG + zlib.compress(raw, 6)
        # Sealed objects are named and checked by their ciphertext: a plaintext hash would be an oracle.
        digest = hashlib.sha256(body).hexdigest() if sealed else raw_digest
        key = f"{config.payload_prefix}{object_key}/{field}-{digest}.json.z"
        layer.put_object(key, body, metadata={"sha256": digest, "json-bytes": str(len(raw))})
        ref: dict[str, Any] = {
            "bucket": config.payload_bucket,
            "key": key,
            "sha256": digest,
            "bytes": len(raw),
        }
        if sealed:
            ref["sealed"] = True
        return EncodedPayload(
            value={"s3": ref},
            json_bytes=len(raw),
            stored_bytes=len(body),
            form="s3+sealed" if sealed else "s3",
            digest=raw_digest,
        )

    budget = int((config.max_item_bytes - _ITEM_OVERHEAD) * share_of_item)
    if size > budget:
        raise PayloadTooLargeError(
            f"{field} is {len(raw):,} bytes of JSON ({size:,} bytes stored), over the {budget:,}-byte "
            "share of a DynamoDB item it may use; configure a payload bucket (TDEV_PAYLOAD_BUCKET / "
            "payload_bucket) so large payloads go to S3. Nothing was written."
        )
    return EncodedPayload(value=stored, json_bytes=len(raw), stored_bytes=size, form=form, digest=raw_digest)


def _offload_chunked(raw: bytes, digest: str, *, field: str, run: str, layer: DynamoLayer) -> EncodedPayload:
    """Store a large payload's big subtrees as content-addressed chunks of its run (see `_chunks`); the item
    keeps the skeleton. A chunk this process already stored is not PUT again."""
    config = layer.config
    bucket = config.payload_bucket
    assert bucket is not None
    prefix = f"{config.payload_prefix}{run}/chunks/"
    written = [0]

    def store(name: str, text: bytes) -> None:
        key = f"{prefix}{name}.json.z"
        if key in layer.stored_objects:
            return
        body = _chunks.pack(text)
        layer.put_object(key, body, metadata={"sha256": name, "json-bytes": str(len(text))})
        layer.stored_objects.add(key)
        written[0] += len(body)

    skeleton = _chunks.canonical(
        _chunks.split(json.loads(raw), min_bytes=config.chunk_min_bytes, store=store)
    )
    if len(_chunks.pack(skeleton)) > config.offload_threshold:  # what is left is still too big for the item
        name = hashlib.sha256(skeleton).hexdigest()
        store(name, skeleton)
        skeleton = _chunks.canonical({_chunks.CHUNK_MARK: name})
    tree: str | bytes = skeleton.decode("utf-8")
    if len(skeleton) >= config.compress_threshold:
        tree = _chunks.pack(skeleton)
    ref = {"bucket": bucket, "prefix": prefix, "tree": tree, "bytes": len(raw), "sha256": digest}
    return EncodedPayload(
        value={"chunks": ref},
        json_bytes=len(raw),
        stored_bytes=written[0] + len(tree),
        form="chunks",
        digest=digest,
    )


def decode(stored: Any, *, field: str, context: PayloadContext, layer: DynamoLayer) -> JSONValue:
    """The original JSON value of a stored payload attribute (fetching from S3, opening sealed ones)."""
    if stored is None:
        return None
    if isinstance(stored, str):
        return _loads(stored.encode("utf-8"), field)
    if isinstance(stored, bytes | bytearray):
        return _loads(_unpack(bytes(stored), field, context, layer), field)
    if isinstance(stored, Mapping) and isinstance(stored.get("chunks"), Mapping):
        ref = stored["chunks"]
        bucket, prefix, tree = str(ref["bucket"]), str(ref["prefix"]), ref["tree"]
        skeleton = _loads(
            tree.encode("utf-8") if isinstance(tree, str) else _chunks.unpack(bytes(tree), field=field), field
        )

        def fetch(digest: str) -> bytes:
            return _chunks.unpack(layer.get_object(bucket, f"{prefix}{digest}.json.z"), field=field)

        return _chunks.join(skeleton, fetch, field=field)
    if isinstance(stored, Mapping) and isinstance(stored.get("s3"), Mapping):
        ref = stored["s3"]
        body = layer.get_object(str(ref["bucket"]), str(ref["key"]))
        checked = body if ref.get("sealed") else None
        raw = _unpack(body, field, context, layer)
        if hashlib.sha256(checked if checked is not None else raw).hexdigest() != ref.get("sha256"):
            raise PayloadIntegrityError(
                f"{field}: s3://{ref['bucket']}/{ref['key']} does not match its recorded SHA-256; "
                "the object was changed or truncated outside this client"
            )
        return _loads(raw, field)
    raise PayloadIntegrityError(f"{field}: stored value of type {type(stored).__name__} is not a payload")


def _unpack(body: bytes, field: str, context: PayloadContext, layer: DynamoLayer) -> bytes:
    if body.startswith(SEALED_TAG):
        body = layer.cipher.open(body, context.aad(field), field=field)
        if body.startswith(_RAW_TAG):
            return body[1:]
    return _chunks.unpack(body, field=field)  # the same tag + zlib form as a chunk


def _loads(raw: bytes, field: str) -> JSONValue:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise PayloadIntegrityError(f"{field}: stored JSON does not parse ({exc})") from None


def describe(stored: Any) -> str:
    """Where and how a stored payload lives, without fetching it (for people reading a run): "none",
    "inline", "inline, compressed", "inline, sealed", "S3 chunks s3://bucket/prefix" or
    "S3 s3://bucket/key" (", sealed" when it is)."""
    if stored is None:
        return "none"
    if isinstance(stored, str):
        return "inline"
    if isinstance(stored, bytes | bytearray):
        return "inline, sealed" if bytes(stored).startswith(SEALED_TAG) else "inline, compressed"
    if isinstance(stored, Mapping) and isinstance(stored.get("chunks"), Mapping):
        ref = stored["chunks"]
        return f"S3 chunks s3://{ref.get('bucket')}/{ref.get('prefix')}"
    if isinstance(stored, Mapping) and isinstance(stored.get("s3"), Mapping):
        ref = stored["s3"]
        return f"S3 s3://{ref.get('bucket')}/{ref.get('key')}" + (", sealed" if ref.get("sealed") else "")
    return f"unreadable ({type(stored).__name__})"


def stored_size(stored: Any) -> int:
    """Bytes of JSON a stored payload decodes to, without fetching it (for listings)."""
    if stored is None:
        return 0
    if isinstance(stored, str):
        return len(stored.encode("utf-8"))
    if isinstance(stored, bytes | bytearray):
        if bytes(stored).startswith(SEALED_TAG):
            return len(stored)  # sealed: the size of the ciphertext, without opening it
        return len(zlib.decompress(bytes(stored)[1:]))
    for form in ("s3", "chunks"):
        if isinstance(stored, Mapping) and isinstance(stored.get(form), Mapping):
            return int(stored[form].get("bytes", 0))
    return 0
