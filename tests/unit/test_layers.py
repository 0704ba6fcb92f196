"""The state client's bottom layers (issue #24): the DynamoDB door knows DynamoDB only, the payload store is
built on it, and the chunk split gives the same bytes however it is computed."""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tdev_state
from tdev_metrics._aggregate import Aggregate, Key
from tdev_metrics._store import MetricsStore, plan_writes
from tdev_state import StateClient
from tdev_state.payloads import _chunks, _jsonform
from tdev_state.storage import DynamoDoor
from tdev_state.testing import generated_project

PACKAGE = Path(tdev_state.__file__).parent
RUN_STORES = {
    f"tdev_state.{name}"
    for name in ("_sessions", "_executions", "_claims", "_projects", "_lifecycle", "_liveness", "_items")
}


def _imports_of(subpackage: str) -> set[str]:
    """Every module the subpackage's source imports (absolute names; its own relative imports resolved)."""
    found: set[str] = set()
    paths = sorted((PACKAGE / subpackage).glob("*.py"))
    assert paths, f"tdev_state.{subpackage} has no modules"
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _reaches(imports: set[str], modules: set[str]) -> set[str]:
    return {name for name in imports for module in modules if name == module or name.startswith(module + ".")}


def test_the_storage_door_imports_no_payload_s3_kms_or_usage_code() -> None:
    """tdev_state.storage imports neither payloads, the usage bus, the client's layer, a run store, S3 nor
    KMS code: the rule runs -> payloads -> storage, never back."""
    imports = _imports_of("storage")
    assert "botocore.exceptions" in imports  # the scan sees the door's own imports
    forbidden = {
        "tdev_state.payloads",
        "tdev_state.usage",
        "tdev_state.layer",
        "cryptography",
        "mypy_boto3_s3",
    }
    assert not _reaches(imports, forbidden | RUN_STORES)


def test_payloads_import_no_run_store() -> None:
    """tdev_state.payloads imports no run store, nor the client or its layer."""
    imports = _imports_of("payloads")
    assert not _reaches(imports, RUN_STORES | {"tdev_state.layer", "tdev_state.client", "tdev_state.usage"})


def test_the_metrics_store_writes_through_a_bare_door(client: StateClient) -> None:
    """The collector's store needs a DynamoDB door only: one without S3, KMS or a usage bus writes and
    deduplicates its metrics."""
    door = DynamoDoor(client.config)
    assert not hasattr(door, "payloads")
    assert not hasattr(door, "usage")
    store = MetricsStore(door, "w1")
    aggregate = Aggregate()
    aggregate.add(2.0, error=False)
    (write,) = plan_writes(aggregate, iter(range(1, 9)).__next__)
    key = Key(490_000, "agent_execution_time", "parser", None)
    assert store.apply(key, write) is True
    assert store.apply(key, write) is False


def _reference_split(raw: bytes, min_bytes: int) -> tuple[bytes, dict[str, bytes]]:
    """The split as it was first written: parse, then dump every big subtree at every level."""
    stored: dict[str, bytes] = {}

    def visit(node: Any, text: bytes) -> Any:
        if len(text) < min_bytes:
            return node
        if isinstance(node, dict):
            node = {k: visit(v, _chunks.canonical(v)) for k, v in node.items()}
        elif isinstance(node, list):
            node = [visit(v, _chunks.canonical(v)) for v in node]
        rest = _chunks.canonical(node)
        if len(rest) < min_bytes:
            return node
        name = hashlib.sha256(rest).hexdigest()
        stored[name] = rest
        return {_chunks.CHUNK_MARK: name}

    tree = json.loads(raw)
    return _chunks.canonical(visit(tree, _chunks.canonical(tree))), stored


json_trees = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=300),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6),
    max_leaves=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_trees, min_bytes=st.sampled_from([1, 16, 200, 2_000]))
def test_the_text_split_stores_the_same_chunks_and_skeleton(value: Any, min_bytes: int) -> None:
    """Splitting the JSON text gives byte for byte the skeleton and chunks of the tree-based split, and the
    skeleton joins back to the payload's text."""
    raw = _jsonform.to_json(value, field="f")[0]
    stored: dict[str, bytes] = {}

    def store(sha256: str, text: bytes) -> str:
        stored[sha256] = text
        return sha256

    skeleton = _chunks.split(raw, min_bytes=min_bytes, store=store)
    assert (skeleton, stored) == _reference_split(raw, min_bytes)
    assert _chunks.join(skeleton, stored.__getitem__, field="f") == raw


def test_generated_code_is_one_chunk_with_the_same_name_as_before() -> None:
    """1 MB of generated files: the same single chunk (same SHA-256 name) as the tree-based split."""
    raw = _jsonform.to_json(generated_project(1_000_000, seed=3), field="f")[0]
    stored: dict[str, bytes] = {}
    skeleton = _chunks.split(raw, min_bytes=64 * 1024, store=lambda h, t: stored.setdefault(h, t) and h)
    assert (skeleton, stored) == _reference_split(raw, 64 * 1024)
    assert len(stored) == 1
