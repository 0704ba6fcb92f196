"""Content-addressed chunks: a large payload's big subtrees are stored once per run, however often they recur.

T-Developer hands every agent the accumulated pipeline data — the request plus every earlier output — so the
1 MB of files `generation` returns comes back in the inputs of `assembly` and `download`. Offloading each
payload whole would store those files three times. Instead a payload over the offload threshold is split:
every subtree whose JSON is at least `min_bytes` is replaced by a reference to an S3 object named by the
SHA-256 of its JSON (`<prefix><run>/chunks/<sha256>.json.z`), children first, and what remains (the
skeleton) is kept in the item. The same subtree in a later payload of the run has the same name: the PUT is
skipped when this process already stored it, and repeated harmlessly (same bytes, same key) when not.

References are single-key objects `{"\\u0000tdev-chunk": "<sha256>"}` — a key no JSON an agent returns
plausibly holds. Reading resolves them recursively and checks each chunk's SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from tdev_state.exceptions import PayloadIntegrityError

CHUNK_MARK = "\x00tdev-chunk"
ZLIB_TAG = b"\x01"


def canonical(value: Any) -> bytes:
    """The JSON text chunks are named by (the same form the codec stores)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def split(tree: Any, *, min_bytes: int, store: Callable[[str, bytes], None]) -> Any:
    """`tree` with every subtree of at least `min_bytes` of JSON stored through `store(sha256, json)` and
    replaced by its reference; the smallest big subtrees go first, so shared parts get their own names."""

    def visit(node: Any, text: bytes) -> Any:
        if len(text) < min_bytes:
            return node
        if isinstance(node, dict):
            node = {k: visit(v, canonical(v)) for k, v in node.items()}
        elif isinstance(node, list):
            node = [visit(v, canonical(v)) for v in node]
        rest = canonical(node)
        if len(rest) < min_bytes:
            return node  # its children carried the bulk
        digest = hashlib.sha256(rest).hexdigest()
        store(digest, rest)
        return {CHUNK_MARK: digest}

    return visit(tree, canonical(tree))


def join(skeleton: Any, fetch: Callable[[str], bytes], *, field: str) -> Any:
    """Inverse of `split`: resolve every reference through `fetch(sha256) -> json`, checking each digest."""
    seen: dict[str, Any] = {}

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if len(node) == 1 and CHUNK_MARK in node:
                digest = str(node[CHUNK_MARK])
                if digest not in seen:
                    text = fetch(digest)
                    if hashlib.sha256(text).hexdigest() != digest:
                        raise PayloadIntegrityError(
                            f"{field}: chunk {digest[:12]}… does not match its SHA-256; it was changed "
                            "outside this client"
                        )
                    seen[digest] = resolve(json.loads(text))
                return seen[digest]
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(skeleton)


def pack(text: bytes) -> bytes:
    """A chunk object's body: the format tag and zlib-compressed JSON."""
    return ZLIB_TAG + zlib.compress(text, 6)


def unpack(body: bytes, *, field: str) -> bytes:
    """The JSON text of a tagged, compressed body (a chunk, or any compressed payload)."""
    if not body.startswith(ZLIB_TAG):
        raise PayloadIntegrityError(f"{field}: unknown payload format tag {body[:1]!r}")
    try:
        return zlib.decompress(body[1:])
    except zlib.error as exc:
        raise PayloadIntegrityError(f"{field}: compressed payload is corrupt ({exc})") from None


class StoredObjects:
    """The object keys this process has stored (bounded LRU): a chunk stored once is not PUT again."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def __contains__(self, key: object) -> bool:
        with self._lock:
            if key not in self._keys:
                return False
            self._keys.move_to_end(str(key))
            return True

    def discard(self, key: str) -> None:
        with self._lock:
            self._keys.pop(key, None)

    def add(self, key: str) -> None:
        with self._lock:
            self._keys[key] = None
            self._keys.move_to_end(key)
            while len(self._keys) > self._capacity:
                self._keys.popitem(last=False)
