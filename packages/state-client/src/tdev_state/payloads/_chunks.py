"""Content-addressed chunks: a large payload's big subtrees are stored once per run, however often they recur.

T-Developer hands every agent the accumulated pipeline data — the request plus every earlier output — so the
1 MB of files `generation` returns comes back in the inputs of `assembly` and `download`. Offloading each
payload whole would store those files three times. Instead a payload over the offload threshold is split:
every subtree whose JSON is at least `min_bytes` is replaced by a reference to an S3 object, children first,
and what remains (the skeleton) is kept in the item.

An object is named by the SHA-256 of its JSON and by the write that created it
(`<prefix><run>/chunks/<sha256>.<write id>.json.z`): a write's objects are private to it until it is
acknowledged, and only then may later writes of this process refer to them instead of storing the subtree
again (`PayloadObjects.scope`, docs/reliability.md "Shared payload objects"). That is what lets a
refused write delete what it created without ever deleting what an acknowledged write refers to.

References are single-key objects `{"\\u0000tdev-chunk": "<name>"}`; a caller's key can never take that form
(`_jsonform` escapes keys starting with NUL). Reading splices each chunk's JSON text back in place of its
reference — the skeleton with its chunks spliced in is byte for byte the payload's JSON — checks every
chunk's SHA-256 against its name and the whole against the SHA-256 recorded in the item, then parses once.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from tdev_state.exceptions import PayloadIntegrityError

CHUNK_MARK = "\x00tdev-chunk"
ZLIB_TAG = b"\x01"
#: A reference as it appears in JSON text (names: a SHA-256, then the write id; older items have none).
_REFERENCE = re.compile(rb'\{"\\u0000tdev-chunk":"([0-9a-f]{64}(?:\.[0-9a-f]{1,32})?)"\}')
_MARK_TEXT = b'{"\\u0000tdev-chunk":"'


def canonical(value: Any) -> bytes:
    """The JSON text chunks are named by (the same form the codec stores)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


_DECODER = json.JSONDecoder()
_scan_string = json.decoder.scanstring  # type: ignore[attr-defined]  # public in json.decoder, not in its stubs


def _size(text: str) -> int:
    """Bytes of `text` in UTF-8 (what `min_bytes` counts), without encoding ASCII text."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _members(text: str) -> tuple[str, str, list[tuple[str, str]]]:
    """A compact JSON object's or array's brackets and its members as (key text with its colon, value
    text) slices of `text` (key text empty in an array): the C scanner finds where each value ends."""
    opening, closing = text[0], text[-1]
    members: list[tuple[str, str]] = []
    at = 1
    while at < len(text) - 1:
        key = ""
        if opening == "{":
            _, colon = _scan_string(text, at + 1)
            key, at = text[at : colon + 1], colon + 1
        _, end = _DECODER.raw_decode(text, at)
        members.append((key, text[at:end]))
        at = end + 1  # past the comma (or onto the closing bracket)
    return opening, closing, members


def split(text: bytes, *, min_bytes: int, store: Callable[[str, bytes], str]) -> bytes:
    """The skeleton of canonical JSON `text`: every subtree of at least `min_bytes` of JSON stored through
    `store(sha256, json) -> name` and replaced by its reference, the smallest big subtrees first (so shared
    parts get their own names).

    Works on the text itself: a subtree's JSON is a slice of its parent's (the text is canonical, compact,
    keys in order), found by the C scanner, so no subtree is dumped again and no tree is built."""

    def visit(node: str) -> str:
        if _size(node) < min_bytes:
            return node
        if node[0] in "{[":
            opening, closing, members = _members(node)
            node = opening + ",".join(key + visit(value) for key, value in members) + closing
            if _size(node) < min_bytes:
                return node  # its children carried the bulk
        body = node.encode("utf-8")
        return reference(store(hashlib.sha256(body).hexdigest(), body)).decode("utf-8")

    return visit(text.decode("utf-8")).encode("utf-8")


def reference(name: str) -> bytes:
    """The JSON text of a reference to the chunk `name`."""
    return canonical({CHUNK_MARK: name})


def names(text: bytes) -> list[str]:
    """The chunk names a skeleton or a chunk's JSON text refers to directly (nested ones are inside them)."""
    return [match.decode("ascii") for match in _REFERENCE.findall(text)] if _MARK_TEXT in text else []


def join(text: bytes, fetch: Callable[[str], bytes], *, field: str, check_each: bool = True) -> bytes:
    """Inverse of `split`, on JSON text: every reference replaced by its chunk's text (fetched once each,
    recursively). With `check_each`, each chunk is checked against the SHA-256 in its name
    (PayloadIntegrityError if not); a caller that checks the whole result against a recorded SHA-256 may
    skip that and call again with it only to name the culprit."""
    expanded: dict[str, bytes] = {}

    def chunk(match: re.Match[bytes]) -> bytes:
        name = match.group(1).decode("ascii")
        if name not in expanded:
            body = fetch(name)
            if check_each and hashlib.sha256(body).hexdigest() != name[:64]:
                raise PayloadIntegrityError(
                    f"{field}: chunk {name[:12]}… does not match its SHA-256; it was changed outside this "
                    "client, nothing was returned"
                )
            expanded[name] = expand(body)
        return expanded[name]

    def expand(body: bytes) -> bytes:
        return _REFERENCE.sub(chunk, body) if _MARK_TEXT in body else body

    return expand(text)


#: zlib level of chunk objects. S3 bills stored bytes at a fraction of DynamoDB's write units, and level 1
#: compresses generated code 5x faster than level 6 for ~20 % more bytes (measured on 1 MB of it: 33 ms vs
#: 166 ms, 344 KB vs 281 KB): the large-payload path is bound by this call.
CHUNK_LEVEL = 1


def pack(text: bytes, level: int = CHUNK_LEVEL) -> bytes:
    """A chunk object's body: the format tag and zlib-compressed JSON (level 6 for what is billed by
    DynamoDB's write units, the skeleton kept in the item)."""
    return ZLIB_TAG + zlib.compress(text, level)


def unpack(body: bytes, *, field: str) -> bytes:
    """The JSON text of a tagged, compressed body (a chunk, or any compressed payload)."""
    if not body.startswith(ZLIB_TAG):
        raise PayloadIntegrityError(f"{field}: unknown payload format tag {body[:1]!r}")
    try:
        return zlib.decompress(body[1:])
    except zlib.error as exc:
        raise PayloadIntegrityError(f"{field}: compressed payload is corrupt ({exc})") from None


class ChunkNames:
    """Chunks of acknowledged writes this process stored: `<prefix><sha256>` -> object name (bounded LRU).

    Only names published here may be referred to by another write; a write publishes its chunks when it is
    acknowledged, never before (see `PayloadObjects.scope`). A name is reused for at most `max_age`
    seconds: the bucket expires an object counting from its creation (`config.payload_expiry_days`), so a
    new item must never refer to an object much older than itself."""

    def __init__(
        self,
        capacity: int = 10_000,
        *,
        max_age: float = 86_400.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._names: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._capacity = capacity
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self._lock:
            entry = self._names.get(key)
            if entry is None:
                return None
            if self._clock() - entry[1] >= self._max_age:
                del self._names[key]
                return None
            self._names.move_to_end(key)
            return entry[0]

    def publish(self, names: dict[str, str]) -> None:
        now = self._clock()
        with self._lock:
            for key, name in names.items():
                self._names.setdefault(key, (name, now))  # the first name stays: its object is the oldest
                self._names.move_to_end(key)
            while len(self._names) > self._capacity:
                self._names.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._names)
