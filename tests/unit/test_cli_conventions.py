"""The three CLIs share one helper: options anywhere, --help everywhere (defaults shown), one-line errors,
the same exit codes (0 ok, 1 nothing found, 2 bad arguments or settings, 3 the store failed), and a
target (LocalStack or AWS) and region resolved the way a user expects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest

from tdev_state import AGENTS, ConfigurationError, StateClient, StateConfig
from tdev_state.cli import main as tdev
from tdev_state.testing import FakeClock


def _complete_run(client: StateClient, user: str | None = None) -> str:
    sid = client.sessions.create(user_id=user, project_name="done").session_id
    for agent in AGENTS:
        client.executions.start(sid, agent)
        client.executions.complete(sid, agent, output_data={"ok": agent})
    assert client.sessions.get(sid).status.value == "COMPLETED"  # the last agent ends the run
    return sid


def _day(client: StateClient, sid: str) -> str:
    return client.sessions.get(sid).created_at.date().isoformat()


# --- options wherever the user puts them ------------------------------------------------------------------


def test_target_options_work_before_and_after_the_subcommand(
    client: StateClient, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tdev --env E sessions list …` and `tdev sessions list … --env E` are the same command."""
    monkeypatch.delenv("TDEV_ENV", raising=False)
    sid = client.sessions.create(user_id="ops").session_id
    env = client.config.env
    for argv in (
        ["--env", env, "sessions", "list", "--user", "ops", "--json"],
        ["sessions", "--env", env, "list", "--user", "ops", "--json"],
        ["sessions", "list", "--user", "ops", "--json", "--env", env],
        ["sessions", "list", f"--env={env}", "--user", "ops", "--json"],
    ):
        assert tdev(argv) == 0, argv
        assert [r["session_id"] for r in json.loads(capsys.readouterr().out)] == [sid]


