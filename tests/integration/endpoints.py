"""Plain helpers of the integration tests (the fixtures that use them are in conftest.py): raw boto3 clients
for checks behind the library's back, layers with config overrides, and extra LocalStack instances."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
from localstack_client.session import Session as LocalStackSession

from tdev_state import StateConfig
from tdev_state.layer import DynamoLayer


def raw_client(service: str, config: StateConfig) -> Any:
    """A plain boto3 client for set-up and for checks behind the library's back. On LocalStack it comes from
    localstack-client's session (LocalStack's endpoint and credentials, whatever the shell exports), on AWS
    from boto3's own credential chain: the same test code serves both targets."""
    if config.endpoint_url is None:
        return boto3.session.Session(region_name=config.region).client(service)
    session = LocalStackSession(
        region_name=config.region, localstack_host=urlparse(config.endpoint_url).netloc
    )
    # Its endpoint: $AWS_ENDPOINT_URL when set (make test sets it to this same LocalStack), else the host.
    return session.client(service)


def layer_for(config: StateConfig, **overrides: object) -> DynamoLayer:
    """A layer with config overrides on the run's tables (e.g. fewer attempts, no bucket)."""
    return DynamoLayer(replace(config, **overrides))  # type: ignore[arg-type]


@dataclass(frozen=True)
class ExtraLocalStack:
    """Another host-mode LocalStack for fault tests: its endpoint, and `ctl` to start or stop it."""

    endpoint: str
    env: dict[str, str]
    script: str

    def ctl(self, command: str) -> float:
        """Run `localstack.sh command` for this instance; the seconds it took."""
        started = time.monotonic()
        subprocess.run(["bash", self.script, command], env=self.env, check=True, capture_output=True)
        return time.monotonic() - started


def free_port() -> int:
    """A port nothing listens on now (bound to port 0, then released): tests never take a fixed port, so two
    suites, or two test workers, on one machine never meet."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def extra_localstack(name: str, **settings: str) -> Iterator[ExtraLocalStack]:
    """Start one (own port, own run dir under .cache/, extra LocalStack settings); always stopped after."""
    root = Path(__file__).resolve().parents[2]
    port = free_port()
    env = {
        **os.environ,
        "TDEV_LOCALSTACK_RUN": str(root / ".cache" / f"{name}-{port}"),
        "LOCALSTACK_PORT": str(port),
        "LOCALSTACK_MODE": "host",
        **settings,
    }
    instance = ExtraLocalStack(f"http://127.0.0.1:{port}", env, str(root / "localstack" / "localstack.sh"))
    instance.ctl("up")
    try:
        yield instance
    finally:
        subprocess.run(["bash", instance.script, "down"], env=env, check=False, capture_output=True)
