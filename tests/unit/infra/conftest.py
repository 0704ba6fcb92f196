"""One synth per test session, shared by every infra test.

A synth imports the prebuilt AWS provider through jsii: ~30 s and ~1.6 GB. It runs once, in a child process
(so the memory goes back when it ends), exactly as `cdktf synth` runs the app, with the optional parts
switched on: an S3 state backend and task roles.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

STACKS = ("local", "dev", "prod")
STATE_BUCKET = "tdev-tfstate-test"
TASK_PRINCIPAL = "ecs-tasks.amazonaws.com"
DEV_ACCOUNT, PROD_ACCOUNT = "111111111111", "222222222222"
PROD_ROLE = f"arn:aws:iam::{PROD_ACCOUNT}:role/t-developer-deploy"


@dataclass(frozen=True)
class Synth:
    """The synthesized output: the stacks directory and each stack's JSON (text and parsed)."""

    root: Path

    def path(self, env: str) -> Path:
        return self.root / "stacks" / f"t-developer-{env}" / "cdk.tf.json"

    def text(self, env: str) -> str:
        return self.path(env).read_text()

    def json(self, env: str) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.text(env))
        return parsed

    def resources(self, env: str, kind: str) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = self.json(env).get("resource", {}).get(kind, {})
        return found


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    out = tmp_path_factory.mktemp("cdktf.out")
    env = {
        **os.environ,
        "TDEV_TF_STATE_BUCKET": STATE_BUCKET,
        "TDEV_TASK_ROLE_PRINCIPAL": TASK_PRINCIPAL,
        "TDEV_DEV_ACCOUNT_ID": DEV_ACCOUNT,
        "TDEV_PROD_ACCOUNT_ID": PROD_ACCOUNT,
        "TDEV_PROD_ROLE_ARN": PROD_ROLE,
        **{
            f"TDEV_{env.upper()}_{name}": value.format(env=env)
            for env in ("dev", "prod")
            for name, value in (
                ("SUBNETS", "subnet-{env}1, subnet-{env}2"),
                ("SECURITY_GROUPS", "sg-{env}"),
                ("RESUMER_URL", "https://pipeline.{env}.example/resume"),
            )
        },
        "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "tdev_infra", "--outdir", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"synth failed:\n{proc.stdout}\n{proc.stderr}"
    return Synth(out)


@pytest.fixture(scope="session")
def cdktf_testing() -> Any:
    """cdktf's Testing matchers (cdktf alone is cheap to import; the provider is not needed)."""
    os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
    from cdktf import Testing

    return Testing
