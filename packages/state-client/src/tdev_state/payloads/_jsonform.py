"""A payload's JSON form: what an agent returns, as JSON text and back — exactly, or marked where it cannot.

One walk over the value (`to_json`) does what json's `default` hook cannot see: it converts plain Python
values the way FastAPI's `jsonable_encoder` does for the orchestrator's browser (the pipeline's own types
first, through `StateConfig.encoders`), turns non-string dict keys into their JSON text and refuses two keys
that would merge, escapes caller keys that could pass for the library's markers, and — in lossy mode — stores
what has no exact JSON form in a marked form and says where (`Lossy.warnings`). `from_json` is its inverse.

Reserved keys (docs/security.md, "Payload markers"). The library marks its own structures with
single-key objects whose key starts with NUL: `"\\u0000tdev-chunk"` (a chunk reference, `_chunks`),
`"\\u0000tdev-output"` (an earlier output in an accumulated input, `_inputs`), `"\\u0000tdev-lossy"` (a marked
lossy value) and keys starting `"\\u0000tdev-key:"` (a marked lossy key). A caller's key that starts with NUL
is stored with one more NUL in front and read back without it, so no caller value can ever be taken for a
marker: every value round-trips exactly. The walk is paid for in Python only per container and key; a
payload whose JSON holds no NUL at all (``\\u0000`` in the text) is read back by `json.loads` alone.
"""

from __future__ import annotations

import json
from typing import Any

from tdev_state.exceptions import ValidationError
from tdev_state.payloads._marks import (
    LOSSY_KEY,
    LOSSY_MARK,
    MAX_DEPTH,
    NUL,
    OUTPUT_MARK,
    Encoders,
    LossyValue,
    OutputRef,
)
from tdev_state.payloads._walk import _dumps, _Walk

__all__ = [
    "LOSSY_KEY",
    "LOSSY_MARK",
    "MAX_DEPTH",
    "NUL",
    "OUTPUT_MARK",
    "Encoders",
    "LossyValue",
    "OutputRef",
    "from_json",
    "marker_json",
    "to_json",
]


def to_json(
    value: Any, *, field: str, lossy: bool = False, encoders: Encoders | None = None, path: str = ""
) -> tuple[bytes, tuple[str, ...]]:
    """The canonical JSON text (UTF-8) of a payload, and the warnings of what is stored in marked lossy form.

    Strict (`lossy=False`): anything that cannot be stored exactly raises ValidationError naming where and
    why. The text is canonical: the same value always gives the same bytes (sets are sorted when they can
    be), which content addressing and duplicate detection rely on."""
    try:
        walk = _Walk(field + path, lossy=lossy, encoders=encoders or {}, check_text=False)
        prepared = walk.value(value, None, 0)
        try:
            return _dumps(prepared).encode("utf-8"), tuple(walk.warnings)
        except UnicodeEncodeError:  # a lone surrogate somewhere: walk again, looking at every text
            walk = _Walk(field + path, lossy=lossy, encoders=encoders or {}, check_text=True)
            prepared = walk.value(value, None, 0)
            return _dumps(prepared).encode("utf-8"), tuple(walk.warnings)
    except RecursionError:  # a caller already deep in its own stack: the same answer as too deep a value
        raise ValidationError(
            f"{field}{path} is nested too deeply to store from this call's stack (values may nest up to "
            f"{MAX_DEPTH} levels); flatten it. Nothing was written."
        ) from None


def marker_json(mark: str, value: Any) -> bytes:
    """The JSON text of one of the library's own markers (never escaped, unlike a caller's keys)."""
    return _dumps({mark: value}).encode("utf-8")


def from_json(raw: bytes) -> Any:
    """The value `to_json` stored: escaped keys restored, marked lossy values as `LossyValue`, references
    to earlier outputs as `OutputRef`. Raises ValueError when the text is not JSON."""
    value = json.loads(raw.decode("utf-8"))  # (str parses faster than bytes, which json re-detects)
    if b"\\u0000" not in raw:
        return value  # no escaped key and no marker: json.loads is the whole answer
    try:
        return _restore(value)
    except RecursionError:
        raise ValueError("nested too deeply to restore its keys") from None


def _restore(node: Any) -> Any:
    if isinstance(node, list):
        return [_restore(v) for v in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        ((key, inner),) = node.items()
        if key == LOSSY_MARK and isinstance(inner, dict):
            return LossyValue(
                str(inner.get("text", "")), str(inner.get("type", "")), str(inner.get("why", ""))
            )
        if key == OUTPUT_MARK and isinstance(inner, str):
            return OutputRef(inner)
    out: dict[str, Any] = {}
    for key, item in node.items():
        if key.startswith(LOSSY_KEY):
            label = LossyValue(key[len(LOSSY_KEY) :], "key", "two keys had the same JSON text")
            out[label] = _restore(item)
        else:
            out[key[1:] if key.startswith("\x00\x00") else key] = _restore(item)
    return out
