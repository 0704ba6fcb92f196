"""Shared test set-up: markers by directory, and fault injectors that work on moto and LocalStack alike."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests under tests/unit are `unit`, under tests/integration `integration` — no test without one."""
    for item in items:
        path = Path(str(item.fspath))
        if HERE / "unit" in path.parents:
            item.add_marker(pytest.mark.unit)
        elif HERE / "integration" in path.parents:
            item.add_marker(pytest.mark.integration)
