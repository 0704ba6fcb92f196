"""What each page shows, gathered through the public client APIs (never a Scan), as plain view objects.

The templates only format these. Every list comes from an index: runs of a day from `by-day`, a user's runs
from `by-user`, the backlog from the sparse recovery index; filters the index key cannot express (status,
pipeline type) are applied after the read, page by page, so one request reads a bounded number of pages.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from tdev_state import (
    AGENTS,
    AgentExecution,
    AgentStatus,
    Page,
    PipelineType,
    RecoveryCandidate,
    RecoveryHistory,
    RecoveryPolicy,
    RunFilter,
    Session,
    SessionStatus,
    StateClient,
    ValidationError,
    Verdict,
)

#: Index pages one runs-list request may read to fill a page when filters drop runs (bounded cost).
MAX_INDEX_PAGES = 5


@dataclass(frozen=True)
class RunRow:
    """One run in a list."""

    session: Session
    state: str  # ACTIVE, stalled, FAILED, COMPLETED, COMPLETED*, ABANDONED: what the badge says
    tone: str  # the badge's CSS class


def as_candidate(session: Session, history: RecoveryHistory | None = None) -> RecoveryCandidate:
    """A session as the recovery rule reads a run (with its claim state, when `history` is given), with the
    window its last write declared (`live_for`): the page judges the run as the worker's sweep does."""
    claim: dict[str, Any] = {}
    if history is not None:
        claim = {
            "lease_expires_at": history.lease_expires_at,
            "lease_owner": history.lease_owner,
            "fencing_token": history.fencing_token,
            "resume_attempts": history.resume_attempts,
            "last_resumed_at": history.last_resumed_at,
        }
    return RecoveryCandidate(
        session_id=session.session_id,
        status=session.status,
        last_updated=session.last_updated,
        progress=session.progress,
        current_agent=session.current_agent,
        version=session.version,
        resume_count=session.resume_count,
        project_name=session.project_name,
        pipeline_type=session.pipeline_type.value,
        failed_agents=session.failed_agents,
        live_for=session.live_for,
        **claim,
    )


def run_state(session: Session, now: datetime, policy: RecoveryPolicy) -> tuple[str, str]:
    """The badge text and tone of a run: stalled (by the recovery rule) and tolerated failures are read off
    the run."""
    status = session.status
    if policy.stalled(session, now=now):  # the recovery policy's own "stalled", as the worker reads it
        return "stalled", "warn"
    if status is SessionStatus.COMPLETED and session.failed_agents:
        return f"COMPLETED ({len(session.failed_agents)} tolerated)", "ok-warn"
    return status.value, {
        SessionStatus.ACTIVE: "info",
        SessionStatus.COMPLETED: "ok",
        SessionStatus.FAILED: "bad",
        SessionStatus.ABANDONED: "muted",
    }[status]


@dataclass(frozen=True)
class RunsQuery:
    """The runs list's filters, as read (and checked) from the query string."""

    day: date | None = None
    status: RunFilter | None = None
    user: str | None = None
    pipeline_type: PipelineType | None = None
    cursor: str | None = None

    @classmethod
    def parse(cls, params: Any, today: date) -> RunsQuery:
        """From request query parameters; ValidationError (a 400 page) on a value that is not one."""

        def text(name: str) -> str | None:
            value = params.get(name)
            return value.strip() or None if isinstance(value, str) else None

        day_text, status_text, kind_text = text("day"), text("status"), text("type")
        try:
            day = date.fromisoformat(day_text) if day_text else None
        except ValueError:
            raise ValidationError(f"day {day_text!r:.40} is not a date: use YYYY-MM-DD") from None
        try:
            status = RunFilter(status_text) if status_text else None
        except ValueError:
            allowed = ", ".join(f.value for f in RunFilter)
            raise ValidationError(f"status {status_text!r:.40} is not one of {allowed}") from None
        try:
            kind = PipelineType(kind_text) if kind_text else None
        except ValueError:
            allowed = ", ".join(p.value for p in PipelineType)
            raise ValidationError(f"pipeline type {kind_text!r:.40} is not one of {allowed}") from None
        user = text("user")
        if day is None and user is None:
            day = today
        return cls(day=day, status=status, user=user, pipeline_type=kind, cursor=text("cursor"))

    def params(self, **changes: Any) -> dict[str, str]:
        """The query string of this query with `changes` (None drops a key): links and the next page."""
        values: dict[str, Any] = {
            "day": self.day.isoformat() if self.day else None,
            "status": self.status.value if self.status else None,
            "user": self.user,
            "type": self.pipeline_type.value if self.pipeline_type else None,
            "cursor": self.cursor,
        }
        values.update(changes)
        return {k: str(v) for k, v in values.items() if v is not None}


@dataclass
class RunsPage:
    """One page of the runs list."""

    rows: list[RunRow]
    next_cursor: str | None
    index: str  # which index was read
    index_pages: int  # how many pages of it this request read
    read: int  # runs read before the filters


