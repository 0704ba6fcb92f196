"""The one command-line helper of the platform's three CLIs (`tdev`, `tdev-metrics`, `tdev-recovery-worker`).

Why one helper: the CLIs used to disagree — a store failure was exit 3 in two of them and 1 in the third,
`--env` worked only before the subcommand, a bad setting printed a traceback in one. Here is what they share:

- **exit codes**: 0 ok, 1 nothing found, 2 bad arguments or settings, 3 the store failed (130 on Ctrl-C);
  every error is one line on stderr, never a traceback;
- **target options** (`--env`, `--local`/`--aws`, `--region`, `--profile`) accepted wherever the user puts
  them: before the subcommand or after it;
- **help** on every command and subcommand, with defaults shown;
- **client set-up** from those options and the environment (`StateConfig.from_env`);
- **console output**: rich when installed (`tdev-state-client[cli]`, else one line naming the extra), wide
  when piped, colour only on a terminal and never under `NO_COLOR`; a reader that quits early (`| head`)
  ends the command quietly, exit 0; times in tables as `--time-format` says.

The library itself never prints; only these entry points write to stdout/stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import IO, TYPE_CHECKING, Any, NoReturn

from tdev_state.config import StateConfig, profile_not_found
from tdev_state.exceptions import ConfigurationError, NotFoundError, StateError, ValidationError

if TYPE_CHECKING:
    from rich.console import Console

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_STORE = 3
EXIT_INTERRUPTED = 130

#: One line at the end of every --help: the codes scripts rely on.
EXIT_CODES_EPILOG = "exit codes: 0 ok, 1 nothing found, 2 bad arguments or settings, 3 the store failed"


class CommandLineError(StateError):
    """A command was called with arguments it cannot act on (exit 2)."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option's help; descriptions keep their line breaks.

    An option whose help already says its default (one computed at run time: a host name, half another
    setting) or whose default is None (not given: the help says what happens then) gets no second,
    contradicting `(default: None)`; a plain on/off flag gets no `(default: False)`."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or "default:" in text:
            return text
        if action.nargs == 0 and action.default is False:
            return text  # a plain flag is off unless given: `(default: False)` says nothing
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with the platform's conventions: defaults in --help, the exit-code epilog, exit 2 with one
    line on a bad argument."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        kwargs.setdefault("epilog", EXIT_CODES_EPILOG)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        if message.startswith("the following arguments are required: ") and message.endswith("COMMAND"):
            # `tdev` (or `tdev sessions`) alone: the user is asking what there is. The help, on stderr
            # with argparse's exit 2 for a missing argument, so a script that forgot its command still fails.
            self.print_help(sys.stderr)
            self.exit(EXIT_USAGE)
        # One line: what is wrong and where the usage is (the full usage of a 20-option command buries it).
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def target_options() -> Parser:
    """A parent parser with the options that say *which* store to talk to.

    Their defaults are SUPPRESS so that adding this parent at every level of a command tree lets the user
    put them anywhere (`tdev --env dev sessions list` and `tdev sessions list --env dev`) without a
    subcommand's default overwriting a value given earlier.
    """
    parent = Parser(add_help=False)
    group = parent.add_argument_group("target")
    group.add_argument(
        "--env",
        default=argparse.SUPPRESS,
        help="table environment: t-developer-ENV-* (default: $TDEV_ENV, else local)",
    )
    where = group.add_mutually_exclusive_group()
    where.add_argument(
        "--local",
        dest="target",
        action="store_const",
        const="local",
        default=argparse.SUPPRESS,
        help="talk to the LocalStack on this machine ($AWS_ENDPOINT_URL, else http://127.0.0.1:4566) with "
        "its test credentials (default when the env is local, or $TDEV_TARGET=local)",
    )
    where.add_argument(
        "--aws",
        dest="target",
        action="store_const",
        const="aws",
        default=argparse.SUPPRESS,
        help="talk to AWS with the credentials boto3 finds (default for any other env, or $TDEV_TARGET=aws)",
    )
    group.add_argument(
        "--region",
        default=argparse.SUPPRESS,
        help="AWS region (default: $AWS_REGION, else the profile's region, else us-east-1)",
    )
    group.add_argument(
        "--profile",
        default=argparse.SUPPRESS,
        help="AWS profile for credentials and region (default: $AWS_PROFILE)",
    )
    return parent


def add_command(subparsers: Any, name: str, help_text: str, target: argparse.ArgumentParser) -> Parser:
    """A subcommand with the platform's conventions: help = description, the target options accepted here
    too, defaults and the exit codes in its --help."""
    made: Parser = subparsers.add_parser(
        name,
        help=help_text,
        description=help_text,
        parents=[target],
        formatter_class=_HelpFormatter,
        epilog=EXIT_CODES_EPILOG,
    )
    return made


