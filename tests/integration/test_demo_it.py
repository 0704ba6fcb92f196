"""The demo's workload, small: it must finish with every invariant holding and write its report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tdev_state import StateClient

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(400)
def test_demo_workload_holds_its_invariants(client: StateClient, tmp_path: Path) -> None:
    """8 runs, 2 pipeline processes (one SIGKILLed), 2 workers: exit 0, report with the recoveries."""
    env = {
        **os.environ,
        "TDEV_ENV": client.config.env,
        "TDEV_PAYLOAD_BUCKET": client.config.payload_bucket or "",
        "AWS_ENDPOINT_URL": client.config.endpoint_url or "",
        "PYTHONPATH": str(ROOT),
    }
    args = ["--runs", "8", "--drivers", "2", "--kills", "1", "--out", str(tmp_path), "--timeout", "240"]
    done = subprocess.run(
        [sys.executable, "-m", "demo", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=360,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "all invariants hold" in done.stdout
    report = (tmp_path / "index.html").read_text()
    assert "Recoveries" in report
    assert "SIGKILLed" in report
