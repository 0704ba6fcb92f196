"""Accumulated inputs: earlier outputs inside an agent's input are stored as references to them.

T-Developer hands each agent the request plus every earlier agent's output, keyed by agent name. Stored as
given, the input of agent k repeats k - 1 outputs that are already stored in their own items: the run's
write units grow with the square of its length. So when an input is a dict, each top-level value under an
agent's name whose JSON equals an earlier **COMPLETED** output of the same run (known to this process: it
recorded that completion) is stored as `{"\u0000tdev-output": "<agent>"}` and resolved from that agent's
item when read. Only values under agent names are examined, so other inputs cost no extra encoding. A
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

from tdev_state import _codec

OUTPUT_MARK = "\x00tdev-output"


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


def substitute(value: Any, known: Mapping[str, str], *, field: str) -> tuple[Any, str | None]:
    """`value` with top-level values equal to a known output replaced by references, and the SHA-256 of the
    original JSON (None when nothing was replaced). The digest is computed from the parts' JSON, exactly as
    the whole would be encoded, so duplicate detection sees the caller's value, not the stored form."""
    if not known or not isinstance(value, dict) or not value or not all(isinstance(k, str) for k in value):
        return value, None  # (non-string keys are refused by the codec, with its message)
    agents = set(known.values())
    if not any(key in agents for key in value):
        return value, None  # the orchestrator keys earlier outputs by agent name: nothing to look at here
    parts: list[bytes] = []
    out: dict[str, Any] = {}
    replaced = False
    for key, child in value.items():
        text = _codec.dumps(child, field=f"{field}.{key}")
        agent = known.get(hashlib.sha256(text).hexdigest()) if key in agents else None
        out[key] = {OUTPUT_MARK: agent} if agent is not None else child
        replaced = replaced or agent is not None
        parts.append(_codec.dumps(key, field=field) + b":" + text)
    if not replaced:
        return value, None
    return out, hashlib.sha256(b"{" + b",".join(parts) + b"}").hexdigest()


def references(value: Any) -> list[str]:
    """The agents whose outputs a decoded input refers to."""
    if not isinstance(value, dict):
        return []
    return [
        str(v[OUTPUT_MARK])
        for v in value.values()
        if isinstance(v, dict) and len(v) == 1 and OUTPUT_MARK in v
    ]


def resolve(value: Any, output_of: Callable[[str], Any]) -> Any:
    """A decoded input with its references replaced by the outputs they name."""
    if not references(value):
        return value
    return {
        k: output_of(str(v[OUTPUT_MARK])) if isinstance(v, dict) and len(v) == 1 and OUTPUT_MARK in v else v
        for k, v in value.items()
    }
