"""Figures for docs/reliability.md: fault tests call `record()`; `make chaos` collects them.

A no-op unless TDEV_CHAOS_REPORT names a file (make chaos sets it); then each call appends one JSON line.
The figures are what the test measured and asserted on — not a separate simulation.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any


def record(
    scenario: str,
    *,
    lost: int | None = None,
    double_counted: int | None = None,
    resumed_twice: int | None = None,
    **figures: Any,
) -> None:
    """One scenario's figures. A figure the scenario does not measure is left None and printed "n/a"."""
    path = os.environ.get("TDEV_CHAOS_REPORT")
    if not path:
        return
    line = {
        "scenario": scenario,
        "lost": lost,
        "double_counted": double_counted,
        "resumed_twice": resumed_twice,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **figures,
    }
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")
