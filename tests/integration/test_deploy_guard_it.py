"""`make deploy ENV=dev` against an account (LocalStack standing in for it) stops before any Terraform call
when the credentials are another account's, or when the state bucket does not exist yet."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tdev_state import StateClient

ROOT = Path(__file__).resolve().parents[2]
LOCALSTACK_ACCOUNT = "000000000000"


def _deploy(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "infra/cdktf.sh", "deploy"],
        cwd=ROOT,
        env={**os.environ, "ENV": "dev", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_make_deploy_stops_before_terraform(client: StateClient) -> None:
    if not client.config.endpoint_url:
        pytest.skip("needs LocalStack to stand in for an account without the state bucket")
    wrong = _deploy({"TDEV_DEV_ACCOUNT_ID": "111111111111"})
    assert wrong.returncode == 2, wrong.stderr
    assert "stopped before Terraform" in wrong.stderr
    assert f"credentials in use are for account {LOCALSTACK_ACCOUNT}" in wrong.stderr
    missing = _deploy(
        {
            "TDEV_DEV_ACCOUNT_ID": LOCALSTACK_ACCOUNT,
            "TDEV_TF_STATE_BUCKET": f"tdev-{client.config.env}-nostate",
        }
    )
    assert missing.returncode == 2, missing.stderr
    assert "does not exist: create it once with `make bootstrap ENV=dev`" in missing.stderr
    for done in (wrong, missing):
        assert "Terraform" not in done.stdout
        assert "terraform init" not in done.stderr.lower()
        assert "Traceback" not in done.stderr
