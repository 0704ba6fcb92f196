"""Payload codec: any value in, the same value out — never truncated, never taken for another.

A payload is first turned into canonical JSON text (`_jsonform`: plain Python values converted, caller keys
that could pass for the library's markers escaped, and — only when the caller asks for it — values with no
exact JSON form stored in a marked lossy form). That text is stored in one attribute, in one of three forms
the attribute's DynamoDB type tells apart:

- `S`: the JSON text itself, when small (below `compress_threshold`) or when compression saves < 10 %;
- `B`: a one-byte format tag + zlib-compressed JSON text;
- `M`: when the encoded payload exceeds `offload_threshold` and a bucket is configured, chunks of the run in
  S3 and the skeleton that references them, `{"chunks": {bucket, prefix, tree, sha256, bytes, write}}`
  (`_chunks`: a subtree that recurs in the run is stored once); a sealed payload goes whole to one object,
  `{"s3": {bucket, key, sha256, bytes, sealed, write}}`. `write` is the id of the write that created the
  objects (`DynamoLayer.payload_scope`). Caller data is always `S` or `B`, so these maps are out of band.

A field the configuration marks sensitive (`StateConfig.encrypt_fields`) is sealed (`_crypto`) after
compression, so it is stored as `B` with the sealed tag, or offloaded as a sealed S3 object whose name and
checksum are those of the ciphertext (never a hash of the plaintext, which would let a reader confirm a
guess). Its associated data is the item's table, id, agent and field (`PayloadContext`).

JSON (not DynamoDB's native map) is the stored form on purpose: floats round-trip exactly, any nesting depth
and key works, and the bytes we are billed for are the compressed ones. Every read is checked: an offloaded
payload against the SHA-256 recorded in its item (after each chunk against its own), a sealed one by its
authentication tag; a mismatch is a PayloadIntegrityError, never wrong data.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tdev_state import _chunks, _jsonform
from tdev_state._crypto import SEALED_TAG
from tdev_state.config import StateConfig
from tdev_state.dynamo import DynamoLayer, current_write
from tdev_state.exceptions import PayloadIntegrityError, PayloadTooLargeError

_RAW_TAG = b"\x00"
_ZLIB_TAG = _chunks.ZLIB_TAG
#: Room kept in an item for its keys and non-payload attributes.
_ITEM_OVERHEAD = 8 * 1024
#: Input fed to zlib at a time while finding out whether a payload compresses below the offload threshold.
_PROBE_BLOCK = 64 * 1024

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
    form: str  # "json" | "zlib" | "chunks" | "s3", with "+sealed" when encrypted
    #: SHA-256 of the JSON text: what duplicate detection compares (never stored in clear when sealed).
    digest: str = ""
    #: Lossy mode: one line (where, and why) per value stored in its marked lossy form.
    warnings: tuple[str, ...] = ()

    @property
    def sealed(self) -> bool:
        return self.form.endswith("+sealed")


def dumps(value: JSONValue, *, field: str, lossy: bool = False, config: StateConfig | None = None) -> bytes:
    """Canonical compact JSON of a payload (strict unless `lossy`; see `_jsonform.to_json`)."""
    return _jsonform.to_json(value, field=field, lossy=lossy, encoders=config.encoders if config else None)[0]


def encode(
    value: JSONValue,
    *,
    field: str,
    object_key: str,
    context: PayloadContext,
    layer: DynamoLayer,
    share_of_item: float = 0.5,
    lossy: bool = False,
    seal: bool | None = None,
) -> EncodedPayload:
    """Encode `value` for the attribute `field`; offload to S3 under `object_key` when too large.

    `share_of_item` is the part of the item budget this field may use when no bucket is configured (an
    execution item holds an input and an output, so each gets half). `seal` overrides the configuration's
    choice (an accumulated input that carries a sealed output is sealed too).
    """
    raw, warnings = _jsonform.to_json(value, field=field, lossy=lossy, encoders=layer.config.encoders)
    return store_json(
        raw,
        field=field,
        object_key=object_key,
        context=context,
        layer=layer,
        share_of_item=share_of_item,
        warnings=warnings,
        seal=seal,
    )


def _compressed_within(raw: bytes, limit: int) -> bytes | None:
    """zlib of `raw`, or None as soon as it is sure to exceed `limit` bytes (a large payload that goes to
    chunks anyway is not compressed whole just to learn its size)."""
    deflate = zlib.compressobj(6)
    parts: list[bytes] = []
    size = 0
    for start in range(0, len(raw), _PROBE_BLOCK):
        part = deflate.compress(raw[start : start + _PROBE_BLOCK])
        size += len(part)
        if size > limit:
            return None
        parts.append(part)
    parts.append(deflate.flush())
    return b"".join(parts)


def store_json(
    raw: bytes,
    *,
    field: str,
    object_key: str,
    context: PayloadContext,
    layer: DynamoLayer,
    share_of_item: float = 0.5,
    warnings: tuple[str, ...] = (),
    seal: bool | None = None,
) -> EncodedPayload:
    """Store canonical JSON text (from `_jsonform.to_json`, or built from its parts by `_inputs`)."""
    config: StateConfig = layer.config
    raw_digest = hashlib.sha256(raw).hexdigest()
    run = object_key.split("/", 1)[0]
    sealed = config.should_encrypt(field, context.agent) if seal is None else seal
    packed: bytes | None = None
    if config.payload_bucket and not sealed and len(raw) > config.offload_threshold:
        packed = _compressed_within(raw, config.offload_threshold)
        if packed is None:
            return _offload_chunked(raw, raw_digest, run=run, layer=layer, warnings=warnings)
    elif len(raw) >= config.compress_threshold:
        packed = zlib.compress(raw, 6)
    stored: str | bytes = raw.decode("utf-8")
    form = "json"
    if packed is not None and len(raw) >= config.compress_threshold and len(packed) + 1 <= 0.9 * len(raw):
        stored, form = _ZLIB_TAG + packed, "zlib"
    if sealed:
        inner = stored if isinstance(stored, bytes) else _RAW_TAG + raw
        stored, form = layer.cipher.seal(inner, context.aad(field), field=field), form + "+sealed"
    size = len(stored) if isinstance(stored, bytes) else len(raw)

    if config.payload_bucket and size > config.offload_threshold and not sealed:
        return _offload_chunked(raw, raw_digest, run=run, layer=layer, warnings=warnings)
    if config.payload_bucket and size > config.offload_threshold:
        assert isinstance(stored, bytes)
        # Sealed objects are named and checked by their ciphertext: a plaintext hash would be an oracle.
        digest = hashlib.sha256(stored).hexdigest()
        write = current_write()
        write_id = write.id if write is not None else secrets.token_hex(8)
        key = f"{config.payload_prefix}{object_key}/{field}-{digest}.{write_id}.json.z"
        layer.put_object(key, stored, metadata={"sha256": digest, "json-bytes": str(len(raw))})
        ref: dict[str, Any] = {
            "bucket": config.payload_bucket,
            "key": key,
            "sha256": digest,
            "bytes": len(raw),
            "sealed": True,
            "write": write_id,
        }
        return EncodedPayload(
            value={"s3": ref},
            json_bytes=len(raw),
            stored_bytes=len(stored),
            form="s3+sealed",
            digest=raw_digest,
            warnings=warnings,
        )

    budget = int((config.max_item_bytes - _ITEM_OVERHEAD) * share_of_item)
    if size > budget:
        raise PayloadTooLargeError(
            f"{field} is {len(raw):,} bytes of JSON ({size:,} bytes stored), over the {budget:,}-byte "
            "share of a DynamoDB item it may use; configure a payload bucket (TDEV_PAYLOAD_BUCKET / "
            "payload_bucket) so large payloads go to S3. Nothing was written."
        )
    return EncodedPayload(
        value=stored, json_bytes=len(raw), stored_bytes=size, form=form, digest=raw_digest, warnings=warnings
    )


def _offload_chunked(
    raw: bytes, digest: str, *, run: str, layer: DynamoLayer, warnings: tuple[str, ...]
) -> EncodedPayload:
    """Store a large payload's big subtrees as chunks of its run (see `_chunks`); the item keeps the
    skeleton. A chunk an acknowledged write of this process stored is referred to, not PUT again; new ones
    are named with this call's write id (private to it until it is acknowledged)."""
    config = layer.config
    bucket = config.payload_bucket
    assert bucket is not None
    prefix = f"{config.payload_prefix}{run}/chunks/"
    write = current_write()
    write_id = write.id if write is not None else secrets.token_hex(8)
    pending: dict[str, str] = write.chunks if write is not None else {}
    written = [0]

    def store(sha256: str, text: bytes) -> str:
        known = pending.get(prefix + sha256) or layer.chunk_names.get(prefix + sha256)
        if known is not None:
            return known
        name = f"{sha256}.{write_id}"
        body = _chunks.pack(text)
        layer.put_object(
            f"{prefix}{name}.json.z", body, metadata={"sha256": sha256, "json-bytes": str(len(text))}
        )
        pending[prefix + sha256] = name
        written[0] += len(body)
        return name

    skeleton = _chunks.canonical(
        _chunks.split(json.loads(raw), min_bytes=config.chunk_min_bytes, store=store)
    )
    if len(skeleton) > config.offload_threshold and len(_chunks.pack(skeleton, 6)) > config.offload_threshold:
        skeleton = _chunks.reference(store(hashlib.sha256(skeleton).hexdigest(), skeleton))
    if write is None:  # outside a payload scope there is nothing to take back: share at once
        layer.chunk_names.publish(pending)
    tree: str | bytes = skeleton.decode("utf-8")
    if len(skeleton) >= config.compress_threshold:
        tree = _chunks.pack(skeleton, 6)
    ref = {
        "bucket": bucket,
        "prefix": prefix,
        "tree": tree,
        "bytes": len(raw),
        "sha256": digest,
        "write": write_id,
    }
    return EncodedPayload(
        value={"chunks": ref},
        json_bytes=len(raw),
        stored_bytes=written[0] + len(tree),
        form="chunks",
        digest=digest,
        warnings=warnings,
    )


