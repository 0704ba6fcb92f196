"""The run lifecycle, declared once: the transition table that the one writer (`runs.writer`) applies.

Two state machines, as data:

- `AGENT_RULES`: one row per agent transition (start, complete, fail, retry, interrupt) — the agent statuses
  it leaves, the status it reaches, the session statuses it needs, where the session's progress must be.
  `agent_steps.AgentStep` renders a row as one TransactWriteItems of the agent item and the session item.
- `SESSION_RULES`: one row per session transition (create, pipeline status changes, heartbeat, the recovery
  worker's claim / extend / attempt / hand-over / release / abandon, the orchestrator's verdict):
  from-statuses, to-status, whether it is fenced by a claim. `status_effects` is the one place that knows
  what a status does to the recovery index (`recovery_shard`) and to the TTL (`expires_at`).

The run model is T-Developer's. A failed attempt is recorded (agent FAILED, retried in process by the
pipeline); a critical agent's failure (run policy: generation, assembly) makes the session FAILED at once. A
non-critical failure becomes *tolerated* when the pipeline moves past it — records the next agent — and the
session then lists it in `failed_agents`. The run ends when the last agent completes (or when the pipeline
declares it COMPLETED with the last agent failed): COMPLETED if the policy's failure budget held, else FAILED.
Progress counts the agents that have finished (completed, or failed and moved past), so the next agent may
start when `progress = step - 1` — or at `step - 2` when the agent before it failed and is moved past, in
the same transaction (the "move-on" variant, with a ConditionCheck that it is FAILED).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from tdev_state.agents import sort_key
from tdev_state.models import (
    AGENT_STEP,
    AGENTS,
    AgentStatus,
    RunPolicy,
    SessionStatus,
)
from tdev_state.schema import AGENT_EXECUTIONS, PIPELINE_SESSIONS, RECOVERY_INDEX_SHARDS
from tdev_state.storage import Expr

AgentKind = Literal["start", "complete", "fail", "retry", "interrupt"]
SessionKind = Literal[
    "create",
    "set_status",
    "heartbeat",
    "claim",
    "extend",
    "next_attempt",
    "hand_over",
    "release",
    "abandon",
    "verdict",
]

OPEN_STATUSES = frozenset({SessionStatus.ACTIVE, SessionStatus.FAILED})
_ALL_OPEN = (SessionStatus.ACTIVE, SessionStatus.FAILED)


@dataclass(frozen=True)
class AgentRule:
    """One agent transition. PENDING in `agent_from` means "no item yet", or the item a fork stores for its
    fork point (its input, nothing run yet: `runs.forks`)."""

    kind: AgentKind
    agent_from: tuple[AgentStatus, ...]
    agent_to: AgentStatus
    session_from: tuple[SessionStatus, ...]
    #: Where the session's progress must be: "next" = step - 1 (this agent is the next one to finish), or
    #: step - 2 with the agent before it FAILED (moved past); "this" = step - 1 and the session's
    #: current_agent is this agent (nothing later started).
    #: None: not checked (fenced transitions are ordered by the claim instead).
    progress: Literal["next", "this"] | None
    #: Conditioned on the recovery claim's fencing token instead of on progress.
    fenced: bool = False
    summary: str = ""


AGENT_RULES: dict[AgentKind, AgentRule] = {
    rule.kind: rule
    for rule in (
        AgentRule(
            "start",
            (AgentStatus.PENDING,),
            AgentStatus.RUNNING,
            (SessionStatus.ACTIVE,),
            "next",
            summary="the next agent begins; the session points at it",
        ),
        AgentRule(
            "complete",
            (AgentStatus.PENDING, AgentStatus.RUNNING),
            AgentStatus.COMPLETED,
            (SessionStatus.ACTIVE,),
            "next",
            summary="progress = step; after the last agent the run ends (COMPLETED or, over the "
            "policy's failure budget, FAILED)",
        ),
        AgentRule(
            "fail",
            (AgentStatus.PENDING, AgentStatus.RUNNING),
            AgentStatus.FAILED,
            (SessionStatus.ACTIVE,),
            "next",
            summary="a failed attempt; a critical agent's makes the session FAILED. A non-critical one is "
            "tolerated once the pipeline records the next agent",
        ),
        AgentRule(
            "retry",
            (AgentStatus.FAILED,),
            AgentStatus.RUNNING,
            (SessionStatus.ACTIVE, SessionStatus.FAILED),
            "this",
            summary="a FAILED agent runs again (retry_count + 1, its error kept as last_error) while it is "
            "still the session's current agent; the session is ACTIVE again",
        ),
        AgentRule(
            "interrupt",
            (AgentStatus.RUNNING,),
            AgentStatus.FAILED,
            _ALL_OPEN,
            None,
            fenced=True,
            summary="the recovery worker closes an agent a dead pipeline left RUNNING, under its claim",
        ),
    )
}


@dataclass(frozen=True)
class SessionRule:
    """One session transition: the statuses it leaves and the one it reaches (None: unchanged)."""

    kind: SessionKind
    session_from: tuple[SessionStatus, ...]
    session_to: SessionStatus | None
    #: Conditioned on the recovery claim (fencing token and owner).
    fenced: bool = False
    #: Bumps `version` (heartbeats do not: they change nothing anyone reads to write).
    versioned: bool = True
    summary: str = ""


SESSION_RULES: dict[SessionKind, SessionRule] = {
    rule.kind: rule
    for rule in (
        SessionRule("create", (), SessionStatus.ACTIVE, summary="a new run, ACTIVE at progress 0"),
        SessionRule(
            "set_status",
            _ALL_OPEN,
            None,
            summary="the pipeline sets ACTIVE/FAILED/ABANDONED, or COMPLETED once all agents finished "
            "within the policy",
        ),
        SessionRule(
            "heartbeat", (SessionStatus.ACTIVE,), None, versioned=False, summary="an ACTIVE run is alive"
        ),
        SessionRule(
            "claim", _ALL_OPEN, None, summary="a worker leases a run; the fencing token goes up by one"
        ),
        SessionRule("extend", _ALL_OPEN, None, fenced=True, versioned=False, summary="lease heartbeat"),
        SessionRule("next_attempt", _ALL_OPEN, None, fenced=True, summary="a resume attempt failed"),
        SessionRule("hand_over", _ALL_OPEN, None, fenced=True, summary="the pipeline accepted a resume"),
        SessionRule("release", _ALL_OPEN, None, fenced=True, versioned=False, summary="lease given back"),
        SessionRule(
            "abandon",
            _ALL_OPEN,
            SessionStatus.ABANDONED,
            fenced=True,
            summary="the worker gives up on a run, with the reason",
        ),
        SessionRule(
            "verdict",
            _ALL_OPEN,
            None,
            summary="the orchestrator's own verdict when it ends a run (T-Developer: >= 7 agents succeeded "
            "and < 3 errors): COMPLETED with its failed agents listed — FAILED -> COMPLETED only this way, "
            "e.g. assembly failed after seven successes — or FAILED with its errors",
        ),
    )
}

#: Legal status changes the pipeline may ask for (`sessions.update(status=...)`). FAILED -> COMPLETED is not
#: here on purpose: only the orchestrator's verdict (`SESSION_RULES["verdict"]`, `sessions.record_verdict`)
#: may end a stopped run COMPLETED.
SESSION_TRANSITIONS: dict[SessionStatus, frozenset[SessionStatus]] = {
    SessionStatus.ACTIVE: frozenset(
        {SessionStatus.ACTIVE, SessionStatus.COMPLETED, SessionStatus.FAILED, SessionStatus.ABANDONED}
    ),
    SessionStatus.FAILED: frozenset({SessionStatus.FAILED, SessionStatus.ACTIVE, SessionStatus.ABANDONED}),
    SessionStatus.COMPLETED: frozenset(),
    SessionStatus.ABANDONED: frozenset(),
}


def predecessors(target: SessionStatus) -> list[SessionStatus]:
    """Statuses from which `target` may be reached, in a stable order (for condition expressions)."""
    return sorted(s for s, allowed in SESSION_TRANSITIONS.items() if target in allowed)


def agent_sort_key(agent_name: str) -> str:
    """An agent item's stored sort key, `<key>#<agent>` with the agent's declared, never-changing key: a
    Query returns a run's agents in pipeline order, and inserting an agent moves no stored item."""
    return sort_key(agent_name)


