"""The recovery backlog and its two actions. Whether a run is stalled and whether an action may take it is
the recovery rule's (`tdev_state.RecoveryPolicy`, shaped like the worker's); the actions themselves are
tdev_recovery's `resume_pipeline` / `abandon_pipeline`: the worker's claim, fencing token and attempts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from tdev_console import _views
from tdev_console._guard import SignIn
from tdev_console._pages import Pages
from tdev_console._settings import ConsoleSettings
from tdev_console._telemetry import ConsoleMetrics
from tdev_recovery import LiveRunError, NotRecoverableError, abandon_pipeline, resume_pipeline
from tdev_state import RecoveryPolicy, StateClient
from tdev_state.log import get_logger

log = get_logger(__name__)

ACTIONS = ("resume", "abandon")

NO_RESUMER = (
    "this console has no resumer: start it with --resumer URL|module:function (or $TDEV_RESUMER), the same "
    "one the recovery worker uses"
)


@dataclass(frozen=True, kw_only=True)
class RecoveryPages:
    """/backlog (page and fragment), and /backlog/{id}/{action}: GET confirms, POST acts."""

    client: StateClient
    settings: ConsoleSettings
    pages: Pages
    policy: RecoveryPolicy
    sign_in: SignIn
    metrics: ConsoleMetrics

    def routes(self) -> list[Route]:
        return [
            Route("/backlog", self.backlog, name="backlog"),
            Route("/fragments/backlog", self.backlog_fragment, name="backlog_fragment"),
            Route("/backlog/{session_id:runid}/{action}", self.confirm, methods=["GET"], name="confirm"),
            Route("/backlog/{session_id:runid}/{action}", self.act, methods=["POST"], name="act"),
        ]

    def backlog_context(self) -> dict[str, Any]:
        now = self.settings.clock()
        return {
            "rows": _views.backlog(self.client, now=now, policy=self.policy, limit=100),
            "can_resume": self.settings.resumer is not None,
            "resumer_name": self.settings.resumer_name,
            "stall_threshold": self.settings.stall_threshold,
        }

    def backlog(self, request: Request) -> Response:
        return self.pages.render(request, "backlog.html", **self.backlog_context())

    def backlog_fragment(self, request: Request) -> Response:
        return self.pages.render(request, "_backlog_table.html", **self.backlog_context())

    def confirm(self, request: Request) -> Response:
        """The confirmation form — only for a run the action will accept now; otherwise why not (409)."""
        action = _action(request)
        run = self.client.sessions.candidate(request.path_params["session_id"])
        verdict = self.policy.judge(run, now=self.settings.clock())
        refused = None
        if action == "resume" and self.settings.resumer is None:
            refused = NO_RESUMER
        elif not verdict.claimable:
            refused = f"{run.session_id} cannot be taken now: {verdict.reason}"
        status = 403 if not self.settings.allow_actions else (409 if refused else 200)
        return self.pages.render(
            request,
            "confirm.html",
            status_code=status,
            action=action,
            session=run,
            refused=refused,
            resumer_name=self.settings.resumer_name,
        )

    async def act(self, request: Request) -> Response:
        action = _action(request)
        sid = str(request.path_params["session_id"])
        form = await request.form()
        refusal = self.sign_in.refusal(request, str(form.get("csrf", "")))
        if refusal is not None:
            self.metrics.action(action, "refused")
            return self.pages.error(request, 403, "Action refused", refusal)
        if action == "resume" and self.settings.resumer is None:
            self.metrics.action(action, "refused")
            return self.pages.error(request, 409, "No resumer", NO_RESUMER)
        try:
            result = await self.perform(action, sid, str(form.get("reason", "")))
        except LiveRunError as exc:  # worded for the page: the console has no force=True to offer
            self.metrics.action(action, "live")
            message = f"{sid} cannot be taken now: {exc.reason}. Nothing was changed."
            return self.pages.error(request, 409, "The run is live", message)
        except NotRecoverableError:
            self.metrics.action(action, "not_recoverable")
            raise
        except Exception:
            self.metrics.action(action, "failed")
            raise
        self.metrics.action(action, str(result["outcome"]))
        log.warning("console.action", action=action, **result)
        request.session["flash"] = (
            f"{action}: outcome {result['outcome']} under fencing token {result['fencing_token']}"
        )
        return RedirectResponse(request.url_for("run", session_id=sid), status_code=303)

    async def perform(self, action: str, sid: str, reason: str) -> dict[str, Any]:
        """The action itself, as the worker would take it: the plan's calls under this console's settings."""
        config = self.settings.worker_config()
        if action == "resume":
            resumer = self.settings.resumer
            assert resumer is not None  # act() answered "no resumer" already
            return await resume_pipeline(sid, resumer=resumer, client=self.client, config=config)
        why = f"abandoned by an operator: {reason}".strip()
        return await abandon_pipeline(sid, reason=why, client=self.client, config=config)


def _action(request: Request) -> str:
    action = str(request.path_params["action"])
    if action not in ACTIONS:
        raise HTTPException(404, f"no action {action!r:.40}: resume or abandon")
    return action
