"""Accumulated inputs: earlier outputs inside an agent's input are stored as references to them.

T-Developer hands each agent the request plus every earlier agent's output, keyed by agent name. Stored as
given, the input of agent k repeats k - 1 outputs that are already stored in their own items: the run's
write units grow with the square of its length. So when an input is a dict, each top-level value under an
agent's name whose JSON equals an earlier **COMPLETED** output of the same run (known to this process: it
recorded that completion) is stored as the marker `{"\\u0000tdev-output": "<agent>"}` and resolved from that
agent's item when read (decoding gives an `OutputRef`; a caller's own key can never look like the marker,
see `_jsonform`). Only values under agent names are examined, so other inputs cost no extra encoding. A
COMPLETED output never changes, so the reference stays exact. A process that did not record the outputs (a
resumed pipeline) stores inputs whole: correct, only dearer. Large values that are not references still
share their bytes through content-addressed chunks (`_chunks`).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from tdev_state.payloads import _jsonform
from tdev_state.payloads._marks import OUTPUT_MARK, Encoders, OutputRef

__all__ = ["OUTPUT_MARK", "KnownOutputs", "references", "resolve", "substitute", "with_references"]


class KnownOutputs:
    """Per run, the SHA-256 of each COMPLETED output this process stored -> its agent (LRU of runs)."""

    def __init__(self, capacity: int = 2_000) -> None:
        self._runs: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def remember(self, run: str, agent: str, digest: str) -> None:
        with self._lock:
            self._runs.setdefault(run, {})[digest] = agent
            self._runs.move_to_end(run)
            while len(self._runs) > self._capacity:
                self._runs.popitem(last=False)

    def of(self, run: str) -> dict[str, str]:
        with self._lock:
            return dict(self._runs.get(run, {}))


def substitute(
    value: Any, known: Mapping[str, str], *, field: str, lossy: bool = False, encoders: Encoders | None = None
) -> tuple[bytes, str | None, tuple[str, ...]]:
    """The JSON text to store for an input — top-level values equal to a known output replaced by
    references — the SHA-256 of the input's own JSON (None when nothing was replaced: it is the text's), and
    the lossy warnings. The text is built from its parts' JSON exactly as the whole would be encoded, so
    duplicate detection sees the caller's value, not the stored form."""
    agents = set(known.values())
    if (
        not known
        or not isinstance(value, dict)
        or not all(type(k) is str and k[:1] != "\x00" for k in value)
        or not any(key in agents for key in value)
    ):
        raw, notes = _jsonform.to_json(value, field=field, lossy=lossy, encoders=encoders)
        return raw, None, notes
    original: list[bytes] = []
    stored: list[bytes] = []
    warnings: list[str] = []
    replaced = False
    for key, child in value.items():
        text, notes = _jsonform.to_json(child, field=field, lossy=lossy, encoders=encoders, path=f".{key}")
        warnings.extend(notes)
        agent = known.get(hashlib.sha256(text).hexdigest()) if key in agents else None
        name = _jsonform.to_json(key, field=field)[0] + b":"
        original.append(name + text)
        stored.append(name + (_jsonform.marker_json(OUTPUT_MARK, agent) if agent is not None else text))
        replaced = replaced or agent is not None
    whole = b"{" + b",".join(original) + b"}"
    if not replaced:
        return whole, None, tuple(warnings)
    return b"{" + b",".join(stored) + b"}", hashlib.sha256(whole).hexdigest(), tuple(warnings)


def references(value: Any) -> list[str]:
    """The agents whose outputs a decoded input refers to."""
    if not isinstance(value, dict):
        return []
    return [v.agent for v in value.values() if isinstance(v, OutputRef)]


def resolve(value: Any, output_of: Callable[[str], Any]) -> Any:
    """A decoded input with its references replaced by the outputs they name."""
    if not references(value):
        return value
    return {k: output_of(v.agent) if isinstance(v, OutputRef) else v for k, v in value.items()}


def with_references(value: Any, *, field: str, encoders: Encoders | None = None) -> bytes:
    """The JSON text to store for a decoded input whose top-level `OutputRef`s stay references (a fork
    merges overrides into a stored input: the earlier outputs it refers to are copied with it, so the
    references resolve in the fork exactly as in its parent)."""
    if not isinstance(value, dict) or not references(value):
        return _jsonform.to_json(value, field=field, encoders=encoders)[0]
    parts = []
    for key, child in value.items():
        name = _jsonform.to_json(key, field=field)[0] + b":"
        if isinstance(child, OutputRef):
            parts.append(name + _jsonform.marker_json(OUTPUT_MARK, child.agent))
        else:
            parts.append(name + _jsonform.to_json(child, field=field, encoders=encoders, path=f".{key}")[0])
    return b"{" + b",".join(parts) + b"}"
