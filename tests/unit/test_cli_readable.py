"""A CLI people can read and pipe (#25): quiet when the reader quits early, one line naming the extra when
rich is missing, help for a bare `tdev`, colour only on a terminal and never under NO_COLOR, run ids
printed whole, times as --time-format says, help texts whose defaults are the code's."""

from __future__ import annotations

import ast
import io
import json
import os
import pty
import re
import select
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tdev_recovery import cli as worker_cli
from tdev_recovery.config import WorkerConfig
from tdev_state import StateClient, StateConfig
from tdev_state.cli import main as tdev

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
LONG_ID = "prod_20261126_120000_4821-project_7f3c9a2e-5b1d-4e8a-9c0f-1a2b3c4d5e6f"


@pytest.fixture
def run_id(client: StateClient, monkeypatch: pytest.MonkeyPatch) -> str:
    """One run with an id as long as the orchestrator's, a user, and three agents done."""
    monkeypatch.setenv("TDEV_ENV", client.config.env)
    sid = client.sessions.create(user_id="ops", project_name="shop", session_id=LONG_ID).session_id
    for agent in ("nl_input", "ui_selection", "parser"):
        client.executions.start(sid, agent)
        client.executions.complete(sid, agent, output_data={"ok": True})
    return sid


class _Terminal(io.StringIO):
    """stdout as a terminal would be: isatty() is true (what rich and our console() look at)."""

    def isatty(self) -> bool:
        return True


def _terminal(monkeypatch: pytest.MonkeyPatch) -> _Terminal:
    """sys.stdout replaced by a terminal 80 columns wide, with no colour variable set (called in the test
    itself: pytest's own capture puts its stdout back after the fixtures are set up)."""
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "80")
    out = _Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    return out


# --- a reader that quits early ---------------------------------------------------------------------------

#: The child: tables on moto with one run, then, once told the reader is gone, the real `tdev` main.
_CHILD = """
import os, sys
from moto import mock_aws
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                  AWS_DEFAULT_REGION="us-east-1", TDEV_ENV="pipe")
os.environ.pop("AWS_ENDPOINT_URL", None)
with mock_aws():
    from tdev_state import StateClient, StateConfig
    from tdev_state.cli import main
    client = StateClient(StateConfig(env="pipe"))
    client.create_tables()
    for n in range(3):
        client.sessions.create(user_id="ops", project_name=f"shop {n}")
    sys.stdin.readline()  # the parent has closed its end of our stdout: the reader is gone
    code = main(sys.argv[1:])
sys.exit(code)
"""


