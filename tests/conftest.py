"""Shared test set-up: markers by directory, and fault injectors that work on moto and LocalStack alike."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tdev_state.testing import LogEntries, log_entries

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests under tests/unit are `unit`, under tests/integration `integration` — no test without one."""
    for item in items:
        path = Path(str(item.fspath))
        if HERE / "unit" in path.parents:
            item.add_marker(pytest.mark.unit)
        elif HERE / "integration" in path.parents:
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say loudly when the console's browser tests were skipped on purpose: a skip is not a pass."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "TDEV_SKIP_BROWSER" in str(r.longrepr)]
    if skipped:
        terminalreporter.write_sep(
            "!",
            f"{len(skipped)} browser tests SKIPPED (TDEV_SKIP_BROWSER=1): "
            "the console was NOT tested in a browser",
        )


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> LogEntries:
    """The packages' log entries so far, as dicts (event, log_level and the fields), captured through stdlib
    logging the way a host application would receive them."""
    for name in ("tdev_state", "tdev_recovery", "tdev_metrics"):
        caplog.set_level(logging.DEBUG, logger=name)

    def entries() -> list[dict[str, Any]]:
        return log_entries(caplog.records)

    return entries
