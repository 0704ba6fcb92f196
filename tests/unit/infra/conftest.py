"""One synth per test session, shared by every infra test.

A synth imports the prebuilt AWS provider through jsii: ~30 s and ~1.6 GB. It runs once, in a child process
(so the memory goes back when it ends), exactly as `cdktf synth` runs the app, with the optional parts
switched on: an S3 state backend and task roles.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .synth import DEV_ACCOUNT, PROD_ACCOUNT, PROD_ROLE, STATE_BUCKET, TASK_PRINCIPAL, Synth


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Synth:
    """Under pytest-xdist the workers share one synth: the first takes the lock and writes it into the
    run's common temp directory, the others wait for it (a synth per worker cost each ~30-90 s)."""
    if worker_id == "master":
        return _synthesize(tmp_path_factory.mktemp("cdktf.out"))
    shared = tmp_path_factory.getbasetemp().parent  # this run's directory, the same for every worker
    with (shared / "cdktf.out.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (shared / "cdktf.out.done").exists():
            return Synth(shared / "cdktf.out")
        made = _synthesize(shared / "cdktf.out")
        (shared / "cdktf.out.done").touch()
        return made


def _synthesize(out: Path) -> Synth:
    out.mkdir(exist_ok=True)
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
