"""Sizes that fit in a head (`make lint`): no module in packages/*/src or infra/src over 450 lines, no
function over 120.

A module that grows past ~400 lines is asking to be split along a concept; a function past 120 lines mixes
steps that each deserve a name. The rare module that is better whole goes into ALLOWED with the reason,
and ALLOWED holds at most two. Lines are physical lines; a function's run from its `def` to its last line
(docstring included, decorators not), nested functions counted both in their parent and on their own.

Exit status 1 when something is over and not allowed, or ALLOWED lists what is no longer over.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 120
MAX_ALLOWED = 2

#: Over the limits for good: "path" for a module, "path::qualified.name" for a function -> why it stays.
ALLOWED: dict[str, str] = {
    "packages/recovery-worker/src/tdev_recovery/worker.py": (
        "the worker's lifecycle (run, shutdown), its sweep, its claims and its resume loop are one state "
        "machine read top to bottom; the parts with a concept of their own (the hand-over to the pipeline, "
        "the busy wait, the outcomes) are already modules of their own"
    ),
}


def _functions(tree: ast.AST, prefix: str = "") -> list[tuple[str, int, int]]:
    """(qualified name, first line, length) of every function and method, nested ones included."""
    found: list[tuple[str, int, int]] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            name = f"{prefix}{node.name}"
            found.append((name, node.lineno, (node.end_lineno or node.lineno) - node.lineno + 1))
            found.extend(_functions(node, f"{name}."))
        elif isinstance(node, ast.ClassDef):
            found.extend(_functions(node, f"{prefix}{node.name}."))
        else:
            found.extend(_functions(node, prefix))
    return found


def oversized(root: Path) -> dict[str, str]:
    """Every module and function over its limit under root/packages/*/src and root/infra/src: key -> what is
    over, how much."""
    over: dict[str, str] = {}
    for path in sorted([*root.glob("packages/*/src/**/*.py"), *root.glob("infra/src/**/*.py")]):
        rel = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            over[rel] = f"{rel}: module of {lines} lines (limit {MAX_MODULE_LINES})"
        for name, first, length in _functions(ast.parse(text, filename=rel)):
            if length > MAX_FUNCTION_LINES:
                over[f"{rel}::{name}"] = (
                    f"{rel}:{first}: function {name} of {length} lines (limit {MAX_FUNCTION_LINES})"
                )
    return over


def main(root: Path = ROOT) -> int:
    """Print the offenders and what to do about each; 0 when everything fits or is allowed."""
    over = oversized(root)
    failed = False
    if len(ALLOWED) > MAX_ALLOWED:
        print(f"size check: ALLOWED lists {len(ALLOWED)} entries; at most {MAX_ALLOWED} may stay over")
        failed = True
    offenders = [what for key, what in over.items() if key not in ALLOWED]
    if offenders:
        print(f"size check: {len(offenders)} over the limits; split along a concept (or, rarely, ALLOWED):")
        for what in offenders:
            print(f"  {what}")
        failed = True
    stale = sorted(key for key in ALLOWED if key not in over)
    if stale:
        print("size check: ALLOWED lists what is no longer over; remove it from scripts/check_sizes.py:")
        for key in stale:
            print(f"  {key}")
        failed = True
    if not failed:
        print(
            f"size check: ok (modules <= {MAX_MODULE_LINES} lines, "
            f"functions <= {MAX_FUNCTION_LINES}, {len(ALLOWED)} allowed with a reason)"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
