"""The one command-line helper of the platform's three CLIs (`tdev`, `tdev-metrics`, `tdev-recovery-worker`).

Why one helper: the CLIs used to disagree — a store failure was exit 3 in two of them and 1 in the third,
`--env` worked only before the subcommand, a bad setting printed a traceback in one. Here is what they share:

- **exit codes**: 0 ok, 1 nothing found, 2 bad arguments or settings, 3 the store failed (130 on Ctrl-C);
  every error is one line on stderr, never a traceback;
- **target options** (`--env`, `--local`/`--aws`, `--region`, `--profile`) accepted wherever the user puts
  them: before the subcommand or after it;
- **help** on every command and subcommand, with defaults shown;
- **client set-up** from those options and the environment (`StateConfig.from_env`);
- **console output**: rich when installed (`tdev-state-client[cli]`), wide when piped.

The library itself never prints; only these entry points write to stdout/stderr.
"""

from __future__ import annotations

import argparse
import sys
import unicodedata
from collections.abc import Callable, Sequence
from datetime import date
from typing import IO, TYPE_CHECKING, Any, NoReturn

from tdev_state.config import StateConfig
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


class UsageError(StateError):
    """A command was called with arguments it cannot act on (exit 2)."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option's help; descriptions keep their line breaks."""


class Parser(argparse.ArgumentParser):
    """argparse with the platform's conventions: defaults in --help, the exit-code epilog, exit 2 with one
    line on a bad argument."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        kwargs.setdefault("epilog", EXIT_CODES_EPILOG)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
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


def state_config(args: argparse.Namespace, **overrides: object) -> StateConfig:
    """The client configuration: the environment, then the target options the user gave."""
    given: dict[str, object] = {
        key: getattr(args, key) for key in ("env", "target", "region", "profile") if hasattr(args, key)
    }
    return StateConfig.from_env(None, **given, **overrides)


def run(action: Callable[[], int], *, stderr: IO[str] | None = None) -> int:
    """Run a command's body and turn the platform's errors into one line and an exit code."""
    err = sys.stderr if stderr is None else stderr
    try:
        return action()
    except NotFoundError as exc:  # messages may quote stored text: shown, never obeyed
        print(f"not found: {printable(exc)}", file=err)
        return EXIT_NOT_FOUND
    except (ValidationError, ConfigurationError, UsageError) as exc:  # the caller's to fix
        print(f"error: {printable(exc)}", file=err)
        return EXIT_USAGE
    except StateError as exc:
        print(f"error: {printable(exc)}", file=err)
        return EXIT_STORE
    except KeyboardInterrupt:
        print("interrupted", file=err)
        return EXIT_INTERRUPTED


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace | int:
    """Parse, or the exit code argparse chose (0 after --help, 2 after a usage error it printed)."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE


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


def console() -> Console:
    """A rich console on stdout: the terminal's width, or 160 columns when piped (CI logs, `| less`)."""
    try:
        from rich.console import Console
    except ImportError:  # pragma: no cover - exercised only without the extra installed
        raise ConfigurationError(
            "this command prints tables with rich: install tdev-state-client[cli]"
        ) from None
    return Console() if sys.stdout.isatty() else Console(width=160)