def test_plugin_commands_receive_options_given_before_them(
    client: StateClient, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tdev --env E metrics report …` reaches tdev-metrics with the env (no data: exit 1, not an error)."""
    monkeypatch.delenv("TDEV_ENV", raising=False)
    assert tdev(["--env", client.config.env, "metrics", "report", "--from", "2026-11-26", "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == []
    assert tdev(["metrics", "report", "--from", "2026-11-26", "--json", "--env", client.config.env]) == 1


HELP = [
    [],
    ["sessions"],
    ["sessions", "list"],
    ["sessions", "show"],
    ["projects"],
    ["projects", "list"],
    ["tables"],
    ["tables", "create"],
    ["metrics"],
    ["metrics", "report"],
    ["worker"],
    ["worker", "run"],
    ["usage"],
    ["usage", "report"],
]


@pytest.mark.parametrize("argv", HELP, ids=lambda a: " ".join(a) or "tdev")
def test_every_command_has_help_with_its_defaults(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """--help works on every command and subcommand, names the command as typed, and shows defaults."""
    assert tdev([*argv, "--help"]) == 0
    out = capsys.readouterr().out
    shown = " ".join(a for a in argv if a != "run")
    assert out.startswith(f"usage: tdev {shown}".rstrip()), out[:200]
    assert "exit codes: 0 ok, 1 nothing found, 2 bad arguments" in out
    assert "--env" in out
    if argv[-1:] in (["list"], ["report"], ["worker"], ["run"]):  # leaves with valued options
        assert "(default:" in out


def test_tables_create_has_json(aws: None, capsys: pytest.CaptureFixture[str]) -> None:
    """`tdev tables create --json` prints the ready tables as JSON."""
    assert tdev(["tables", "create", "--json", "--env", "clitables"]) == 0
    ready = json.loads(capsys.readouterr().out)["ready"]
    assert sorted(ready) == sorted(
        f"t-developer-clitables-{t}"
        for t in ("agent-executions", "pipeline-sessions", "user-projects", "metrics")
    )


def test_tables_create_without_streams_leaves_them_out(aws: None) -> None:
    """`tdev tables create --no-streams` makes the sessions table without the stream the schema declares."""
    assert tdev(["tables", "create", "--no-streams", "--env", "clinostream"]) == 0
    table = boto3.client("dynamodb", region_name="us-east-1").describe_table(
        TableName="t-developer-clinostream-pipeline-sessions"
    )["Table"]
    assert "StreamSpecification" not in table


# --- finished runs without a user ---------------------------------------------------------------------------


def test_sessions_list_completed_without_a_user(
    client: StateClient, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--status COMPLETED` without --user lists finished runs by day from the by-day index, newest first,
    runs without a user included; other statuses are filtered out."""
    monkeypatch.setenv("TDEV_ENV", client.config.env)
    older = _complete_run(client)
    newer = _complete_run(client, user="u1")
    client.sessions.create()  # ACTIVE: not listed
    day = _day(client, newer)
    assert tdev(["sessions", "list", "--status", "COMPLETED", "--day", day, "--json"]) == 0
    assert [r["session_id"] for r in json.loads(capsys.readouterr().out)] == [newer, older]
    assert tdev(["sessions", "list", "--day", day, "--json", "--limit", "2"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert tdev(["sessions", "list", "--status", "ABANDONED", "--day", day]) == 1
    assert tdev(["sessions", "list", "--status", "COMPLETED", "--day", "2026-13-01"]) == 2
    assert tdev(["sessions", "list", "--days", "0"]) == 2


def test_list_by_day_pages_and_validates(client: StateClient, clock: FakeClock) -> None:
    """The library call behind it: paged by cursor, the day a date, the status a SessionStatus."""
    runs = [client.sessions.create().session_id for _ in range(5)]
    day = clock.now.date()
    first = client.sessions.list_by_day(day, limit=3)
    assert [s.session_id for s in first.items] == runs[::-1][:3]
    assert first.next_cursor
    rest = client.sessions.list_by_day(day, limit=3, cursor=first.next_cursor)
    assert [s.session_id for s in rest.items] == runs[::-1][3:]
    assert client.sessions.list_by_day(date(2020, 1, 1)).items == []
    from tdev_state import ValidationError

    with pytest.raises(ValidationError, match=r"day must be a datetime\.date"):
        client.sessions.list_by_day("2026-11-26")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        client.sessions.list_by_day(day, status="DONE")
    with pytest.raises(ValidationError):
        client.sessions.list_by_day(day, cursor=client.sessions.list_for_user("u").next_cursor or "x")


# --- bad settings: one line, exit 2 -------------------------------------------------------------------------


def _worker(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real console entry (a child process: the worker configures logging for its whole process)."""
    return subprocess.run(
        [sys.executable, "-m", "tdev_recovery", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_bad_worker_settings_are_one_line_and_exit_2() -> None:
    """A wrong environment value does not break --help; used, it is one line naming flag and variable."""
    assert _worker("--help", env={"TDEV_POLL_INTERVAL": "5x"}).returncode == 0
    bad = _worker("--resumer", "http://pipeline/resume", env={"TDEV_POLL_INTERVAL": "5x"})
    assert bad.returncode == 2
    assert "'5x' is not a number of seconds or a duration (90s, 30m, 2h, 1d)" in bad.stderr
    assert "(set by --poll-interval or $TDEV_POLL_INTERVAL)" in bad.stderr
    assert "Traceback" not in bad.stderr
    for argv in (["--log-level", "verbose"], ["--concurrency", "0"], ["--poll-interval", "nan"]):
        done = _worker("--resumer", "http://pipeline/resume", *argv)
        assert done.returncode == 2, argv
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_bad_target_settings_are_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown TDEV_TARGET or profile is the caller's to fix: exit 2 and one line, no traceback."""
    monkeypatch.setenv("TDEV_TARGET", "moon")
    assert tdev(["sessions", "list", "--status", "FAILED"]) == 2
    assert "TDEV_TARGET='moon' is not a target" in capsys.readouterr().err
    monkeypatch.delenv("TDEV_TARGET")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    assert tdev(["sessions", "list", "--status", "FAILED", "--profile", "ghost", "--aws", "--env", "x"]) == 2
    err = capsys.readouterr().err
    assert "AWS profile 'ghost' is not in the AWS config files" in err
    assert "Traceback" not in err


# --- a store that refuses: exit 3 everywhere ---------------------------------------------------------------


class _Refusing(BaseHTTPRequestHandler):
    """An endpoint that denies every DynamoDB call, at once (denials are not retried)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps(
            {"__type": "com.amazonaws.dynamodb.v20120810#AccessDeniedException", "message": "denied"}
        ).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def refusing_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.server_address[1]}",
        "TDEV_ENV": "local",
        "TDEV_TARGET": "local",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield env
    server.shutdown()
    server.server_close()


def test_a_store_that_refuses_is_exit_3_in_all_three_clis(
    refusing_store: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`tdev`, `tdev metrics` and the worker agree: the store failed is 3, with one line saying why."""
    assert tdev(["sessions", "list", "--status", "FAILED"]) == 3
    assert tdev(["metrics", "report", "--from", "2026-11-26"]) == 3
    err = capsys.readouterr().err
    assert err.count("denied by IAM") == 2
    assert "Traceback" not in err
    worker = _worker("--resumer", "http://pipeline/resume", "--http-port", "0", env=refusing_store)
    assert worker.returncode == 3, worker.stderr
    assert "denied by IAM" in worker.stderr
    assert "Traceback" not in worker.stderr


# --- where the tables are: LocalStack or AWS, and which region --------------------------------------------


def test_the_local_env_targets_localstack_with_test_credentials() -> None:
    """The `local` env means the LocalStack on this machine: its endpoint and test credentials, so real
    credentials in the shell never sign a request meant for it; any other env means AWS."""
    local = StateConfig.from_env({"TDEV_ENV": "local"})
    assert local.endpoint_url == "http://127.0.0.1:4566"
    assert local.local_credentials
    assert StateConfig.from_env({"LOCALSTACK_PORT": "4571"}).endpoint_url == "http://127.0.0.1:4571"
    dev = StateConfig.from_env({"TDEV_ENV": "dev"})
    assert dev.endpoint_url is None
    assert not dev.local_credentials
    assert StateConfig.from_env({"TDEV_ENV": "dev", "TDEV_TARGET": "local"}).endpoint_url
    assert StateConfig.from_env({"TDEV_ENV": "dev"}, target="local").local_credentials
    assert StateConfig.from_env({"TDEV_ENV": "local"}, target="aws").endpoint_url is None
    from tdev_state.layer import DynamoLayer

    creds = DynamoLayer(local).session.get_credentials()
    assert creds is not None
    assert creds.access_key == "test"


def test_region_comes_from_the_profile_as_boto3_resolves_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS_PROFILE (or --profile) with a region in ~/.aws/config gives that region; variables win."""
    config = tmp_path / "config"
    config.write_text("[profile eu]\nregion = eu-west-1\n[default]\nregion = ap-south-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    for key in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    assert StateConfig.from_env().region == "ap-south-1"
    monkeypatch.setenv("AWS_PROFILE", "eu")
    eu = StateConfig.from_env()
    assert (eu.region, eu.profile) == ("eu-west-1", "eu")
    monkeypatch.setenv("AWS_REGION", "us-west-2")
    assert StateConfig.from_env().region == "us-west-2"
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_PROFILE")
    from tdev_state import command
    from tdev_state.cli import build_parser

    args = build_parser().parse_args(["sessions", "list", "--profile", "eu"])
    assert command.state_config(args).region == "eu-west-1"
    with pytest.raises(ConfigurationError, match="profile 'nope'"):
        StateConfig.from_env(profile="nope")
