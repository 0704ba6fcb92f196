"""The pipeline's process pays only for what it uses: the CLIs' rich and the charts' matplotlib are extras,
and importing the three libraries loads neither."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import requires


def _requirements(dist: str) -> dict[str, str]:
    """Requirement name -> its full line, for one installed distribution."""
    found = {}
    for line in requires(dist) or []:
        match = re.match(r"[A-Za-z0-9_.-]+", line)
        assert match
        found[match.group(0).lower()] = line
    return found


def test_rich_and_matplotlib_are_extras() -> None:
    """rich only with tdev-state-client[cli]; matplotlib only with tdev-metrics-collector[report]."""
    state = _requirements("tdev-state-client")
    assert re.search(r"extra == ['\"]cli['\"]", state["rich"])
    metrics = _requirements("tdev-metrics-collector")
    assert re.search(r"extra == ['\"]report['\"]", metrics["matplotlib"])
    assert "rich" not in metrics  # it comes with tdev-state-client[cli], through the report extra
    worker = _requirements("tdev-recovery-worker")
    assert not {"rich", "matplotlib"} & set(worker)


def test_ddsketch_is_pinned_below_its_next_major() -> None:
    """The collector stores the sketch's mapping parameters; a new major may change them."""
    assert "<4" in _requirements("tdev-metrics-collector")["ddsketch"]


def test_importing_the_libraries_loads_no_cli_or_chart_code() -> None:
    """What the pipeline imports (the plan's calls, the collector, resume_pipeline) loads neither the CLIs
    nor matplotlib. (structlog itself imports rich when it is installed, for its dev console; without the
    extra it is not installed, so this checks our own imports.)"""
    code = (
        "import sys, tdev_state, tdev_metrics, tdev_recovery\n"
        "from tdev_state import save_pipeline_session, resume_pipeline\n"
        "from tdev_metrics import record_metric\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib' or m.endswith('.cli')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
