"""The pipeline's process pays only for what it uses: the CLIs' rich and the charts' matplotlib are extras,
importing the three libraries loads neither, and the collector needs no numpy."""

from __future__ import annotations

import math
import random
import re
import subprocess
import sys
from collections import Counter
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


# --- the pipeline's install carries no numerical library (#25 lean installs) --------------------------------


def test_the_collector_does_not_require_numpy() -> None:
    """tdev-metrics-collector's own requirements have no numpy (matplotlib brings it to the report extra)."""
    metrics = _requirements("tdev-metrics-collector")
    assert "numpy" not in metrics
    assert not any("numpy" in line and "extra" not in line for line in metrics.values())


def test_recording_and_folding_metrics_loads_no_numpy() -> None:
    """The pipeline's process records metrics and folds them into buckets without importing numpy."""
    code = (
        "import sys\n"
        "from tdev_metrics._aggregate import Aggregate\n"
        "agg = Aggregate()\n"
        "for v in (0.0, 0.5, 2.0, -3.0, 1e6):\n"
        "    agg.add(v, error=False)\n"
        "agg.fold()\n"
        "assert sum(agg.buckets.values()) == 5, agg.buckets\n"
        "print('numpy' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "False"


def _numpy_fold(values: list[float]) -> Counter[str]:
    """The collector's former fold (numpy, vectorised), kept here as the reference the pure one must equal."""
    import numpy as np

    from tdev_metrics._aggregate import _MIN, _MULTIPLIER, _OFFSET

    array = np.asarray(values, dtype=np.float64)
    buckets: Counter[str] = Counter()
    for prefix, part in (("p", array[array > _MIN]), ("n", -array[array < -_MIN])):
        if part.size:
            keys = (np.ceil(np.log2(part) * _MULTIPLIER) + _OFFSET).astype(np.int64)
            found, counts = np.unique(keys, return_counts=True)
            for k, n in zip(found.tolist(), counts.tolist(), strict=True):
                buckets[f"{prefix}{k}"] += n
    zeros = int(array.size - np.count_nonzero(array > _MIN) - np.count_nonzero(array < -_MIN))
    if zeros:
        buckets["z"] += zeros
    return buckets


def test_the_pure_fold_equals_the_numpy_fold() -> None:
    """On the same data — 200k random values over 24 orders of magnitude, both signs, zeros, and every
    bucket boundary with its neighbours — the pure-Python fold gives exactly the numpy fold's buckets."""
    from tdev_metrics._aggregate import MAPPING, Aggregate

    rng = random.Random(25)
    values = [rng.lognormvariate(0, 4) * rng.choice((1, 1, 1, -1)) for _ in range(200_000)]
    values += [0.0, -0.0, 1e-300, -1e-300, MAPPING.min_possible, -MAPPING.min_possible]
    for k in range(-1500, 1500):
        edge = MAPPING.gamma**k
        values += [edge, math.nextafter(edge, 0), math.nextafter(edge, math.inf)]
    aggregate = Aggregate()
    aggregate.raw = list(values)
    aggregate.fold()
    assert aggregate.buckets == _numpy_fold(values)
    assert sum(aggregate.buckets.values()) == len(values)