@pytest.mark.parametrize(
    "argv",
    [["sessions", "list", "--user", "ops"], ["sessions", "list", "--user", "ops", "--json"], ["--help"]],
    ids=["table", "json", "help"],
)
def test_a_reader_that_quits_early_ends_the_command_quietly(argv: list[str]) -> None:
    """`tdev … | head -1`: stdout's reader gone before the command writes is exit 0, nothing on stderr."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdin is not None
    child.stdout.close()  # the reader quits (head after its line), deterministically before any write
    child.stdin.write("go\n")
    child.stdin.close()
    assert child.stderr is not None
    err = child.stderr.read()
    child.wait(timeout=60)
    assert child.returncode == 0, err
    assert "Traceback" not in err
    assert "BrokenPipe" not in err
    assert "Exception ignored" not in err


# --- without the cli extra ---------------------------------------------------------------------------------


def test_without_rich_the_command_names_the_extra_to_install(
    run_id: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """rich not installed: `tdev sessions show` is one line naming tdev-state-client[cli], exit 2."""
    for name in [m for m in sys.modules if m == "rich" or m.startswith("rich.")] + ["rich"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import rich…` now fails as if not installed
    assert tdev(["sessions", "show", run_id]) == 2
    err = capsys.readouterr().err
    assert "install tdev-state-client[cli]" in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_json_output_needs_no_cli_extra(
    aws: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without rich, `tdev metrics report --json` still answers (no data here: `[]`, exit 1)."""
    monkeypatch.setenv("TDEV_ENV", "nojson")
    StateClient(StateConfig(env="nojson")).create_tables()
    for name in [m for m in sys.modules if m == "rich" or m.startswith("rich.")] + ["rich"]:
        monkeypatch.setitem(sys.modules, name, None)
    assert tdev(["metrics", "report", "--from", "2026-11-26", "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == []


# --- bare tdev ---------------------------------------------------------------------------------------------


def test_bare_tdev_prints_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    """`tdev` alone prints the whole help (every command, with its description) on stderr, exit 2."""
    assert tdev([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: tdev")
    assert "pipeline runs: list them, show one" in err
    assert "exit codes:" in err


def test_a_group_without_its_subcommand_prints_the_group_help(capsys: pytest.CaptureFixture[str]) -> None:
    """`tdev sessions` alone prints the sessions help (list, show), exit 2."""
    assert tdev(["sessions"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: tdev sessions")
    assert "one run: its agents' timeline" in err


# --- colour ------------------------------------------------------------------------------------------------


def test_tables_on_a_terminal_are_styled(run_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal, `tdev sessions show` styles its output (the check below can see escapes)."""
    terminal = _terminal(monkeypatch)
    assert tdev(["sessions", "show", run_id]) == 0
    assert "\x1b[" in terminal.getvalue()


def test_no_color_means_no_escape_sequence_at_all(run_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """NO_COLOR set: not one ANSI sequence, on a terminal too (https://no-color.org)."""
    terminal = _terminal(monkeypatch)
    monkeypatch.setenv("NO_COLOR", "1")
    assert tdev(["sessions", "show", run_id]) == 0
    assert tdev(["sessions", "list", "--user", "ops"]) == 0
    out = terminal.getvalue()
    assert LONG_ID in out
    assert "\x1b" not in out


def _on_a_pty(argv: list[str], env: dict[str, str]) -> str:
    """Run argv with stdout on a pseudo-terminal; what it printed."""
    master, slave = pty.openpty()
    child = subprocess.Popen(argv, cwd=ROOT, stdout=slave, stderr=subprocess.PIPE, env=env)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    child.wait(timeout=30)
    return b"".join(chunks).decode()


def _make_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "MAKEFLAGS", "MAKELEVEL")}
    return {**env, **extra}


def test_make_help_is_plain_when_piped() -> None:
    """`make help | less`: no escape sequence in the target list."""
    done = subprocess.run(
        ["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True, timeout=30,
        env=_make_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 0
    assert "synth" in done.stdout
    assert "\x1b" not in done.stdout


def test_make_help_is_coloured_on_a_terminal_unless_no_color() -> None:
    """On a terminal `make help` colours the target names; under NO_COLOR it does not."""
    argv = ["make", "--no-print-directory", "help"]
    assert "\x1b[36m" in _on_a_pty(argv, _make_env())
    plain = _on_a_pty(argv, _make_env(NO_COLOR="1"))
    assert "synth" in plain
    assert "\x1b" not in plain


# --- ids and times -----------------------------------------------------------------------------------------


def test_run_ids_are_printed_whole_on_a_narrow_terminal(run_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On an 80-column terminal the listing prints each run id whole, on one line (copyable)."""
    terminal = _terminal(monkeypatch)
    monkeypatch.setenv("NO_COLOR", "1")
    assert tdev(["sessions", "list", "--user", "ops"]) == 0
    assert LONG_ID in terminal.getvalue()


def test_tables_show_times_as_time_format_says(run_id: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--time-format relative (the default), iso and epoch in the listing; never a raw float by default."""
    assert tdev(["sessions", "list", "--user", "ops"]) == 0
    assert re.search(r"\d+d( \d+h)? ago", capsys.readouterr().out)
    assert tdev(["sessions", "list", "--user", "ops", "--time-format", "iso"]) == 0
    assert re.search(r"2026-11-26T12:00:00Z", capsys.readouterr().out)
    assert tdev(["sessions", "list", "--user", "ops", "--time-format", "epoch"]) == 0
    assert re.search(r"17\d{8}\.\d", capsys.readouterr().out)


def test_json_keeps_epoch_seconds_unless_a_time_format_is_given(
    run_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json gives epoch seconds (what scripts parse); with --time-format iso, ISO strings."""
    assert tdev(["sessions", "list", "--user", "ops", "--json"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out)[0]["last_updated"], float)
    assert tdev(["sessions", "show", run_id, "--json", "--time-format", "iso"]) == 0
    assert json.loads(capsys.readouterr().out)["agents"][0]["start"].startswith("2026-11-26T12:00")


# --- help that matches the code ----------------------------------------------------------------------------


def _option_helps(text: str) -> dict[str, str]:
    """--help output as {option: its help text, joined}."""
    found: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        match = re.match(r"^  (-[-\w]+(?:, --[\w-]+)?)(?: [A-Z_]+)?(?:\s{2,}(.*))?$", line)
        if match:
            current = match.group(1).split(", ")[-1]
            found[current] = match.group(2) or ""
        elif current and line.startswith("      "):
            found[current] += " " + line.strip()
        else:
            current = None
    return found


def test_each_worker_option_states_one_default(capsys: pytest.CaptureFixture[str]) -> None:
    """No option's help says two defaults (its own and argparse's `(default: None)`)."""
    assert worker_cli.main(["--help"]) == 0
    helps = _option_helps(capsys.readouterr().out)
    assert "--worker-id" in helps
    assert "--lease" in helps
    for option, text in helps.items():
        assert text.count("default:") <= 1, (option, text)
        assert "(default: None)" not in text, option


def test_the_worker_id_help_describes_the_id_the_config_makes(capsys: pytest.CaptureFixture[str]) -> None:
    """--worker-id's default, as its help writes it, is HOST-PID-RANDOM: what WorkerConfig generates."""
    assert worker_cli.main(["--help"]) == 0
    help_text = _option_helps(capsys.readouterr().out)["--worker-id"]
    assert "HOST-PID-RANDOM" in help_text.replace("- ", "-")
    made = WorkerConfig().worker_id
    assert re.fullmatch(rf"{re.escape(socket.gethostname())}-{os.getpid()}-[0-9a-f]{{6}}", made)


def test_the_worker_flags_defaults_are_the_configs_defaults() -> None:
    """With no flag and no variable, the worker runs with WorkerConfig's own defaults."""
    args = worker_cli.build_parser().parse_args([])
    from_flags, own = worker_cli.worker_config(args), WorkerConfig()
    for field in own.__dataclass_fields__:
        if field != "worker_id":
            assert getattr(from_flags, field) == getattr(own, field), field


CLI_FILES = [
    "packages/state-client/src/tdev_state/cli.py",
    "packages/state-client/src/tdev_state/command.py",
    "packages/recovery-worker/src/tdev_recovery/cli.py",
    "packages/metrics-collector/src/tdev_metrics/cli.py",
    "packages/metrics-collector/src/tdev_metrics/usage_cli.py",
    "packages/console/src/tdev_console/cli.py",
    "packages/console/src/tdev_console/server.py",
]


def test_no_cli_function_is_over_120_lines() -> None:
    """Every function of the CLI modules fits in a head (issue 24: at most 120 lines)."""
    long = []
    for path in CLI_FILES:
        tree = ast.parse((ROOT / path).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 120:
                    long.append(f"{path}:{node.name} {length}")
    assert long == []
