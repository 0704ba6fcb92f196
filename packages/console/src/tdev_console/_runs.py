"""The runs pages: the list (by day or user, filtered), one run (timeline, recovery history, its hours'
metrics) and one payload on demand — each a page and, where it refreshes itself, a fragment."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from tdev_console import _views
from tdev_console._pages import Pages
from tdev_console._settings import ConsoleSettings
from tdev_metrics import MetricsReader
from tdev_state import (
    AGENTS,
    EncryptionError,
    PayloadIntegrityError,
    RecoveryPolicy,
    SessionStatus,
    StateClient,
    ValidationError,
)
from tdev_state.diff import mixed_versions

#: The metric the pipeline records per agent (the demo and the plan's `record_metric` calls).
DEFAULT_METRIC = "agent_execution_time"


@dataclass(frozen=True, kw_only=True)
class RunPages:
    """/runs, /runs/{id}, their fragments, and /runs/{id}/payload/{what}."""

    client: StateClient
    settings: ConsoleSettings
    pages: Pages
    policy: RecoveryPolicy
    metrics: MetricsReader

    def routes(self) -> list[Route]:
        return [
            Route("/runs", self.runs, name="runs"),
            Route("/fragments/runs", self.runs_fragment, name="runs_fragment"),
            Route("/runs/{session_id:runid}", self.run, name="run"),
            Route("/fragments/runs/{session_id:runid}", self.run_fragment, name="run_fragment"),
            Route("/fragments/runs/{session_id:runid}/metrics", self.run_metrics, name="run_metrics"),
            Route("/runs/{session_id:runid}/payload/{what}", self.payload, name="payload"),
        ]

    def runs_context(self, request: Request) -> dict[str, Any]:
        now = self.settings.clock()
        query = _views.RunsQuery.parse(request.query_params, now.date())
        size = self.settings.page_size
        found = _views.find_runs(self.client, query, limit=size, now=now, policy=self.policy)
        return {"query": query, "found": found}

    def runs(self, request: Request) -> Response:
        wanted = (request.query_params.get("run") or "").strip()
        if wanted:  # the link encodes any id as one path segment; the run page says if there is none
            return RedirectResponse(request.url_for("run", session_id=wanted), status_code=303)
        return self.pages.render(request, "runs.html", **self.runs_context(request))

    def runs_fragment(self, request: Request) -> Response:
        return self.pages.render(request, "_runs_table.html", **self.runs_context(request))

    def run_context(self, request: Request) -> dict[str, Any]:
        sid = request.path_params["session_id"]
        view = _views.run_view(self.client, sid, now=self.settings.clock(), policy=self.policy)
        can_resume = self.settings.resumer is not None
        # Rerun from here: a fork needs an ended run, and a resumer to start the child with.
        ended = view.session.status is not SessionStatus.ACTIVE
        return {
            "run": view,
            "can_resume": can_resume,
            "can_fork": self.settings.allow_actions and can_resume and ended,
            # A fork or a resume across a deploy: the version fields that differ across the run's agents.
            "mixed_versions": mixed_versions(a.execution for a in view.agents if a.execution is not None),
        }

    def run(self, request: Request) -> Response:
        return self.pages.render(request, "run.html", **self.run_context(request))

    def run_fragment(self, request: Request) -> Response:
        return self.pages.render(request, "_run_body.html", **self.run_context(request))

    def run_metrics(self, request: Request) -> Response:
        """The agents' metrics in the hours the run spanned (a fragment, loaded after the page)."""
        session = self.client.sessions.get(request.path_params["session_id"], strict=False)
        first, last = session.created_at, session.last_updated
        hours: list[datetime] = []
        moment = first.replace(minute=0, second=0, microsecond=0)
        while moment <= last and len(hours) < 48:
            hours.append(moment)
            moment += timedelta(hours=1)
        rows = []
        for day in sorted({h.date() for h in hours}):
            wanted = {h.hour for h in hours if h.date() == day}
            rows += [s for s in self.metrics.hourly(DEFAULT_METRIC, start=day) if s.hour in wanted]
        order = {a: i for i, a in enumerate(AGENTS)}
        rows.sort(key=lambda r: (r.date, r.hour or 0, order.get(r.agent, 99), r.variant or ""))
        return self.pages.render(request, "_run_metrics.html", rows=rows, metric=DEFAULT_METRIC)

    def payload(self, request: Request) -> Response:
        """One payload, on demand: sealed ones open only for credentials with kms:Decrypt."""
        sid, what = request.path_params["session_id"], request.path_params["what"]
        value, error = None, None
        try:
            if what == "metadata":
                value = self.client.sessions.get(sid).metadata
            else:
                agent, _, kind = what.partition(".")
                if agent not in AGENTS or kind not in ("input", "output"):
                    raise ValidationError(
                        f"{what!r:.60} names no payload: use metadata or <agent>.input / <agent>.output"
                    )
                execution = self.client.executions.get(sid, agent)
                value = execution.input_data if kind == "input" else execution.output_data
        except EncryptionError as exc:
            error = f"sealed: these credentials cannot open it (kms:Decrypt is needed). {exc}"
        except PayloadIntegrityError as exc:
            error = f"unreadable: {exc}"
        return self.pages.render(request, "payload.html", sid=sid, label=what, value=value, error=error)
