"""The CLIs against hostile stored text, bad numbers and a store that is not there (issue 23): terminal
escapes are shown, not obeyed; every numeric option is checked when the line is parsed (exit 2); an
unreachable endpoint is one line and exit 3, never a botocore traceback."""

from __future__ import annotations

import argparse
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from tdev_console import cli as console_cli
from tdev_metrics import MetricsCollector, usage_cli
from tdev_metrics import cli as metrics_cli
from tdev_recovery import cli as worker_cli
from tdev_state import StateClient, command
from tdev_state import cli as tdev_cli
from tdev_state.log import Readable

pytestmark = pytest.mark.unit

#: Stored free text a terminal would obey, one per kind: what each must not reach stdout as.
ESCAPES = {
    "csi-colour": ("\x1b[31mred\x1b[0m", "\x1b"),
    "csi-clear-screen": ("\x1b[2J\x1b[H", "\x1b"),
    "osc8-link": ("\x1b]8;;https://evil.example/\x1b\\click me\x1b]8;;\x1b\\", "\x1b"),
    "osc-title": ("\x1b]0;owned\x07", "\x07"),
    "c1-csi": ("\x9b31mred", "\x9b"),
    "c1-osc": ("\x9d0;owned\x9c", "\x9d"),
    "bidi-override": ("abc\u202edcba", "\u202e"),
    "bidi-isolate": ("abc\u2066x\u2069", "\u2066"),
    "backspace": ("ok\x08\x08no", "\x08"),
    "carriage-return": ("real\rfake", "\r"),
}


@pytest.mark.parametrize(("text", "raw"), ESCAPES.values(), ids=ESCAPES.keys())
def test_printable_shows_each_kind_of_escape_visibly(text: str, raw: str) -> None:
    """command.printable turns every character a terminal acts on into its visible escape."""
    shown = command.printable(text)
    assert raw not in shown
    assert f"\\x{ord(raw):02x}" in shown or f"\\u{ord(raw):04x}" in shown
    assert shown.isprintable()


def test_printable_leaves_ordinary_text_alone() -> None:
    """Plain text, accents, CJK and emoji print as they are; newlines only where asked to."""
    for text in ("shop v2 [bold]", "ünïcødé", "生成", "🚀 ok"):
        assert command.printable(text) == text
    assert command.printable("a\nb") == "a\\x0ab"
    assert command.printable("a\nb\tc", keep_newlines=True) == "a\nb\tc"


@pytest.fixture
def hostile_run(client: StateClient, monkeypatch: pytest.MonkeyPatch) -> str:
    """A run whose project name and error hold every kind of escape (free text: the library stores it)."""
    monkeypatch.setenv("TDEV_ENV", client.config.env)
    text = " ".join(t for t, _ in ESCAPES.values())
    sid = client.sessions.create(user_id="ops", project_name=f"shop {text}").session_id
    client.executions.start(sid, "nl_input")
    client.executions.fail(sid, "nl_input", error_message=f"boom {text}")
    client.sessions.update(sid, status="FAILED", error_message=f"run failed {text}")
    return sid


def _raw_escapes(out: str) -> list[str]:
    return [kind for kind, (_, raw) in ESCAPES.items() if raw in out]


