"""Rendering pages: the Jinja2 environment (autoescaping on, strict undefined), the filters the templates
format with, and the context every page shares (env, sign-in state, CSRF token, flash, clock)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from tdev_console._settings import ConsoleSettings
from tdev_state import AGENTS, RunFilter

HERE = Path(__file__).parent


class Pages:
    """Renders a template with the context every page of one console shares."""

    def __init__(self, env_name: str, settings: ConsoleSettings) -> None:
        self.env_name = env_name
        self.settings = settings
        self.templates = _templates()

    def render(self, request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        session = request.session
        context.update(
            request=request,
            env=self.env_name,
            actions=self.settings.allow_actions,
            signed_in=bool(session.get("signed_in")),
            csrf=session.get("csrf", ""),
            refresh=self.settings.refresh_seconds,
            flash=session.pop("flash", None),
            now=self.settings.clock(),
        )
        return self.templates.TemplateResponse(request, name, context, status_code=status_code)

    def error(self, request: Request, status_code: int, title: str, message: str) -> Response:
        """The error page: a title and one message, never a traceback."""
        return self.render(request, "error.html", status_code=status_code, title=title, message=message)


def _templates() -> Jinja2Templates:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        ts=ts, ago=ago, dur=dur, size=size, num=num, pct=pct, qs=urlencode, pretty=pretty, label=label
    )
    env.globals.update(AGENTS=AGENTS, RunFilter=RunFilter)
    return Jinja2Templates(env=env)


# --- template filters ---------------------------------------------------------------------------------


def ts(moment: datetime | None) -> str:
    return "—" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "—"
    return dur((now - moment).total_seconds()) + " ago"


def dur(seconds: float | timedelta | None) -> str:
    if seconds is None:
        return "—"
    value = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    if value < 172800:
        return f"{value / 3600:.1f} h"
    return f"{value / 86400:.0f} d"


def size(count: int | None) -> str:
    if not count:
        return "—"
    value = float(count)
    for unit in ("B", "KB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} MB"


def num(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def pretty(value: Any, indent: int | None = None) -> str:
    """JSON for reading, as text: the template escapes it like any other stored string."""
    return json.dumps(value, indent=indent, ensure_ascii=False, default=str)


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f} %"


def label(key: str) -> str:
    """A report key as a column heading: `by_pipeline_type` -> `by pipeline type`."""
    return str(key).replace("_", " ")
