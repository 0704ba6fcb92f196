"""`tdev backlog` as an operator runs it: the installed `tdev` command, as subprocesses, against LocalStack
(or AWS with TDEV_TARGET=aws), on tables of its own, with a pipeline resume endpoint in this process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tdev_state import AGENTS, SessionStatus, StateClient, StateConfig
from tdev_state.tables import delete_tables
from tdev_state.testing import serve_resume_endpoint

TDEV = str(Path(sys.executable).with_name("tdev"))


@dataclass
class Setup:
    client: StateClient
    env: dict[str, str]
    received: list[dict[str, Any]]
    failed: str  # FAILED at generation: to resume
    doomed: str  # FAILED at assembly: to abandon
    leased: str  # FAILED, held by a worker's lease: refused


def _failed_run(client: StateClient, done: int) -> str:
    sid = f"it-backlog-{uuid.uuid4().hex[:12]}"
    client.sessions.create(user_id="ops", project_name="shop", session_id=sid)
    for agent in AGENTS[:done]:
        client.executions.start(sid, agent, input_data={"in": agent})
        client.executions.complete(sid, agent, output_data={"out": agent})
    client.executions.start(sid, AGENTS[done])
    client.executions.fail(sid, AGENTS[done], error_message="llm quota")
    client.sessions.update(sid, status="FAILED")
    return sid


@pytest.fixture(scope="module")
def setup(base_config: StateConfig) -> Iterator[Setup]:
    """Tables of its own (no other test's runs in the backlog), three FAILED runs, a resume endpoint."""
    config = replace(base_config, env=f"{base_config.env}b")
    client = StateClient(config)
    client.create_tables(streams=False)
    received: list[dict[str, Any]] = []

    def accept(body: dict[str, Any]) -> int:
        received.append(body)
        return 202

    server, url = serve_resume_endpoint(accept)
    env = {
        **os.environ,
        "TDEV_ENV": config.env,
        "TDEV_RESUMER": url,
        # The worker's setting, shared by the CLI: a 1 s threshold so a just-failed run is due at once.
        "TDEV_STALL_THRESHOLD": "1",
    }
    if config.endpoint_url:
        env["AWS_ENDPOINT_URL"] = config.endpoint_url
    try:
        leased = _failed_run(client, 6)
        claim = client.claims.claim(
            client.sessions.candidate(leased), worker_id="w-it", lease=timedelta(minutes=5)
        )
        assert claim is not None
        yield Setup(client, env, received, _failed_run(client, 6), _failed_run(client, 7), leased)
    finally:
        server.shutdown()
        server.server_close()
        delete_tables(client.layer)
        client.close()


def tdev(setup: Setup, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TDEV, "backlog", *argv], env=setup.env, capture_output=True, text=True, timeout=120, check=False
    )


def _listed_and_due(setup: Setup) -> list[dict[str, Any]]:
    """`tdev backlog list --json`, polled until both free runs are past the 1 s threshold (30 s at most)."""
    deadline = time.monotonic() + 30
    while True:
        done = tdev(setup, "list", "--json")
        assert done.returncode == 0, done.stderr
        rows: list[dict[str, Any]] = json.loads(done.stdout)
        ready = {r["session_id"] for r in rows if r["actionable"]}
        if {setup.failed, setup.doomed} <= ready or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)  # polling the real command, with a deadline


def test_the_backlog_from_the_terminal(setup: Setup) -> None:
    """list (JSON and table), a dry run that writes nothing, resume, abandon with a reason, and refusals —
    each one real `tdev backlog` process against the store."""
    rows = _listed_and_due(setup)
    by_id = {r["session_id"]: r for r in rows}
    assert set(by_id) == {setup.failed, setup.doomed, setup.leased}
    assert by_id[setup.leased]["lease_owner"] == "w-it"
    assert not by_id[setup.leased]["actionable"]

    table = tdev(setup, "list")
    assert table.returncode == 0, table.stderr
    assert all(sid in table.stdout for sid in by_id)  # full ids, never cut
    assert "3 run(s): 3 FAILED, 0 stalled; 2 ready" in table.stdout

    piped = subprocess.run(  # a reader that quits before the table comes: a quiet end, not a traceback
        ["bash", "-c", f"{TDEV} backlog list | true; exit ${{PIPESTATUS[0]}}"],
        env=setup.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (piped.returncode, piped.stderr) == (0, "")

    versions = {sid: setup.client.sessions.candidate(sid).version for sid in by_id}
    dry = tdev(setup, "resume", "--all", "--dry-run")
    assert dry.returncode == 1, dry.stderr  # the leased run would be refused
    assert f"would refuse {setup.leased}: worker w-it holds it" in dry.stdout
    assert "dry run, nothing written: 3 run(s); 2 would be resumed, 1 would be refused" in dry.stdout
    assert {sid: setup.client.sessions.candidate(sid).version for sid in by_id} == versions
    assert setup.received == []

    resumed = tdev(setup, "resume", setup.failed)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith(f"resumed {setup.failed} ")
    assert [(r["session_id"], r["next_agent"]) for r in setup.received] == [(setup.failed, "generation")]

    abandoned = tdev(setup, "abandon", setup.doomed, "--reason", "customer cancelled", "--json")
    assert abandoned.returncode == 0, abandoned.stderr
    assert json.loads(abandoned.stdout)["outcome"] == "abandoned"
    session = setup.client.sessions.get(setup.doomed)
    assert session.status is SessionStatus.ABANDONED
    assert "customer cancelled" in (session.error_message or "")

    refused = tdev(setup, "abandon", setup.leased, "--reason", "no")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]
    assert "w-it" in refused.stderr
    assert "Traceback" not in refused.stderr

    unknown = tdev(setup, "resume", "no-such-run")
    assert (unknown.returncode, unknown.stderr.startswith("not found: ")) == (1, True)