def state_config(
    args: argparse.Namespace, *, need_credentials: bool = False, **overrides: object
) -> StateConfig:
    """The client configuration: the environment, then the target options the user gave.
    `need_credentials`: a one-shot command (`tdev sessions list`) checks at once that AWS credentials
    exist, so their absence is one line naming the fix, exit 2 — not a denied call, exit 3, after
    boto3's search. Long-running servers (worker, console) start anyway and report through /readyz."""
    given: dict[str, object] = {
        key: getattr(args, key) for key in ("env", "target", "region", "profile") if hasattr(args, key)
    }
    config = StateConfig.from_env(None, **given, **overrides)
    if need_credentials:
        require_credentials(config)
    return config


def require_credentials(config: StateConfig) -> None:
    """ConfigurationError unless boto3 finds credentials for a client of `config` that talks to AWS
    (LocalStack's are the test ones; another endpoint is the user's to sign for as they choose)."""
    if config.local_credentials or config.endpoint_url:
        return
    import boto3
    import botocore.exceptions

    try:
        found = boto3.session.Session(
            profile_name=config.profile, region_name=config.region
        ).get_credentials()
    except botocore.exceptions.ProfileNotFound:
        raise profile_not_found(config.profile or "") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise ConfigurationError(f"cannot read AWS credentials: {exc}") from None
    if found is None:
        raise ConfigurationError(
            f"no AWS credentials for env {config.env!r} on AWS: set AWS_PROFILE (or AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY) or log in; --local uses the LocalStack on this machine instead"
        )


#: Optional modules a command may need -> the extra that installs them (one line instead of a traceback).
EXTRAS = {
    "rich": "tdev-state-client[cli]",
    "matplotlib": "tdev-metrics-collector[report]",
    "numpy": "tdev-metrics-collector[report]",
}


def missing_extra(exc: ImportError) -> str:
    """The one line for a command whose optional dependency is not installed: which extra to install."""
    module = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(module)
    if extra is None:
        return f"a module this command needs is not installed ({module or exc}): reinstall the package"
    return f"this command needs {module}, which is not installed: install {extra} (pip install '{extra}')"


def reader_gone() -> int:
    """stdout's reader quit early (`tdev … | head -1`): end quietly, exit 0, as `cat` does in a pipeline
    it was asked to feed. stdout is pointed at /dev/null so the interpreter's final flush of what is still
    buffered cannot raise a second BrokenPipeError (and a traceback) on the way out."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # a stdout without a file descriptor (tests): nothing to flush later
        pass
    return EXIT_OK


def run(action: Callable[[], int], *, stderr: IO[str] | None = None) -> int:
    """Run a command's body and turn the platform's errors into one line and an exit code."""
    err = sys.stderr if stderr is None else stderr
    try:
        code = action()
        sys.stdout.flush()  # inside the try: a reader gone shows here, not at the interpreter's exit
    except BrokenPipeError:
        return reader_gone()
    except ImportError as exc:
        code, line = EXIT_USAGE, f"error: {missing_extra(exc)}"
    except NotFoundError as exc:  # messages may quote stored text: shown, never obeyed
        code, line = EXIT_NOT_FOUND, f"not found: {printable(exc)}"
    except (ValidationError, ConfigurationError, CommandLineError) as exc:  # the caller's to fix
        code, line = EXIT_USAGE, f"error: {printable(exc)}"
    except StateError as exc:
        code, line = EXIT_STORE, f"error: {printable(exc)}"
    except KeyboardInterrupt:
        code, line = EXIT_INTERRUPTED, "interrupted"
    else:
        return code
    print(line, file=err)
    return code


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace | int:
    """Parse, or the exit code argparse chose (0 after --help, 2 after a usage error it printed)."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_USAGE
    else:
        return args
    try:
        sys.stdout.flush()  # `tdev --help | head -1`: the reader may be gone already
    except BrokenPipeError:
        return reader_gone()
    return code


def entry(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, action: Callable[[argparse.Namespace], int]
) -> int:
    """A console script's whole body: parse, run `action`, map errors to the shared exit codes."""
    args = parse(parser, argv)
    if isinstance(args, int):
        return args
    return run(lambda: action(args))


