"""Realistic pipeline payloads for tests and benchmarks, deterministic per seed.

Generated source code compresses about 3-5x with zlib, like real code (identifiers and literals vary);
a repeated line would compress 100x and make every size-based measurement meaningless.
"""

from __future__ import annotations

import random
import string
from typing import Any

_WORDS = [
    "user",
    "todo",
    "item",
    "list",
    "render",
    "state",
    "props",
    "effect",
    "fetch",
    "handle",
    "submit",
    "click",
    "value",
    "index",
    "key",
    "route",
    "page",
    "form",
    "input",
    "button",
    "modal",
    "card",
    "table",
    "row",
    "column",
    "style",
    "theme",
    "config",
    "token",
    "session",
    "cache",
    "error",
    "loading",
    "data",
    "response",
    "request",
    "query",
    "params",
    "result",
    "count",
    "total",
    "filter",
    "sort",
    "search",
]


def _ident(rng: random.Random) -> str:
    parts = rng.sample(_WORDS, rng.randint(1, 3))
    return parts[0] + "".join(p.title() for p in parts[1:])


def source_file(rng: random.Random, target_bytes: int) -> str:
    """One file of plausible TypeScript/Python-ish code of about `target_bytes`."""
    lines: list[str] = []
    size = 0
    while size < target_bytes:
        kind = rng.random()
        indent = "  " * rng.randint(0, 3)
        if kind < 0.25:
            line = f"{indent}const {_ident(rng)} = {_ident(rng)}({_ident(rng)}, {rng.randint(0, 9999)});"
        elif kind < 0.45:
            line = f"{indent}if ({_ident(rng)}.{_ident(rng)} !== {rng.choice(['null', 'undefined', '0'])}) {{"
        elif kind < 0.6:
            line = f"{indent}return {_ident(rng)}.map(({_ident(rng)}) => {_ident(rng)}.{_ident(rng)});"
        elif kind < 0.75:
            text = " ".join(rng.choices(_WORDS, k=rng.randint(3, 9)))
            line = f"{indent}// {text}"
        elif kind < 0.9:
            name = "".join(rng.choices(string.ascii_letters, k=8))
            line = f"{indent}export function {_ident(rng)}{name}({_ident(rng)}: string): void {{"
        else:
            line = indent + "}"
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines)


def generated_project(total_bytes: int, *, seed: int = 7, files: int = 40) -> dict[str, Any]:
    """The `generation` agent's output: {"files": {path: source}} of about `total_bytes` of JSON."""
    rng = random.Random(seed)
    per_file = max(1, total_bytes // files)
    return {
        "files": {f"src/components/{_ident(rng)}_{i}.tsx": source_file(rng, per_file) for i in range(files)},
        "framework": "react",
    }


def agent_payload(kilobytes: float, *, seed: int) -> dict[str, Any]:
    """A few-KB structured agent input/output: requirements, components, scores."""
    rng = random.Random(seed)
    target = int(kilobytes * 1024)
    out: dict[str, Any] = {"requirements": [], "scores": {}}
    size = 0
    while size < target:
        item = {
            "id": rng.randint(1, 10**6),
            "name": _ident(rng),
            "description": " ".join(rng.choices(_WORDS, k=rng.randint(5, 15))),
            "weight": round(rng.random(), 4),
        }
        out["requirements"].append(item)
        out["scores"][_ident(rng) + str(rng.randint(0, 99))] = round(rng.random() * 100, 2)
        size += 140
    return out
