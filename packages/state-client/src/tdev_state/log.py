"""Logging: structlog's key-value API over the standard `logging` module. A library is quiet.

Every module of the three packages logs through `get_logger(__name__)`: a structlog logger wrapped around
`logging.getLogger(name)`, with its own two processors — drop what the stdlib level filters out (before any
formatting work), then hand the record to stdlib as a message (`event key=value …`) with the fields attached
as `record.tdev_event` / `record.tdev_fields`. Nothing here configures structlog globally or adds a handler
beyond each package's `NullHandler`, so a host application that logs at WARNING sees none of our INFO lines,
and one that prints nothing gets nothing on stdout or stderr.

Entry points (the CLIs, the worker, the demo) decide the output with `configure_output()`: JSON lines in
containers and pipes, readable lines on a terminal.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

import structlog

PACKAGES = ("tdev_state", "tdev_recovery", "tdev_metrics", "tdev_console")


def _to_stdlib(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    event = str(event_dict.pop("event", ""))
    fields = dict(event_dict)
    text = " ".join([event, *(f"{k}={v}" for k, v in fields.items())])
    return {"msg": text, "extra": {"tdev_event": event, "tdev_fields": fields}}


def get_logger(name: str) -> Any:
    """The logger of module `name` (pass `__name__`)."""
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=[structlog.stdlib.filter_by_level, _to_stdlib],
        wrapper_class=structlog.stdlib.BoundLogger,
    )


class JsonLines(logging.Formatter):
    """One JSON object per record: time, level, logger, event and its fields (containers, log shippers)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "tdev_event", record.getMessage()),
            **getattr(record, "tdev_fields", {}),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class Readable(logging.Formatter):
    """A line for a terminal: log fields often quote stored text (ids, errors), so every character a
    terminal would act on (escape sequences, bidi overrides) is shown escaped (command.printable)."""

    def format(self, record: logging.LogRecord) -> str:
        from tdev_state.command import printable  # command imports the config, which logs: import late

        return printable(super().format(record), keep_newlines=True)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a record is emitted, not the object it was when the entry
    point configured output: a later redirect (or a test's capture, since closed) must not turn every log
    line into a logging error."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ sets it; the property decides
        return


def configure_output(level: str | int = "WARNING", *, json_lines: bool | None = None) -> None:
    """For entry points only: send the packages' logs to stderr at `level`, as JSON lines when stderr is
    not a terminal (or `json_lines=True`), as readable lines otherwise. Idempotent."""
    handler = _Stderr()
    as_json = (not sys.stderr.isatty()) if json_lines is None else json_lines
    handler.setFormatter(
        JsonLines() if as_json else Readable("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    for name in PACKAGES:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "_tdev_output", False)]:
            logger.removeHandler(old)
        handler._tdev_output = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.setLevel(level if isinstance(level, int) else level.upper())
        logger.propagate = False  # the entry point owns the output: no second copy through the root
