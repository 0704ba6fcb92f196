"""An agent row of `rules.AGENT_RULES` rendered as the two updates of its transaction: the agent item's and
the session item's, each conditioned as the row says. `agent_steps.AgentStep` sends them (with the writer)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from tdev_state.models import AGENT_STEP, AGENTS, AgentStatus, RunPolicy, SessionStatus, epoch
from tdev_state.runs.rules import (
    AGENT_RETENTION_GRACE,
    AgentRule,
    SessionEffect,
    require_claim,
    require_within_budget,
    run_expiry,
    status_effects,
)
from tdev_state.storage import Expr


def agent_session_update(
    rule: AgentRule,
    session_id: str,
    agent: str,
    effect: SessionEffect,
    *,
    now: datetime,
    policy: RunPolicy,
    retention_days: int | None,
    refresh_liveness: bool,
    error_message: str | None,
    claim: tuple[int, str] | None,
    live_for: float = 0.0,
) -> Expr:
    """The session half of an agent transition, conditioned as the rule says. `live_for`: how long the run
    may stay silent after it (`policy.declared_silence`); the index key `stalled_at` is rewritten only
    when `refresh_liveness` (or the status changes)."""
    step = AGENT_STEP[agent]
    expr = Expr()
    expr.require_exists("session_id")
    expr.require_in("status", [s.value for s in rule.session_from])
    previous = effect.moved_past
    if rule.progress == "next" and previous is None:
        expr.require_equal("progress", step - 1)
    elif rule.progress == "next" and previous is not None:
        expr.require_equal("progress", step - 2).require_equal("current_agent", previous)
        expr.add_to_set("failed_agents", {previous})
    elif rule.progress == "this":
        expr.require_equal("progress", step - 1).require_equal("current_agent", agent)
    if rule.fenced:
        if claim is None:
            raise AssertionError(f"{rule.kind} is fenced: it needs the claim")  # pragma: no cover
        require_claim(expr, *claim)
    if rule.kind == "interrupt":
        expr.increment("version")  # the claim orders it; the run's status and progress stay
        return expr
    expr.set_many({"last_updated": epoch(now), "live_for": live_for}).increment("version")
    if refresh_liveness or effect.status is not SessionStatus.ACTIVE or rule.kind == "retry":
        expr.set("stalled_at", epoch(now + timedelta(seconds=live_for)))
    expr.set("progress", effect.progress)
    if rule.kind == "complete" and not effect.finished:
        expr.set("current_agent", AGENTS[step])
    else:
        expr.set("current_agent", agent)
    if effect.finished and effect.status is SessionStatus.COMPLETED:
        require_within_budget(expr, policy, adding=1 if effect.moved_past else 0)
    if rule.kind == "retry":
        expr.remove("error_message")
    if effect.status is not SessionStatus.ACTIVE or rule.kind == "retry":
        status_effects(expr, session_id, effect.status, now=now, retention_days=retention_days)
    if effect.status is SessionStatus.FAILED:
        reason = (
            error_message or f"the run policy allows {policy.tolerated_failures} failed agent(s); more failed"
        )
        expr.set("error_message", f"{agent}: {reason}"[:4000] if error_message else reason)
    return expr


def agent_item_update(
    rule: AgentRule,
    agent: str,
    *,
    now: datetime,
    sets: dict[str, Any],
    fingerprint: Any,
    retention_days: int | None,
) -> Expr:
    """The agent half of a transition: status, times, and the payload/error attributes in `sets`."""
    step = AGENT_STEP[agent]
    expr = Expr()
    # PENDING: no item yet, or the item a fork stores for its fork point (its input, nothing run yet).
    existing = list(rule.agent_from)
    alternatives = []
    if AgentStatus.PENDING in rule.agent_from:
        alternatives.append(f"attribute_not_exists({expr.n('execution_id')})")
    if existing:
        listed = ", ".join(expr.v(s.value) for s in existing)
        alternatives.append(f"{expr.n('status')} IN ({listed})")
    expr.require(" OR ".join(alternatives))
    expr.set("status", rule.agent_to.value).set("fingerprint", fingerprint)
    expr.set_many({"agent": agent, "step": step})
    if rule.agent_to is AgentStatus.RUNNING:
        expr.set("start_time", epoch(now)).remove("end_time")
    else:
        expr.set("end_time", epoch(now))
    if rule.kind == "retry":
        expr.increment("retry_count")
    elif "retry_count" not in sets:
        expr.set_default("retry_count", 0)
    if rule.agent_to is not AgentStatus.FAILED:
        expr.remove("error_message")  # `last_error` keeps the latest failure's message
    expr.set_many(sets)
    expiry = run_expiry(now + AGENT_RETENTION_GRACE, retention_days)
    if expiry is not None:  # every first write (a start, or a first record that is already final)
        expr.set_default("expires_at", expiry)
    return expr
