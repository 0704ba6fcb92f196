"""Every command the README shows, run as written against LocalStack, in README order, after its demo.

The commands are extracted from README.md's ```bash blocks (a trailing `  # comment` is dropped), run
through bash from the repository root, and must exit 0. Each one is classified here: run to completion,
long-running (started, seen healthy on its port, stopped with SIGTERM, exit 0), or not run — with the reason.
A command the README gains and this file does not know fails the test, so the list cannot fall behind.

The only thing the test adds to the commands is their environment: `TDEV_ENV` and `TDEV_PAYLOAD_BUCKET`
point them at tables of their own (created by the demo, deleted at the end) and this run's bucket, on the
LocalStack `make test` started or in an AWS account, instead of the `local` env's: a developer's own demo
data is never touched, and no other test's runs are in the tables the demo's workers sweep and count.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from tdev_state import StateClient
from tdev_state.tables import delete_tables

ROOT = Path(__file__).resolve().parents[2]

#: Commands not run here, each with the reason.
NOT_RUN = {
    "make test": "this test runs inside it",
    "docker build -f packages/recovery-worker/Dockerfile -t tdev-recovery-worker .": (
        "no container engine on the CI machine; the image's HEALTHCHECK command is tested without Docker "
        "(tests/unit/test_recovery_worker.py::test_ops_endpoints)"
    ),
    "make console": (
        "runs until stopped; the same console is started as `uv run tdev console ... --port 8090` in this "
        "README and checked on /healthz and /readyz"
    ),
    "make localstack-down": (
        "it would stop the LocalStack this suite runs on; `make test` runs the same `localstack.sh down` at "
        "its end (scripts/with-localstack.sh)"
    ),
    "TDEV_TARGET=aws AWS_PROFILE=... make test-integration": "needs an AWS account",
    "make diff ENV=dev": "needs Terraform's AWS provider (not downloadable here) and an AWS account",
    "make bootstrap ENV=dev": (
        "needs an AWS account; the same code is run against moto (tests/unit/infra/test_deploy_guards.py)"
    ),
    "make deploy ENV=dev AUTO_APPROVE=1": "needs Terraform's AWS provider and an AWS account",
    "make output ENV=dev": (
        "needs a deployed stack; rendered from a synthesized stack's outputs in test_deploy_guards.py"
    ),
    "make deploy ENV=local": "needs Terraform's AWS provider, which this machine cannot download",
    "make deploy ENV=prod": "needs an AWS account (and asks for approval)",
    "uv run tdev console --env dev --aws --allow-actions --resumer http://pipeline:8000/resume": (
        "needs a deployed dev env; the same options on the local tables are run above"
    ),
    "make destroy ENV=prod CONFIRM_PROD=t-developer-prod": "needs an AWS account",
}

#: Commands that run until stopped: the worker and the console, seen healthy on their port, then SIGTERMed.
LONG_RUNNING = re.compile(
    r"^uv run (tdev-recovery-worker|tdev worker|tdev console) .*--(?:http-)?port (\d+)\b.*$"
)

#: Commands that talk to the console `make console` starts on port 8080 (the SSE `curl -N`): run as written
#: while a console on this run's tables serves that port, then it is stopped.
WITH_CONSOLE = re.compile(r'^curl -N "http://127\.0\.0\.1:8080/')
CONSOLE_FOR_CURL = "uv run tdev console --local --port 8080"


#: The documents whose ```bash blocks are run here, in this order (docs/operations.md's terminal section is
#: run by tests/unit/test_operator_cli.py on moto, docs/deploy.md's runbook by test_deploy_guard_it.py).
DOCUMENTS = ("README.md", "docs/console.md")


def readme_commands() -> list[str]:
    """Each line of each ```bash block of DOCUMENTS, without its trailing comment."""
    text = "\n".join((ROOT / document).read_text() for document in DOCUMENTS)
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.splitlines():
            command = re.sub(r"\s{2,}#.*$", "", line).strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def test_the_readme_lists_its_commands() -> None:
    """The extraction finds the README's commands (guards against a silently empty list)."""
    commands = readme_commands()
    assert "make demo" in commands
    assert "make test" in commands
    assert any(c.startswith("uv run tdev sessions show") for c in commands)


@pytest.mark.timeout(1200)
def test_every_readme_command_runs_as_written(client: StateClient, tmp_path: Path) -> None:
    uv = shutil.which("uv")
    assert uv, "uv is not on PATH: `make setup` installs it"
    own = replace(client.config, env=f"{client.config.env}r")
    env = {
        **os.environ,
        "TDEV_ENV": own.env,
        "TDEV_PAYLOAD_BUCKET": client.config.payload_bucket or "",
    }
    if client.config.endpoint_url:
        env["AWS_ENDPOINT_URL"] = client.config.endpoint_url
    ran: list[tuple[float, str]] = []
    skipped: list[str] = []
    port_was_free = _status(4566, "/_localstack/health") == 0  # `make localstack-up` may start one there
    try:
        for command in readme_commands():
            if command in NOT_RUN:
                skipped.append(command)
                continue
            started = time.monotonic()
            long_running = LONG_RUNNING.match(command)
            if WITH_CONSOLE.match(command):
                _run_with_console(command, env)
            elif long_running:
                _run_until_healthy(command, int(long_running.group(2)), env)
            else:
                _run(command, env)
            ran.append((time.monotonic() - started, command))
    finally:
        delete_tables(StateClient(own).layer)
        if port_was_free:  # the README's LocalStack was started by this test (the suite's runs elsewhere)
            down = ["make", "--no-print-directory", "localstack-down"]
            subprocess.run(down, cwd=ROOT, timeout=120, check=False)
    print(f"ran {len(ran)} README commands; not run: {len(skipped)} (reasons in NOT_RUN); slowest:")
    for seconds, command in sorted(ran, reverse=True)[:8]:
        print(f"  {seconds:6.1f} s  {command}")
    assert not set(NOT_RUN) - set(skipped), f"NOT_RUN lists commands the README no longer has: {NOT_RUN}"
    summary = json.loads((ROOT / "reports" / "demo" / "summary.json").read_text())
    assert summary["invariants_failed"] == []
    assert summary["runs"] == 64  # the last demo in the README is the bigger one
    assert "Recoveries" in (ROOT / "reports" / "demo" / "index.html").read_text()


def _run(command: str, env: dict[str, str]) -> None:
    started = time.monotonic()
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    seconds = time.monotonic() - started
    assert done.returncode == 0, (
        f"README command failed ({done.returncode}, {seconds:.0f} s): {command}\n"
        f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-2000:]}"
    )
    assert "Traceback" not in done.stderr, command
    if command.startswith("make demo"):
        assert "all invariants hold" in done.stdout, done.stdout[-2000:]
        assert "report: " in done.stdout


def _run_with_console(command: str, env: dict[str, str]) -> None:
    """Run `command` (a client of the console) while the console serves port 8080, then stop the console.
    The newest run after the demo has ended (COMPLETED or ABANDONED), so its event stream replays and ends:
    `curl -N` exits 0 by itself."""
    console = _start(CONSOLE_FOR_CURL, env)
    try:
        assert _healthy(console, 8080, ("/healthz",)), f"the console for {command!r} never answered"
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, (
            f"README command failed ({done.returncode}): {command}\n{done.stderr[-2000:]}"
        )
        assert re.search(r"^id: 1$", done.stdout, re.M), done.stdout[:2000]
        assert "event: end" in done.stdout, done.stdout[-2000:]
    finally:
        if console.poll() is None:
            os.killpg(console.pid, signal.SIGTERM)
        console.communicate(timeout=60)


def _run_until_healthy(command: str, port: int, env: dict[str, str]) -> None:
    """Start it, wait until /healthz and /readyz answer 200 on its port, SIGTERM it, expect exit 0."""
    process = _start(command, env)
    try:
        healthy = _healthy(process, port, ("/healthz", "/readyz"))
        assert healthy, f"{command} never became healthy (exit {process.poll()})"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, f"{shlex.quote(command)} exited {process.returncode}: {err[-2000:]}"
    assert "Traceback" not in err
    if "console" in command:
        assert "tdev console for env" in out, out
    else:
        assert '"event": "worker.stopped"' in err or "worker.stopped" in err


def _start(command: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """A long-running README command in a process group of its own (stopped with SIGTERM to the group)."""
    return subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _healthy(process: subprocess.Popen[str], port: int, paths: tuple[str, ...]) -> bool:
    """Whether every path answers 200 on the port within 60 s, while the process still runs."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if all(_status(port, path) == 200 for path in paths):
            return True
        time.sleep(0.5)
    return False


def _status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0
