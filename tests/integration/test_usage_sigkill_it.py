"""The usage report equals the tables after a pipeline process is SIGKILLed (LocalStack, or AWS): the
counts of stored facts come from the tables, not from the buffer that died with the process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tdev_metrics.usage_reader import UsageReader
from tdev_state import StateClient, StateConfig
from tdev_state.tables import delete_tables

from ..usage_mix import ground_truth
from .endpoints import raw_client

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def own_tables(base_config: StateConfig) -> Iterator[StateClient]:
    """Tables of its own: the report counts a whole day of the env, so no other test's runs may be there."""
    client = StateClient(replace(base_config, env=f"{base_config.env}k", payload_bucket=None))
    client.create_tables(streams=False)
    try:
        yield client
    finally:
        delete_tables(client.layer)


def test_the_usage_report_equals_the_tables_after_a_sigkilled_pipeline(
    own_tables: StateClient, tmp_path: Path
) -> None:
    """A pipeline process writes runs through PipelineRun (completed, one retried agent, one FAILED, one in
    flight) and is SIGKILLed before its collector flushes: every run and funnel count of the report equals
    the tables (before: the report counted none of them)."""
    config = own_tables.config
    ready = tmp_path / "ready"
    tag = f"k{uuid.uuid4().hex[:6]}"
    command = [sys.executable, "-m", "tests.usage_child", "--env", config.env, "--tag", tag]
    command += ["--region", config.region, "--ready", str(ready)]
    if config.endpoint_url:
        command += ["--endpoint", config.endpoint_url]
    log = tmp_path / "child.log"
    with log.open("w") as out:
        child = subprocess.Popen(command, cwd=ROOT, env=dict(os.environ), stdout=out, stderr=out)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert child.poll() is None, log.read_text()[-2000:]
        assert time.monotonic() < deadline, "the pipeline process never got its runs written"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    today = datetime.now(UTC).date()
    report = UsageReader(own_tables).report(today, today)
    sessions = [f"{tag}-ok0", f"{tag}-ok1", f"{tag}-failed", f"{tag}-live"]
    truth = ground_truth(raw_client("dynamodb", config), own_tables, {"sessions": sessions, "projects": []})
    counted = {k: report["runs"][k] for k in truth["runs"] if k != "by_pipeline_type"}
    assert counted == {k: v for k, v in truth["runs"].items() if k != "by_pipeline_type"}
    assert counted["started"] == 4
    assert (counted["failed"], counted["completed"]) == (1, 2)
    assert [dict(r) for r in report["funnel"]] == truth["funnel"]