def recovery_shard(session_id: str, status: SessionStatus) -> str:
    """The sparse recovery index's partition value for an open session (absent once it is final)."""
    return f"{status.value}#{zlib.crc32(session_id.encode()) % RECOVERY_INDEX_SHARDS}"


#: Agent items outlive their session by this much: a reader never finds a session whose agents expired, even
#: when the writers' clocks disagree by up to this. (Payload objects outlive it by PAYLOAD_GRACE_DAYS.)
AGENT_RETENTION_GRACE = timedelta(days=1)


def run_expiry(created: datetime, retention_days: int | None) -> int | None:
    """The run's expiry (`expires_at`, epoch seconds), fixed when the run is created: one retention rule per
    run. The session item expires then; its agent items and payload objects later (docs/data-model.md,
    "Retention"). None: kept for ever."""
    if not retention_days:
        return None
    return int((created + timedelta(days=retention_days)).timestamp())


def status_effects(
    expr: Expr,
    session_id: str,
    target: SessionStatus,
    *,
    now: datetime,
    retention_days: int | None,
    repeat: bool = False,
) -> None:
    """What reaching `target` does besides the status: open runs are in the recovery index, final runs
    leave it (a run stored before expiries were fixed at creation gets its expiry now); entering FAILED
    counts one more `fail_count` (not when the run was FAILED already: `repeat`), so how often runs failed
    is in the table for reports to check against."""
    expr.set("status", target.value)
    if target is SessionStatus.FAILED and not repeat:
        expr.increment("fail_count")
    if target in OPEN_STATUSES:
        expr.set("recovery_shard", recovery_shard(session_id, target))
    else:
        expr.remove("recovery_shard", "lease_owner", "lease_expires_at")
        expiry = run_expiry(now, retention_days)
        if expiry is not None:  # the run's expiry set at its creation stands; older runs get one now
            expr.set_default("expires_at", expiry)


