"""Rerun from here (fork a stored run at one of its agents and start the child) and the diff of two runs.

The fork is `tdev_state`'s (`sessions.fork`: the child references the parent's completed agents, nothing
copied); starting it is `tdev_recovery`'s `resume_pipeline`, the same claim, fencing token and resume route
as Resume now. The action sits behind the same door as the other two (`--allow-actions`, the per-start
token, the session's CSRF token, the Origin). docs/fork.md says what a fork is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from tdev_console._guard import SignIn
from tdev_console._pages import Pages
from tdev_console._recovery import NO_RESUMER
from tdev_console._settings import ConsoleSettings
from tdev_console._telemetry import ConsoleMetrics
from tdev_recovery import LiveRunError, RecoveryError, resume_pipeline
from tdev_state import (
    AGENTS,
    AgentStatus,
    ConflictError,
    InvalidTransitionError,
    SessionStatus,
    StateClient,
    ValidationError,
)
from tdev_state.diff import diff_runs
from tdev_state.log import get_logger

log = get_logger(__name__)

#: Bounds of the overrides field: what a person types, not a payload upload.
MAX_OVERRIDE_LINES = 50
MAX_OVERRIDES_TEXT = 10_000


def parse_overrides(text: str) -> dict[str, Any] | None:
    """The form's `key=value` lines as the overrides object (None when there are none): a value that reads
    as JSON (`3`, `true`, `"x"`, `{"a": 1}`) is that value, anything else is the text as typed, as the
    CLI's `--set key=value` reads it. ValidationError says which line is wrong."""
    if len(text) > MAX_OVERRIDES_TEXT:
        raise ValidationError(f"overrides are {len(text)} characters: at most {MAX_OVERRIDES_TEXT}")
    # Only a newline ends a line (what a textarea sends): str.splitlines would also split at U+2028, NEL
    # or a file separator inside a value, reading the rest of that value as another key=value line.
    rows = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    lines = [line.strip() for line in rows if line.strip()]
    if len(lines) > MAX_OVERRIDE_LINES:
        raise ValidationError(f"{len(lines)} override lines: at most {MAX_OVERRIDE_LINES}")
    found: dict[str, Any] = {}
    for number, line in enumerate(lines, start=1):
        key, sep, raw = line.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key:
            raise ValidationError(
                f"override line {number} ({line!r:.60}) is not key=value, e.g. framework=vue"
            )
        if key in found:
            raise ValidationError(f"override line {number} sets {key!r:.60} a second time")
        try:
            found[key] = json.loads(raw)
        except ValueError:
            found[key] = raw
        except RecursionError:  # `[[[…` thousands deep: the decoder's stack, not the form, gives out
            raise ValidationError(f"override line {number} ({key!r:.60}) nests too deep") from None
    return found or None


