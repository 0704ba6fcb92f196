"""The shipped test doubles (tdev_state.testing, tdev_recovery.testing) do what the suites, the demo and the
benchmarks rely on, and keep moto out of the library's runtime."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from importlib.metadata import requires
from typing import Any

import boto3
import pytest

from tdev_recovery.testing import start_worker
from tdev_state import AGENTS, AgentStatus, ConfigurationError, StateClient, ValidationError
from tdev_state.testing import (
    BUCKET,
    FakeClock,
    agent_payload,
    generated_project,
    make_client,
    make_stalled_runs,
    moto_aws,
    moto_client,
    serve_resume_endpoint,
)


def test_fake_clock_readings_increase_and_advance_moves_them() -> None:
    """Two readings differ; advance(minutes=5) moves the next reading five minutes on."""
    clock = FakeClock()
    first, second = clock(), clock()
    clock.advance(minutes=5)
    assert first < second
    assert (clock() - second).total_seconds() == pytest.approx(300, abs=0.001)


def test_fake_clock_refuses_to_go_backwards() -> None:
    """advance() with a negative delta is a ValidationError, not a silently reordered history."""
    clock = FakeClock()
    with pytest.raises(ValidationError, match="forward only"):
        clock.advance(seconds=-1)


def test_moto_aws_restores_the_shell_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """An endpoint the shell exported is hidden inside moto_aws() and back afterwards."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    with moto_aws():
        assert "AWS_ENDPOINT_URL" not in os.environ
    assert os.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:1"


def test_make_client_outside_moto_is_refused() -> None:
    """make_client without moto_aws() raises instead of creating tables wherever credentials point."""
    with pytest.raises(ConfigurationError, match="moto_aws"):
        make_client(FakeClock())


def test_make_client_rejects_unknown_config_fields() -> None:
    """A misspelt StateConfig field is a ValidationError naming it."""
    with moto_aws(), pytest.raises(ValidationError, match="payload_buckt"):
        make_client(FakeClock(), payload_buckt="x")


def test_moto_client_offloads_to_its_bucket() -> None:
    """moto_client() has tables and the payload bucket: a 100 KB output round-trips through S3."""
    project = generated_project(100_000)
    with moto_client(FakeClock()) as client:
        sid = client.sessions.create(user_id="u", project_name="p").session_id
        client.executions.start(sid, AGENTS[0], input_data={})
        client.executions.complete(sid, AGENTS[0], output_data=project)
        objects = boto3.client("s3", region_name="us-east-1").list_objects_v2(Bucket=BUCKET)
        assert objects.get("KeyCount", 0) > 0
        assert client.executions.get(sid, AGENTS[0]).output_data == project


def test_payload_profiles_are_deterministic_and_near_their_size() -> None:
    """The same seed gives the same payload; project sizes land within 10 %, agent payloads within 25 %."""
    assert generated_project(200_000, seed=3) == generated_project(200_000, seed=3)
    assert generated_project(200_000, seed=3) != generated_project(200_000, seed=4)
    assert len(json.dumps(generated_project(200_000))) == pytest.approx(200_000, rel=0.1)
    assert len(json.dumps(agent_payload(3, seed=1))) == pytest.approx(3 * 1024, rel=0.25)


def test_payload_profiles_reject_negative_sizes() -> None:
    """A negative size is a ValidationError, not an empty payload that skews a benchmark."""
    with pytest.raises(ValidationError):
        generated_project(-1)
    with pytest.raises(ValidationError):
        agent_payload(-1, seed=0)


def test_stalled_runs_stop_where_the_builder_says(client: StateClient) -> None:
    """Each stalled run has the agents the builder returned COMPLETED and at most the next one RUNNING."""
    runs = make_stalled_runs(client, 6, seed=1, threads=2)
    assert len(runs) == 6
    for sid, completed in runs.items():
        statuses = [(e.agent_name, e.status) for e in client.executions.list(sid, load_payloads=False)]
        done = [(agent, AgentStatus.COMPLETED) for agent in completed]
        assert statuses in (done, [*done, (AGENTS[len(completed)], AgentStatus.RUNNING)])


def test_resume_endpoint_answers_with_the_handlers_status() -> None:
    """A POST reaches the handler with its JSON body and gets the status the handler returns."""
    seen: list[dict[str, Any]] = []

    def handle(body: dict[str, Any]) -> int:
        seen.append(body)
        return 409

    server, url = serve_resume_endpoint(handle)
    try:
        request = urllib.request.Request(url, data=b'{"session_id": "s1"}', method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 409
        assert seen == [{"session_id": "s1"}]
    finally:
        server.shutdown()
        server.server_close()


def test_start_worker_rejects_a_non_http_resumer() -> None:
    """start_worker validates before it spawns anything."""
    with pytest.raises(ValidationError, match="URL"):
        start_worker(0, "127.0.0.1:8000/resume", {}, stall=1.0)


def test_moto_is_an_extra_and_not_imported_with_the_module() -> None:
    """moto comes only with tdev-state-client[testing], and importing tdev_state.testing loads none of it."""
    moto = [line for line in requires("tdev-state-client") or [] if line.lower().startswith("moto")]
    assert moto
    assert all(re.search(r"extra == ['\"]testing['\"]", line) for line in moto)
    code = "import sys, tdev_state.testing, tdev_recovery.testing; print('moto' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "False"