def find_runs(
    client: StateClient,
    query: RunsQuery,
    *,
    limit: int,
    now: datetime,
    policy: RecoveryPolicy,
) -> RunsPage:
    """Newest first, from the by-user index when a user is given, else the by-day index."""

    def fetch(size: int, cursor: str | None) -> Page[Session]:
        if query.user is not None:
            return client.sessions.list_for_user(query.user, limit=size, cursor=cursor, load_metadata=False)
        assert query.day is not None
        return client.sessions.list_by_day(query.day, limit=size, cursor=cursor, load_metadata=False)

    def wanted(row: RunRow) -> bool:
        s = row.session
        if query.pipeline_type is not None and s.pipeline_type is not query.pipeline_type:
            return False
        if query.user is not None and query.day is not None and s.created_at.date() != query.day:
            return False
        # The one definition of each filter (tdev_state.RunFilter), as `tdev sessions list` reads it.
        return query.status is None or query.status.matches(s, now=now, policy=policy)

    rows: list[RunRow] = []
    cursor, pages, read = query.cursor, 0, 0
    while True:
        # Ask for no more than still fits: every match of this index page is kept, so the cursor after it
        # never skips a run.
        page = fetch(limit - len(rows), cursor)
        pages += 1
        read += len(page.items)
        for session in page.items:
            state, tone = run_state(session, now, policy)
            row = RunRow(session, state, tone)
            if wanted(row):
                rows.append(row)
        cursor = page.next_cursor
        if cursor is None or len(rows) >= limit or pages >= MAX_INDEX_PAGES:
            break
    rows.sort(key=lambda r: r.session.created_at, reverse=True)
    return RunsPage(
        rows=rows,
        next_cursor=cursor,
        index="by-user" if query.user is not None else "by-day",
        index_pages=pages,
        read=read,
    )


@dataclass(frozen=True)
class AgentRow:
    """One agent of a run, as the timeline shows it."""

    step: int
    agent: str
    execution: AgentExecution | None
    state: str  # PENDING, RUNNING, COMPLETED, FAILED (retried), FAILED (tolerated), FAILED (final)
    tone: str
    #: The bar on the run's time axis, in per cent of its width (None: never started).
    bar: tuple[float, float] | None

    @property
    def attempts(self) -> int:
        return 0 if self.execution is None else self.execution.retry_count + 1


@dataclass
class RunView:
    """One run: the session, its agents (in pipeline order) and its recovery history."""

    session: Session
    state: str
    tone: str
    agents: list[AgentRow]
    history: RecoveryHistory
    started: datetime
    span_seconds: float
    #: The recovery rule's verdict now: Resume now / Abandon are offered only when it says claimable.
    verdict: Verdict


def run_view(
    client: StateClient,
    session_id: str,
    *,
    now: datetime,
    policy: RecoveryPolicy,
) -> RunView:
    """Three reads: the session (GetItem), its agents (one Query, payloads left in place) and the claim
    history (GetItem); SessionNotFoundError (a 404 page) when there is no such run."""
    session = client.sessions.get(session_id, strict=False)
    executions = {e.agent_name: e for e in client.executions.list(session.session_id, load_payloads=False)}
    history = client.sessions.recovery_history(session.session_id)
    started = session.created_at
    ends = [e.end_time or e.start_time for e in executions.values() if e.start_time]
    last = max([session.last_updated, *[t for t in ends if t]])
    span = max((last - started).total_seconds(), 1e-6)
    tolerated = set(session.failed_agents)
    rows = []
    for step, agent in enumerate(AGENTS, start=1):
        execution = executions.get(agent)
        if execution is None:
            rows.append(AgentRow(step, agent, None, "PENDING", "muted", None))
            continue
        status = execution.status
        if status is AgentStatus.FAILED:
            final = agent in tolerated or session.status is not SessionStatus.ACTIVE
            kind = "tolerated" if agent in tolerated else ("final" if final else "retryable")
            state, tone = f"FAILED ({kind})", "warn" if agent in tolerated else "bad"
        else:
            state = status.value
            tone = {"COMPLETED": "ok", "RUNNING": "info"}.get(status.value, "muted")
        bar = None
        if execution.start_time is not None:
            begin = (execution.start_time - started).total_seconds() / span * 100
            end = ((execution.end_time or now) - started).total_seconds() / span * 100
            begin = min(max(begin, 0.0), 100.0)
            bar = (begin, max(min(end, 100.0) - begin, 0.4))
        rows.append(AgentRow(step, agent, execution, state, tone, bar))
    state, tone = run_state(session, now, policy)
    return RunView(
        session=session,
        state=state,
        tone=tone,
        agents=rows,
        history=history,
        started=started,
        span_seconds=span,
        verdict=policy.judge(as_candidate(session, history), now=now),
    )


@dataclass(frozen=True)
class BacklogRow:
    """A run recovery would take: FAILED, or ACTIVE and stalled by the recovery rule."""

    run: RecoveryCandidate
    kind: str  # "FAILED" or "stalled"
    idle: timedelta
    leased_by: str | None  # a live lease's owner: actions would be refused until it expires
    #: The recovery rule's verdict now: the actions are offered only when it says claimable.
    verdict: Verdict


def backlog(client: StateClient, *, now: datetime, policy: RecoveryPolicy, limit: int) -> list[BacklogRow]:
    """Every FAILED run (any age: an operator sees it before the worker's retry delay) and every ACTIVE run
    the rule says is stalled, oldest first, from the sparse recovery index and one BatchGetItem per kind."""
    # The one definition of the backlog: what the worker's gauge and `tdev backlog list` count too.
    found = client.sessions.backlog(policy=policy, now=now, limit=limit)
    return [
        BacklogRow(
            run=c,
            kind="FAILED" if c.status is SessionStatus.FAILED else "stalled",
            idle=now - c.last_updated,
            leased_by=c.lease_owner if c.lease_expires_at and c.lease_expires_at > now else None,
            verdict=policy.judge(c, now=now),
        )
        for c in found
    ]