def decode(stored: Any, *, field: str, context: PayloadContext, layer: DynamoLayer) -> JSONValue:
    """The original value of a stored payload attribute (fetching from S3, opening sealed ones, checking
    every checksum). An accumulated input's references to earlier outputs come back as `OutputRef`s."""
    raw = stored_json(stored, field=field, context=context, layer=layer)
    return None if raw is None else _loads(raw, field)


def stored_json(stored: Any, *, field: str, context: PayloadContext, layer: DynamoLayer) -> bytes | None:
    """The canonical JSON text a stored payload attribute holds (None for no payload), checked."""
    if stored is None:
        return None
    if isinstance(stored, str):
        return stored.encode("utf-8")
    if isinstance(stored, bytes | bytearray):
        return _unpack(bytes(stored), field, context, layer)
    if isinstance(stored, Mapping) and isinstance(stored.get("chunks"), Mapping):
        ref = stored["chunks"]
        bucket, prefix, tree = str(ref["bucket"]), str(ref["prefix"]), ref["tree"]
        skeleton = tree.encode("utf-8") if isinstance(tree, str) else _chunks.unpack(bytes(tree), field=field)

        fetched: dict[str, bytes] = {}

        def fetch(name: str) -> bytes:
            if name not in fetched:
                body = layer.get_object(bucket, f"{prefix}{name}.json.z")
                fetched[name] = _chunks.unpack(body, field=field)
            return fetched[name]

        # One SHA-256 over the whole payload checks the skeleton and every chunk; only when it fails is each
        # chunk checked against its name, to say which one was changed.
        raw = _chunks.join(skeleton, fetch, field=field, check_each=not ref.get("sha256"))
        if hashlib.sha256(raw).hexdigest() != ref.get("sha256"):
            _chunks.join(skeleton, fetch, field=field)
            raise PayloadIntegrityError(
                f"{field}: the payload assembled from s3://{bucket}/{prefix} does not match the SHA-256 "
                "recorded in its item; its skeleton or a chunk was changed outside this client, nothing "
                "was returned"
            )
        return raw
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
        return raw
    raise PayloadIntegrityError(f"{field}: stored value of type {type(stored).__name__} is not a payload")


def _unpack(body: bytes, field: str, context: PayloadContext, layer: DynamoLayer) -> bytes:
    if body.startswith(SEALED_TAG):
        body = layer.cipher.open(body, context.aad(field), field=field)
        if body.startswith(_RAW_TAG):
            return body[1:]
    return _chunks.unpack(body, field=field)  # the same tag + zlib form as a chunk


def _loads(raw: bytes, field: str) -> JSONValue:
    try:
        return _jsonform.from_json(raw)
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