@dataclass(frozen=True, kw_only=True)
class ForkPages:
    """/runs/{id}/fork/{agent}: GET confirms, POST forks and starts the child."""

    client: StateClient
    settings: ConsoleSettings
    pages: Pages
    sign_in: SignIn
    metrics: ConsoleMetrics

    def routes(self) -> list[Route]:
        return [
            Route("/runs/{session_id:runid}/fork/{agent}", self.confirm, methods=["GET"], name="fork"),
            Route("/runs/{session_id:runid}/fork/{agent}", self.act, methods=["POST"], name="fork_act"),
            Route("/runs/{session_id:runid}/diff/{other:runid}", self.diff, name="diff"),
        ]

    def diff(self, request: Request) -> Response:
        """Two runs agent by agent (`tdev_state.diff.diff_runs`): a fork against its parent, or any two.
        Reads each run's session and agents (payloads included: the outputs are compared)."""
        a, b = str(request.path_params["session_id"]), str(request.path_params["other"])
        result = diff_runs(self.client, a, b)
        run_a = self.client.sessions.get(result.run_a, strict=False)
        run_b = self.client.sessions.get(result.run_b, strict=False)
        return self.pages.render(request, "diff.html", diff=result, a=run_a, b=run_b)

    def refused(self, session_id: str, agent: str) -> tuple[Any, str | None]:
        """The run, and why a fork from `agent` would be refused now (None: it would be taken). The store
        decides for good when the fork is written; this only spares a form that cannot succeed."""
        session = self.client.sessions.get(session_id, strict=False)
        if self.settings.resumer is None:
            return session, NO_RESUMER
        if session.status is SessionStatus.ACTIVE:
            return session, f"{session.session_id} is ACTIVE: rerun from an agent once the run has ended"
        execution = {
            e.agent_name: e for e in self.client.executions.list(session.session_id, load_payloads=False)
        }
        done = execution.get(agent)
        if done is None or done.status is not AgentStatus.COMPLETED:
            return session, f"{agent} did not complete in {session.session_id}: rerun from a completed agent"
        return session, None

    def confirm(self, request: Request) -> Response:
        agent = _agent(request)
        session, refused = self.refused(str(request.path_params["session_id"]), agent)
        status = 403 if not self.settings.allow_actions else (409 if refused else 200)
        step = AGENTS.index(agent)
        return self.pages.render(
            request,
            "fork.html",
            status_code=status,
            session=session,
            agent=agent,
            reused=AGENTS[:step],
            rerun=AGENTS[step:],
            refused=refused,
            resumer_name=self.settings.resumer_name,
        )

    async def act(self, request: Request) -> Response:
        agent = _agent(request)
        sid = str(request.path_params["session_id"])
        form = await request.form()
        refusal = self.sign_in.refusal(request, str(form.get("csrf", "")))
        if refusal is not None:
            self.metrics.action("fork", "refused")
            return self.pages.error(request, 403, "Action refused", refusal)
        resumer = self.settings.resumer
        if resumer is None:
            self.metrics.action("fork", "refused")
            return self.pages.error(request, 409, "No resumer", NO_RESUMER)
        overrides = parse_overrides(str(form.get("overrides", "")))  # a ValidationError is a 400 page
        _, why = self.refused(sid, agent)  # the page's own rule: a POST may not fork what it would not offer
        if why is not None:
            self.metrics.action("fork", "refused")
            return self.pages.error(request, 409, "Cannot rerun from here", f"{why}. Nothing was written.")
        try:
            child = self.client.sessions.fork(sid, from_agent=agent, overrides=overrides)
        except (ConflictError, InvalidTransitionError) as exc:  # ACTIVE, leased, not reached: a page
            self.metrics.action("fork", "refused")
            return self.pages.error(request, 409, "Cannot rerun from here", f"{exc} Nothing was written.")
        child_id = child.session_id
        log.warning("console.forked", session_id=sid, child_id=child_id, fork_point=agent)
        try:
            # force: the child was created a moment ago by this request and nobody runs it; a console (or
            # worker) with a fixed --stall-threshold would otherwise call it live for that long. A lease a
            # worker's sweep took meanwhile is still respected (LiveRunError below).
            result = await resume_pipeline(
                child_id,
                resumer=resumer,
                client=self.client,
                config=self.settings.worker_config(),
                force=True,
            )
        except RecoveryError as exc:  # the child exists: show it, and say why it is not started (yet)
            self.metrics.action("fork", "live" if isinstance(exc, LiveRunError) else "not_recoverable")
            request.session["flash"] = (
                f"forked as {child_id}, not started from here: {exc}. A recovery worker's sweep starts it "
                "when it is due."
            )
            return RedirectResponse(request.url_for("run", session_id=child_id), status_code=303)
        self.metrics.action("fork", str(result["outcome"]))
        request.session["flash"] = (
            f"rerun from {agent}: {child_id} forked from {sid}, start outcome {result['outcome']} "
            f"under fencing token {result['fencing_token']}"
        )
        return RedirectResponse(request.url_for("run", session_id=child_id), status_code=303)


def _agent(request: Request) -> str:
    agent = str(request.path_params["agent"])
    if agent not in AGENTS:
        raise HTTPException(404, f"no agent {agent!r:.40}: one of {', '.join(AGENTS)}")
    return agent