def day(text: str) -> date:
    """An argparse type: a UTC day as YYYY-MM-DD."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day (YYYY-MM-DD)") from None


def count(what: str, low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number of `what` from low to high, checked when the line is parsed (so
    `--limit 0` is exit 2 with the range, not an empty listing and exit 1)."""

    def parse(text: str) -> int:
        value = text.strip()
        if not (value.isascii() and value.isdecimal() and len(value) <= 9) or not low <= int(value) <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of {what} from {low} to {high}")
        return int(value)

    return parse


def days(text: str) -> int:
    """An argparse type: a number of days, 1 to 366 (what one report or listing covers at most)."""
    if not (text.isascii() and text.isdecimal() and len(text) <= 3) or not 1 <= int(text) <= 366:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days from 1 to 366")
    return int(text)


#: Characters a terminal acts on instead of showing: C0 controls (ESC starts CSI and OSC sequences, OSC 8
#: makes hidden links), DEL, C1 controls (U+009B is a one-character CSI), format characters (bidi overrides
#: and isolates, zero-width), line/paragraph separators and lone surrogates.
_ACTIVE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def printable(value: object, *, keep_newlines: bool = False) -> str:
    """Stored text made safe for a terminal: every character a terminal would act on is shown as its
    escape (`\\x1b`, `\\x9b`, `\\u202e`), so an escape sequence in a project name or an error message
    is visible and inert. The one door for stored text to stdout/stderr in every CLI (rich does not strip
    ESC). `keep_newlines` lets multi-line text (an error's traceback) keep its line breaks and tabs."""
    text = "" if value is None else str(value)
    if text.isascii() and text.isprintable():
        return text  # the common case, untouched
    out = []
    for char in text:
        if keep_newlines and char in "\n\t":
            out.append(char)
        elif unicodedata.category(char) in _ACTIVE_CATEGORIES:
            code = ord(char)
            out.append(
                f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
            )
        else:
            out.append(char)
    return "".join(out)


def no_color(environ: Mapping[str, str] | None = None) -> bool:
    """`NO_COLOR` set to anything but "" (https://no-color.org): no ANSI colour or style at all."""
    return bool((os.environ if environ is None else environ).get("NO_COLOR"))


def console(file: IO[str] | None = None) -> Console:
    """A rich console on stdout: the terminal's width, or 160 columns when piped (CI logs, `| less`).
    Styles only on a terminal; none at all under NO_COLOR (not even bold: plain text, as the spec asks
    of colour, is what a user who sets it wants to copy). A missing rich is the ImportError `run` turns
    into one line naming the extra."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # rich's own ends the process with exit 1; `run` ends it quietly with 0, as for print().
            self.quiet = True
            raise BrokenPipeError

    out = sys.stdout if file is None else file
    plain = {"color_system": None} if no_color() else {}
    if out.isatty():
        return _Console(file=out, **plain)  # type: ignore[arg-type]
    return _Console(file=out, width=160, **plain)  # type: ignore[arg-type]


#: `--time-format` choices: `relative` ("3m ago": how long ago, for a person), `iso` (UTC, to the second:
#: to paste elsewhere), `epoch` (seconds, as stored and as --json gives them).
TIME_FORMATS = ("relative", "iso", "epoch")


def time_format_option(parser: argparse.ArgumentParser) -> None:
    """The `--time-format` option of a command that prints times in a table."""
    parser.add_argument(
        "--time-format",
        choices=TIME_FORMATS,
        default=None,
        help="how tables show times: relative (3m ago), iso (UTC) or epoch seconds (default: relative; "
        "--json gives epoch seconds unless this is given)",
    )


def show_time(
    value: datetime | float | None, style: str, *, now: datetime | None = None
) -> str | float | None:
    """A timestamp as `style` says (see TIME_FORMATS); None stays None (shown as a blank cell)."""
    if value is None:
        return None
    moment = value if isinstance(value, datetime) else datetime.fromtimestamp(float(value), UTC)
    if style == "epoch":
        return round(moment.timestamp(), 3)
    if style == "iso":
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    return ago(seconds)


def ago(seconds: float) -> str:
    """A duration before now as a person says it: `just now`, `42s ago`, `5m ago`, `3h 12m ago`,
    `2d 4h ago` (and `in 5m` for a time ahead: another machine's clock)."""
    ahead, span = seconds < 0, int(abs(seconds))
    if span < 1:
        return "just now"
    days, rest = divmod(span, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        text = f"{days}d {hours}h" if hours else f"{days}d"
    elif hours:
        text = f"{hours}h {minutes}m" if minutes else f"{hours}h"
    elif minutes:
        text = f"{minutes}m"
    else:
        text = f"{secs}s"
    return f"in {text}" if ahead else f"{text} ago"
