"""A run's event log, derived from what the transitions already store: no item and no request of its own.

The sequence number is the session's `version`, which every versioned transition bumps by one (creation
sets 1; heartbeats, lease extensions and releases do not bump it and are not events). Each transition leaves
one small entry saying what it was, in the write it already makes:

- an agent transition (start, retry, complete, fail, interrupt) appends `"seq|kind|at|…"` to its agent
  item's `ev` list. The seq is the version the transition makes: the writer knows the run's version (it
  conditions the session half of the transaction on it, `TransitionWriter.known_version`), so the stamp is
  exact;
- every other versioned write (the pipeline's status updates, the verdict, a claim, a failed resume
  attempt, a hand-over, an abandon) is a single update of the session item, which appends `{k, at, …}` to
  the session's `run_log` (`"kind|at|…"`).

A reader derives the events from ONE GetItem of the session and ONE Query of the run's agent items: the agent
entries name their seq; the seqs in 2..version they do not name are the session-level transitions, in the
order `run_log` holds them (both are written in version order, so the entries fill the last gaps: a run
stored before the log has older seqs with no entry, shown as bare `transition`s). Only seqs
up to the session's version as read are given out: an agent transition that lands between the two reads is
left for the next read, never shown before the transitions that precede it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from tdev_state.layer import DynamoLayer
from tdev_state.models import (
    AGENT_STEP,
    AgentStatus,
    RunEvent,
    RunEvents,
    SessionStatus,
    epoch,
    from_epoch,
)
from tdev_state.runs.refs import is_ref_item
from tdev_state.storage import Expr, Item

#: The agent item's list of its transitions (seq-stamped).
AGENT_LOG = "ev"
#: The session item's list of its own versioned transitions (in version order).
RUN_LOG = "run_log"
#: Characters of an error kept in an event entry (the agent item keeps the full message separately).
EVENT_ERROR_CHARS = 200

#: An agent rule's kind -> the one-letter code stored in its entry (entries are rewritten with the agent item
#: on each of its transactions: every byte counts twice).
_AGENT_CODES = {"start": "s", "retry": "r", "complete": "c", "fail": "f", "interrupt": "i"}
_AGENT_KINDS = {
    "s": ("agent_started", AgentStatus.RUNNING),
    "r": ("agent_retried", AgentStatus.RUNNING),
    "c": ("agent_completed", AgentStatus.COMPLETED),
    "f": ("agent_failed", AgentStatus.FAILED),
    "i": ("agent_interrupted", AgentStatus.FAILED),
}
#: A session-level transition -> its one-letter code in `run_log`, and the code -> the event's kind.
_RUN_CODES = {
    "status": "u",
    "verdict": "v",
    "claimed": "c",
    "attempt_failed": "a",
    "resumed": "r",
    "abandoned": "x",
}
_RUN_KINDS = {
    "u": "run_updated",
    "v": "run_finished",
    "c": "claimed",
    "a": "resume_attempt_failed",
    "r": "resumed",
    "x": "abandoned",
}
_ENDED = frozenset({SessionStatus.COMPLETED.value, SessionStatus.ABANDONED.value})


def agent_entry(  # noqa: PLR0917 - one entry's fields
    seq: int,
    kind: str,
    moment: datetime,
    run_status: SessionStatus,
    error: str | None = None,
    output_bytes: int | None = None,
    tolerated: str | None = None,
) -> str:
    """The `ev` entry of one agent transition: one string, `seq|kind|at|run status|output bytes|tolerated
    agent|error` (empty fields where absent; the error last, so it may hold `|`). About 25 bytes; an error
    adds at most 200 characters. A string, not a map: fewer bytes, and one attribute value to marshal."""
    fields = [
        str(seq),
        _AGENT_CODES[kind],
        str(epoch(moment)),
        run_status.value if run_status is not SessionStatus.ACTIVE else "",
        str(output_bytes) if output_bytes is not None else "",
        tolerated or "",
        (error or "")[:EVENT_ERROR_CHARS],
    ]
    return "|".join(fields).rstrip("|")


def log_run_event(  # noqa: PLR0917 - one entry's fields
    expr: Expr,
    kind: str,
    moment: datetime,
    status: str | None = None,
    token: int | None = None,
    attempt: int | None = None,
    error: str | None = None,
) -> Expr:
    """Append one session-level transition to `run_log`, in the versioned write that makes it: one string,
    `kind|at|status|fencing token|attempt|error` (the session item is rewritten by every transition of its
    run, so its entries are kept as short as the agents')."""
    fields = [
        _RUN_CODES[kind],
        str(epoch(moment)),
        status or "",
        str(token) if token is not None else "",
        str(attempt) if attempt is not None else "",
        (error or "")[:EVENT_ERROR_CHARS],
    ]
    return expr.append(RUN_LOG, ["|".join(fields).rstrip("|")])


def read_events(layer: DynamoLayer, run_id: str, after: int = 0) -> RunEvents | None:
    """The run's events after `after`: one consistent GetItem, plus one consistent Query of the agent items
    only when the run has moved past `after`. None when the run does not exist."""
    session = layer.get(layer.tables.sessions, {"session_id": run_id})
    if session is None or is_ref_item(session):  # a ref's own item is not a run
        return None
    seq = _whole(session.get("version"), 0)
    agents: list[Item] = []
    if seq > after:
        agents = list(
            layer.query_all(
                layer.tables.executions,
                key_condition="execution_id = :id",
                values={":id": run_id},
                consistent=True,
            )
        )
    status = str(session.get("status", ""))
    events = tuple(e for e in derive_events(session, agents) if e.seq > after)
    return RunEvents(run_id=run_id, seq=seq, status=status, ended=status in _ENDED, events=events)


def derive_events(session: Item, agents: Iterable[Item]) -> list[RunEvent]:
    """Every event of a run up to its session's version, in seq order (see the module's docstring).

    Never raises on an odd item: an unreadable entry is skipped and its seq shown as a bare `transition`,
    so a stream never stops on one bad attribute."""
    run_id = str(session.get("session_id", ""))
    seq = _whole(session.get("version"), 0)
    found: dict[int, RunEvent] = {}
    if seq >= 1:
        found[1] = RunEvent(
            run_id, 1, "run_opened", _moment(session.get("created_at")), status=SessionStatus.ACTIVE.value
        )
    for item in sorted(agents, key=lambda i: str(i.get("agent_name", ""))):
        for event in _agent_events(run_id, item):
            if 1 < event.seq <= seq:
                found[event.seq] = event
    gaps = [n for n in range(2, seq + 1) if n not in found]
    entries = [str(e) for e in session.get(RUN_LOG) or ()]
    # The entries are the LAST gaps: a run stored before the log (in flight at the upgrade) has older seqs
    # with no entry, and its new transitions must keep their own kinds (the verdict at its own seq).
    unlogged = len(gaps) - len(entries)
    for i, n in enumerate(gaps):
        found[n] = _run_event(run_id, n, entries[i - unlogged] if i >= unlogged else None)
    return [found[n] for n in sorted(found)]


def _agent_events(run_id: str, item: Item) -> list[RunEvent]:
    agent = str(item.get("agent", "")) or None
    if agent not in AGENT_STEP:
        return []
    events, attempt, began = [], 0, None
    for entry in item.get(AGENT_LOG) or ():
        fields = (str(entry).split("|", 6) + [""] * 7)[:7]
        seq, code, when, run_status, output, tolerated, error = fields
        if code not in _AGENT_KINDS or not seq.isdigit():
            continue
        kind, status = _AGENT_KINDS[code]
        at = _moment(when or None)
        seconds = None
        if kind in ("agent_started", "agent_retried"):
            attempt, began = attempt + 1, at
        elif began is not None and at is not None:
            seconds = max(0.0, (at - began).total_seconds())
        events.append(
            RunEvent(
                run_id,
                int(seq),
                kind,
                at,
                agent=agent,
                attempt=max(attempt, 1),
                status=status.value,
                run_status=run_status or None,
                error=error or None,
                seconds=seconds,
                output_bytes=int(output) if output.isdigit() else None,
                tolerated=tolerated or None,
            )
        )
    return events


def _run_event(run_id: str, seq: int, entry: str | None) -> RunEvent:
    code, when, status, token, attempt, error = ((entry or "").split("|", 5) + [""] * 6)[:6]
    if code not in _RUN_KINDS:
        return RunEvent(run_id, seq, "transition", None)
    kind = _RUN_KINDS[code]
    if kind == "run_updated" and status and status != SessionStatus.ACTIVE.value:
        kind = "run_finished"  # the pipeline itself set the run's end (or its failure)
    if kind == "abandoned":
        status = SessionStatus.ABANDONED.value
    return RunEvent(
        run_id,
        seq,
        kind,
        _moment(when or None),
        status=status or None,
        run_status=status if kind in ("run_finished", "abandoned") else None,
        error=error or None,
        fencing_token=int(token) if token.isdigit() else None,
        attempt=int(attempt) if attempt.isdigit() else None,
    )


def _whole(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _moment(value: Any) -> datetime | None:
    try:
        return from_epoch(value) if value is not None else None
    except (TypeError, ValueError, ArithmeticError):
        return None
