"""The deploy runbook's paths and the promises about endpoints and credentials (#25): `make output` and
`make image` find the repository from where they are installed, the targets that only need tables or a
console never install or start LocalStack when AWS_ENDPOINT_URL names another endpoint, the `local` env
never signs with the shell's real keys, and a one-shot command without credentials is one line, exit 2."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tdev_state.cli import main as tdev

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
MOTO_ACCOUNT = "123456789012"


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without make's own variables (a nested make would inherit them)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    return {**env, **extra}


def test_make_output_looks_for_the_stack_under_the_repository_root() -> None:
    """`make output ENV=dev`'s own default path is <root>/infra/cdktf.out/stacks/t-developer-dev: one line,
    exit 2, naming that directory (never infra/infra/…)."""
    done = subprocess.run(
        [sys.executable, "-m", "tdev_infra.output", "dev"],
        cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"{ROOT}/infra/cdktf.out/stacks/t-developer-dev " in done.stderr
    assert "infra/infra" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_make_image_builds_the_workers_dockerfile_from_the_repository_root(
    aws: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a builder and the account's credentials (moto), `make image` builds
    <root>/packages/recovery-worker/Dockerfile with <root> as the context, and pushes both tags."""
    from tdev_infra import image

    calls = tmp_path / "calls.txt"
    builder = tmp_path / "docker"
    builder.write_text(f'#!/bin/sh\necho "$@" >> {calls}\ncat >/dev/null 2>&1 || true\nexit 0\n')
    builder.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("TDEV_DEV_ACCOUNT_ID", MOTO_ACCOUNT)
    monkeypatch.chdir(tmp_path)  # the root comes from the package's place, not the current directory
    assert image.main(["dev", "--tag", "t1"]) == 0, capsys.readouterr().err
    build = next(line.split() for line in calls.read_text().splitlines() if line.startswith("build"))
    dockerfile = build[build.index("-f") + 1]
    assert dockerfile == str(ROOT / "packages" / "recovery-worker" / "Dockerfile")
    assert Path(dockerfile).is_file()
    assert build[-1] == str(ROOT)
    assert sum(line.startswith("push") for line in calls.read_text().splitlines()) == 2


def test_tables_console_and_integration_targets_do_not_install_localstack() -> None:
    """`make -n tables console test-integration`: no recipe installs or starts LocalStack by itself (the
    console and the integration tests reach it only through scripts/with-localstack.sh)."""
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", "tables", "console", "test-integration"],
        cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "sync --frozen --all-packages" in done.stdout
    assert "localstack.sh install" not in done.stdout
    assert "localstack.sh up" not in done.stdout
    assert done.stdout.count("scripts/with-localstack.sh") == 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_with_localstack_uses_another_endpoint_as_given(tmp_path: Path) -> None:
    """AWS_ENDPOINT_URL at another endpoint: the command runs with it, and LocalStack is neither
    installed (its home stays empty) nor started (no run directory)."""
    other = f"http://127.0.0.1:{_free_port()}"
    home, run = tmp_path / "home", tmp_path / "run"
    home.mkdir()
    env = _clean_env(
        AWS_ENDPOINT_URL=other,
        LOCALSTACK_PORT=str(_free_port()),
        TDEV_LOCALSTACK_HOME=str(home),
        TDEV_LOCALSTACK_RUN=str(run),
    )
    env.pop("TDEV_TARGET", None)
    done = subprocess.run(
        ["bash", "scripts/with-localstack.sh", "sh", "-c", 'echo "$AWS_ENDPOINT_URL"'],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == other
    assert "LocalStack not started" in done.stderr
    assert list(home.iterdir()) == []
    assert not run.exists()


# --- credentials ---------------------------------------------------------------------------------------


class _Recording(BaseHTTPRequestHandler):
    """A DynamoDB stand-in that records each request's Authorization header and answers an empty page."""

    seen: list[str] = []  # noqa: RUF012 - the test's one recorder

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append(self.headers.get("Authorization", ""))
        body = json.dumps({"Items": [], "Count": 0, "ScannedCount": 0}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def recording_endpoint() -> Iterator[str]:
    _Recording.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recording)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_local_env_never_signs_with_the_shells_real_keys(
    recording_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS_ACCESS_KEY_ID exported in the shell: `tdev` on the local env still signs with LocalStack's test
    key — the real key never leaves for a request meant for LocalStack."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_ENDPOINT_URL", recording_endpoint)
    monkeypatch.setenv("TDEV_ENV", "local")
    monkeypatch.delenv("TDEV_TARGET", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    assert tdev(["sessions", "list", "--status", "FAILED", "--json"]) == 1  # no runs: nothing found
    assert _Recording.seen
    for header in _Recording.seen:
        assert "Credential=test/" in header, header
        assert "AKIAIOSFODNN7EXAMPLE" not in header


def test_a_command_without_aws_credentials_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tdev --aws sessions list` with no credentials anywhere: one line naming what to set, exit 2."""
    for name in list(os.environ):
        if name.startswith("AWS_") and name not in ("AWS_DEFAULT_REGION", "AWS_REGION"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert tdev(["--aws", "--env", "dev", "sessions", "list", "--limit", "5"]) == 2
    err = capsys.readouterr().err
    assert "no AWS credentials" in err
    assert "AWS_PROFILE" in err
    assert len(err.strip().splitlines()) == 1, err


def test_deploy_without_terraform_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """`make diff` (infra/cdktf.sh) with no Terraform on PATH: one line naming it, exit 2."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("npx", "dirname"):  # what the script needs before its Terraform check, and no terraform
        found = subprocess.run(
            ["bash", "-c", f"command -v {tool}"], capture_output=True, text=True, check=True
        )
        (bin_dir / tool).symlink_to(found.stdout.strip())
    done = subprocess.run(
        ["/bin/bash", "infra/cdktf.sh", "diff"],
        cwd=ROOT, env=_clean_env(PATH=str(bin_dir), ENV="local"), capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Terraform is not on PATH" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