def session_expr(kind: SessionKind) -> Expr:
    """The expression a session row starts from: the statuses it leaves, and the version bump when the row
    is versioned. The writer's store adds the row's own sets and conditions to it."""
    rule = SESSION_RULES[kind]
    expr = Expr()
    if rule.session_from:
        expr.require_in("status", [s.value for s in rule.session_from])
    if rule.versioned:
        expr.increment("version")
    return expr


def require_claim(expr: Expr, fencing_token: int, worker_id: str) -> None:
    """Condition a write on the claim still being this worker's (the fencing token has not moved on)."""
    expr.require_equal("fencing_token", fencing_token)
    expr.require_equal("lease_owner", worker_id)


def require_within_budget(expr: Expr, policy: RunPolicy, *, adding: int) -> None:
    """Condition: the run's tolerated failures, plus `adding`, stay within the policy's budget.

    Checked in the same transaction that ends the run, so the outcome never rests on a stale read; when it
    fails, the caller applies the FAILED outcome instead (`over_budget`).
    """
    alias = expr.n("failed_agents")
    expr.require(
        f"attribute_not_exists({alias}) OR size({alias}) <= {expr.v(policy.tolerated_failures - adding)}"
    )


def may_move_past(policy: RunPolicy, agent: str) -> bool:
    """May the run go on past a failure of `agent` (the failure then *tolerated*), or does that failure stop
    it (a critical agent: the session becomes FAILED)? The one place that turns the run policy's critical
    agents into what a failure does."""
    return not policy.is_critical(agent)


@dataclass(frozen=True)
class SessionEffect:
    """What an agent transition does to its session, as decided by `agent_session_effect`."""

    status: SessionStatus
    progress: int
    #: The agent before this one, FAILED, that this transition moves past (it joins failed_agents).
    moved_past: str | None = None
    #: The run ended with this transition (the last agent completed).
    finished: bool = False


def agent_session_effect(
    rule: AgentRule,
    agent: str,
    policy: RunPolicy,
    *,
    moved_past: str | None = None,
    over_budget: bool = False,
) -> SessionEffect:
    """The session status and progress after `rule` applies to `agent` (before any condition check).

    `over_budget`: the last agent completed but the run's tolerated failures exceed the policy's budget, so
    the run ends FAILED instead of COMPLETED.
    """
    step = AGENT_STEP[agent]
    last = step == len(AGENTS)
    if rule.kind == "complete":
        end = SessionStatus.FAILED if over_budget else SessionStatus.COMPLETED
        return SessionEffect(end if last else SessionStatus.ACTIVE, step, moved_past, finished=last)
    if rule.kind == "fail" and not may_move_past(policy, agent):
        return SessionEffect(SessionStatus.FAILED, step - 1, moved_past)
    return SessionEffect(SessionStatus.ACTIVE, step - 1, moved_past)


# --- what the transitions write, for IAM ------------------------------------------------------------------

#: Who applies a transition: the pipeline's client, or the recovery worker under its claim.
Writer = Literal["pipeline", "worker"]
#: (IAM item action, logical table name) of one part of a transition's write.
ItemAction = tuple[str, str]


def transition_actions() -> dict[tuple[Writer, str], frozenset[ItemAction]]:
    """Every item action each declared transition's write can use, on which table, by who applies it.

    Derived from the rows above: an agent row is one TransactWriteItems of an Update of the agent item and
    an Update of the session; a "next" row has a move-on variant that adds a ConditionCheck that the agent
    before is FAILED; a session row is an Update of the session (`create` a Put), and the pipeline's
    `set_status` has the variant that ends a run whose last agent failed, with the same ConditionCheck. A
    TransactWriteItems has no IAM action of its own: each part needs its item action on its table
    (`tdev_state.access`), which tests/unit/test_access.py holds the grants to.
    """
    executions, sessions = AGENT_EXECUTIONS.logical_name, PIPELINE_SESSIONS.logical_name
    found: dict[tuple[Writer, str], frozenset[ItemAction]] = {}
    for agent_rule in AGENT_RULES.values():
        actions = {("dynamodb:UpdateItem", executions), ("dynamodb:UpdateItem", sessions)}
        if agent_rule.progress == "next":
            actions.add(("dynamodb:ConditionCheckItem", executions))
        who: Writer = "worker" if agent_rule.fenced else "pipeline"
        found[(who, f"agent.{agent_rule.kind}")] = frozenset(actions)
    for session_rule in SESSION_RULES.values():
        by_worker = session_rule.fenced or session_rule.kind == "claim"
        item = "dynamodb:PutItem" if session_rule.kind == "create" else "dynamodb:UpdateItem"
        session_actions = {(item, sessions)}
        if session_rule.kind == "set_status":
            session_actions.add(("dynamodb:ConditionCheckItem", executions))
        found[("worker" if by_worker else "pipeline", f"session.{session_rule.kind}")] = frozenset(
            session_actions
        )
    return found