def test_sessions_show_and_list_print_stored_escapes_inert(
    hostile_run: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tdev sessions show` and `list` print stored escape sequences escaped, never raw."""
    assert tdev_cli.main(["sessions", "show", hostile_run]) == 0
    out = capsys.readouterr().out
    assert _raw_escapes(out) == []
    assert "\\x1b[31mred" in out
    assert tdev_cli.main(["sessions", "list", "--user", "ops"]) == 0
    out = capsys.readouterr().out
    assert _raw_escapes(out) == []
    assert "\\x9b31mred" in out


def test_usage_report_prints_a_hostile_tech_stack_inert(
    client: StateClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tdev usage report` prints a tech stack holding escapes escaped."""
    monkeypatch.setenv("TDEV_ENV", client.config.env)
    collector = MetricsCollector(client, start=False)
    client.projects.save(user_id="u", project_id="p", project_name="n", tech_stack=["\x1b]0;owned\x07react"])
    collector.close()
    assert usage_cli.main(["report", "--to", "2026-11-26", "--days", "1"]) == 0
    out = capsys.readouterr().out
    assert _raw_escapes(out) == []
    assert "\\x1b]0;owned\\x07react" in out


def test_usage_charts_draw_a_mathtext_tech_stack_as_text(
    client: StateClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """`tdev usage report --png/--html` draw a tech stack `$\\frac{$` as text instead of failing."""
    monkeypatch.setenv("TDEV_ENV", client.config.env)
    collector = MetricsCollector(client, start=False)
    client.projects.save(user_id="u", project_id="p", project_name="n", tech_stack=["$\\frac{$"])
    collector.close()
    png, page = tmp_path / "usage.png", tmp_path / "usage.html"
    argv = ["report", "--to", "2026-11-26", "--days", "1", "--png", str(png), "--html", str(page)]
    assert usage_cli.main(argv) == 0
    assert png.read_bytes().startswith(b"\x89PNG")
    assert page.stat().st_size > 0


def test_readable_log_lines_show_escapes() -> None:
    """The terminal log format (tdev console, the worker on a tty) escapes what a log field quotes."""
    record = logging.LogRecord(
        "tdev_console", logging.WARNING, __file__, 1, "bad id \x1b[2J\u202e", None, None
    )
    line = Readable("%(message)s").format(record)
    assert line == "bad id \\x1b[2J\\u202e"


# --- 23.17 numbers checked at parse time ----------------------------------------------------------

BAD_NUMBERS: list[tuple[Callable[..., int], list[str]]] = [
    (tdev_cli.main, ["sessions", "list", "--limit", "0"]),
    (tdev_cli.main, ["sessions", "list", "--limit", "-5"]),
    (tdev_cli.main, ["sessions", "list", "--limit", "1001"]),
    (tdev_cli.main, ["sessions", "list", "--limit", "²"]),
    (tdev_cli.main, ["sessions", "list", "--days", "²"]),
    (tdev_cli.main, ["projects", "list", "u", "--limit", "0"]),
    (usage_cli.main, ["report", "--days", "0"]),
    (usage_cli.main, ["report", "--days", "³"]),
    (worker_cli.main, ["--resumer", "x:y", "--lease", "1e300"]),
    (worker_cli.main, ["--resumer", "x:y", "--stall-threshold", "1e18"]),
    (worker_cli.main, ["--resumer", "x:y", "--retry-delay", "nan"]),
    (worker_cli.main, ["--resumer", "x:y", "--max-attempts", "99999999999"]),
    (worker_cli.main, ["--resumer", "x:y", "--concurrency", "0"]),
    (worker_cli.main, ["--resumer", "x:y", "--http-port", "70000"]),
    (console_cli.main, ["--page-size", "0"]),
    (console_cli.main, ["--refresh", "inf"]),
]


def test_every_numeric_option_out_of_range_is_exit_2_in_one_line(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A limit, a number of days, a duration or a count out of range: exit 2 and the range, nothing run."""
    for main, argv in BAD_NUMBERS:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, (argv, err)
        assert "Traceback" not in err


def test_a_worker_id_the_claims_would_refuse_is_refused_at_start(capsys: pytest.CaptureFixture[str]) -> None:
    """`--worker-id "my worker"` is exit 2 at start (the identifier rule), not a refused claim per sweep."""
    argv = ["--resumer", "x:y", "--worker-id", "my worker", "--no-usage", "--http-port", "0"]
    assert worker_cli.main(argv) == 2
    assert "worker_id contains whitespace" in capsys.readouterr().err


# --- 23.19 an endpoint that is not there ----------------------------------------------------------


@pytest.fixture
def nowhere(monkeypatch: pytest.MonkeyPatch) -> str:
    """AWS_ENDPOINT_URL at a local port nothing listens on; one attempt per call (the message is the same)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("TDEV_ENV", "local")
    original = command.state_config

    def quick(args: argparse.Namespace, **overrides: Any) -> Any:
        return original(args, **{"max_attempts": 1, **overrides})

    monkeypatch.setattr(command, "state_config", quick)
    return url


UNREACHABLE: list[tuple[Callable[[Sequence[str]], int], list[str]]] = [
    (tdev_cli.main, ["tables", "create"]),
    (tdev_cli.main, ["sessions", "list"]),
    (tdev_cli.main, ["projects", "list", "u"]),
    (metrics_cli.main, ["report"]),
    (usage_cli.main, ["report"]),
]


@pytest.mark.parametrize(("main", "argv"), UNREACHABLE, ids=[" ".join(a) for _, a in UNREACHABLE])
def test_an_unreachable_endpoint_is_one_line_and_exit_3(
    nowhere: str, main: Callable[[Sequence[str]], int], argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """No LocalStack: one line naming the endpoint and how to start it, exit 3, no traceback."""
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert nowhere in err
    assert "make localstack-up" in err
    assert "Traceback" not in err


def test_the_console_says_at_start_that_the_endpoint_does_not_answer(nowhere: str) -> None:
    """`tdev console` starts anyway (pages answer 503) and prints one warning naming the endpoint."""
    client = StateClient(command.state_config(argparse.Namespace()))
    try:
        warning = console_cli._store_unreachable(client)
    finally:
        client.close()
    assert warning is not None
    assert nowhere in warning
    assert "make localstack-up" in warning
