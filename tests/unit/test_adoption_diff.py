"""The adoption's size, measured: examples/orchestrator/after.py differs from before.py by the lines
docs/adoption.md states (resume route included), and the doc shows that very diff — so neither can drift."""

from __future__ import annotations

import ast
import difflib
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "orchestrator"
DOC = ROOT / "docs" / "adoption.md"


def code_lines(path: Path) -> list[str]:
    """The file's lines without its module docstring (which describes the file, not the orchestrator)."""
    text = path.read_text()
    lines = text.splitlines()
    first = ast.parse(text).body[0]
    is_docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    return lines[first.end_lineno :] if is_docstring and first.end_lineno else lines


def changed_lines() -> list[str]:
    """The +/- lines of the unified diff, before -> after."""
    diff = difflib.unified_diff(
        code_lines(EXAMPLE / "before.py"), code_lines(EXAMPLE / "after.py"), lineterm="", n=0
    )
    return [line for line in diff if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def test_the_doc_states_the_measured_number_of_changed_lines() -> None:
    """docs/adoption.md's figure is the diff's: lines added plus lines removed, at most 45."""
    changed = changed_lines()
    added = sum(1 for line in changed if line.startswith("+"))
    stated = re.search(r"\*\*(\d+) lines\*\* \((\d+) added, (\d+) removed\)", DOC.read_text())
    assert stated is not None, "docs/adoption.md must state '**N lines** (A added, R removed)'"
    assert tuple(map(int, stated.groups())) == (len(changed), added, len(changed) - added)
    assert len(changed) <= 45


def test_the_doc_shows_the_adoption_as_it_is_in_the_miniature() -> None:
    """Every line the adoption adds appears verbatim in docs/adoption.md's diff block."""
    block = re.search(r"```diff\n(.*?)```", DOC.read_text(), re.S)
    assert block is not None
    shown = {line.rstrip() for line in block.group(1).splitlines()}
    missing = [line for line in changed_lines() if line.startswith("+") and line.rstrip() not in shown]
    assert missing == []
