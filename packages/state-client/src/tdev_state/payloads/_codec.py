"""Payload codec: value ⇄ bytes, and nothing else — no keys, no buckets, no I/O.

A payload is first turned into canonical JSON text (`_jsonform`: plain Python values converted, caller keys
that could pass for the library's markers escaped, and — only when the caller asks for it — values with no
exact JSON form stored in a marked lossy form). That text is stored in one attribute, in one of three forms
the attribute's DynamoDB type tells apart:

- `S`: the JSON text itself, when small (below `compress_threshold`) or when compression saves < 10 %;
- `B`: a one-byte format tag + zlib-compressed JSON text (or, sealed, the sealed tag and ciphertext:
  `_sealing` wraps these bytes, the codec never sees a key);
- `M`: a reference to S3, written by the payload store (`_store`): chunks of the run and the skeleton that
  references them, `{"chunks": {bucket, prefix, tree, sha256, bytes, write}}`, or one sealed object,
  `{"s3": {bucket, key, sha256, bytes, sealed, write}}`. Caller data is always `S` or `B`, so these maps
  are out of band.

JSON (not DynamoDB's native map) is the stored form on purpose: floats round-trip exactly, any nesting depth
and key works, and the bytes we are billed for are the compressed ones.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tdev_state.exceptions import PayloadIntegrityError
from tdev_state.payloads import _chunks, _jsonform
from tdev_state.payloads._sealing import SEALED_TAG

RAW_TAG = b"\x00"
ZLIB_TAG = _chunks.ZLIB_TAG
#: Input fed to zlib at a time while finding out whether a payload compresses below the offload threshold.
_PROBE_BLOCK = 16 * 1024

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


def compressed_within(raw: bytes, limit: int) -> bytes | None:
    """zlib (level 6) of `raw`, or None as soon as it is sure to exceed `limit` bytes: a large payload that
    goes to chunks anyway is not compressed whole just to learn its size.

    Each block is sync-flushed, so the output grows with the input and the answer comes after about
    `limit` times the compression ratio of input, not after zlib's internal buffers fill (on 1 MB of generated
    code: 3 ms instead of 15). The stream stays one valid zlib stream, a few bytes per block larger."""
    deflate = zlib.compressobj(6)
    parts: list[bytes] = []
    size = 0
    for start in range(0, len(raw), _PROBE_BLOCK):
        part = deflate.compress(raw[start : start + _PROBE_BLOCK]) + deflate.flush(zlib.Z_SYNC_FLUSH)
        size += len(part)
        if size > limit:
            return None
        parts.append(part)
    parts.append(deflate.flush())
    return b"".join(parts)


def compress(raw: bytes) -> bytes:
    """zlib level 6, for what is billed by DynamoDB's write units."""
    return zlib.compress(raw, 6)


def inline_form(raw: bytes, packed: bytes | None, *, compress_threshold: int) -> tuple[str | bytes, str]:
    """The inline attribute of `raw` and its form: the tagged compressed bytes when `packed` saves at least
    10 % of a payload worth compressing, else the JSON text itself."""
    if packed is not None and len(raw) >= compress_threshold and len(packed) + 1 <= 0.9 * len(raw):
        return ZLIB_TAG + packed, "zlib"
    return raw.decode("utf-8"), "json"


def sealable(stored: str | bytes, raw: bytes) -> bytes:
    """The bytes a sealed attribute encrypts: the compressed form as is, JSON text behind the raw tag."""
    return stored if isinstance(stored, bytes) else RAW_TAG + raw


def unpack(body: bytes, *, field: str, opened: bool = False) -> bytes:
    """The JSON text of an inline or object body. `opened`: `body` came out of a sealed envelope, where
    the raw tag (JSON text as is) is legal too."""
    if opened and body.startswith(RAW_TAG):
        return body[1:]
    return _chunks.unpack(body, field=field)  # the same tag + zlib form as a chunk


def loads(raw: bytes, field: str) -> JSONValue:
    """The value a canonical JSON text stands for (PayloadIntegrityError if it does not parse)."""
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
