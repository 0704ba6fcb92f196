"""`make deploy ENV=dev` against an account (LocalStack standing in for it) stops before any Terraform call
when the credentials are another account's, or when the state bucket does not exist yet; every step of
docs/deploy.md without credentials works or says in one line what is missing; `make tables` uses another
endpoint without installing LocalStack."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from tdev_state import StateClient
from tdev_state.tables import delete_tables

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


# --- the runbook on a fresh clone without AWS credentials (#25) ---------------------------------------------

#: Runbook commands not run here, with the reason.
RUNBOOK_NOT_RUN = {
    "set -a; . infra/dev.env; set +a": (
        "the shell loading the file `make output` writes; with no deployed stack there is none to load"
    ),
}

#: Placeholders the runbook asks the reader to fill, as this test fills them.
PLACEHOLDERS = {"<the tag it printed>": "abc1234", "<session id>": "prod_20261126_120000_0001"}

#: Lines that are not the command's own: uv's sync summary (make's venv prerequisite) and make's own
#: "make: *** [Makefile:N: target] Error 2" after a recipe that failed.
NOISE = re.compile(
    r"^(Checked|Resolved|Audited|Installed|Uninstalled|Prepared|Built|Building) .*"
    r"|^ [+~-] .*|^make: \*\*\* .*"
)


def runbook() -> tuple[dict[str, str], list[str]]:
    """docs/deploy.md's ```bash blocks: the `export` settings of step 1, and every other command."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    settings: dict[str, str] = {}
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.splitlines():
            command = re.sub(r"\s{2,}#.*$", "", line).strip()
            if command.startswith("export "):
                name, value = command.removeprefix("export ").split("=", 1)
                settings[name] = value
            elif command and not command.startswith("#"):
                commands.append(command)
    return settings, commands


def _without_credentials(tmp: Path) -> dict[str, str]:
    """This environment with every AWS credential source removed (variables, files, instance metadata)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("AWS_") and k not in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_CA_BUNDLE"))
        and k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "TDEV_TARGET", "TDEV_ENV")
    }
    missing = str(tmp / "no-such-file")
    return {
        **env,
        "AWS_CONFIG_FILE": missing,
        "AWS_SHARED_CREDENTIALS_FILE": missing,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.mark.timeout(900)
def test_every_runbook_step_without_credentials_works_or_says_what_is_missing(tmp_path: Path) -> None:
    """Each command of docs/deploy.md, run as written (its step-1 settings exported, no AWS credentials
    anywhere): it works (exit 0), or it stops with exit 2 and ONE line of its own naming what is missing."""
    settings, commands = runbook()
    assert "TDEV_DEV_ACCOUNT_ID" in settings
    assert "make deploy ENV=dev" in commands
    env = {**_without_credentials(tmp_path), **settings}
    stopped = {}
    for written in commands:
        if written in RUNBOOK_NOT_RUN:
            continue
        command = written
        for placeholder, value in PLACEHOLDERS.items():
            command = command.replace(placeholder, value)
        assert "<" not in command, f"a placeholder this test does not fill: {command}"
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        own = [line for line in done.stderr.splitlines() if line.strip() and not NOISE.match(line)]
        assert "Traceback" not in done.stderr, command
        assert done.returncode in (0, 2), (command, done.returncode, done.stderr[-2000:])
        if done.returncode == 2:
            assert len(own) == 1, (command, own)
            stopped[command] = own[0]
    assert any("no AWS credentials" in line for line in stopped.values()), stopped
    assert all("infra/infra" not in line for line in stopped.values()), stopped


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_make_tables_uses_another_endpoint_without_installing_localstack(
    client: StateClient, tmp_path: Path
) -> None:
    """`make tables` with AWS_ENDPOINT_URL at an endpoint that is not this machine's LocalStack creates the
    tables there, and installs and starts nothing (its LocalStack home stays empty)."""
    if not client.config.endpoint_url:
        pytest.skip("needs an endpoint other than AWS to point AWS_ENDPOINT_URL at")
    env_name = f"{client.config.env}mk"
    home = tmp_path / "localstack-home"
    home.mkdir()
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "TDEV_TARGET")
        },
        "AWS_ENDPOINT_URL": client.config.endpoint_url,
        "LOCALSTACK_PORT": str(_free_port()),  # "this machine's LocalStack" is elsewhere and not running
        "TDEV_LOCALSTACK_HOME": str(home),
        "TDEV_LOCALSTACK_RUN": str(tmp_path / "run"),
    }
    try:
        done = subprocess.run(
            ["make", "--no-print-directory", "tables", f"ENV={env_name}"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"ready t-developer-{env_name}-pipeline-sessions" in done.stdout
        assert "localstack:" not in done.stderr
        assert list(home.iterdir()) == []
    finally:
        delete_tables(StateClient(replace(client.config, env=env_name)).layer)
