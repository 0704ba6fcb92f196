"""Which runs `tdev sessions list` shows: the indexes it reads (never a Scan) and the filters it applies.

The filters are the console's (`RunFilter`), judged by the recovery worker's own rule (`RecoveryPolicy`)
with the stall threshold from the same setting the worker, the console and `tdev backlog` read
($TDEV_STALL_THRESHOLD): a run the console badges "stalled" is listed under STALLED here, and the backlog
lists it too. The command (`cli.py`) prints; this module only reads.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from datetime import date, datetime, timedelta

from tdev_state.client import StateClient
from tdev_state.command import CommandLineError
from tdev_state.dates import DateRange, parse_duration
from tdev_state.exceptions import MalformedItemError, SessionNotFoundError, ValidationError
from tdev_state.models import Page, RunPolicy, Session
from tdev_state.runs.policy import ListedRun, RecoveryPolicy, RunFilter

#: Filters whose runs are open (ACTIVE or FAILED): listed from the sparse recovery index, of any age.
OPEN = (RunFilter.ACTIVE, RunFilter.STALLED, RunFilter.FAILED)

#: The variable the recovery worker, the console and `tdev backlog` read their stall threshold from.
STALL_VARIABLE = "TDEV_STALL_THRESHOLD"


def run_filter(text: str) -> RunFilter:
    """An argparse type: a RunFilter by its value, any case (`stalled`, `TOLERATED`)."""
    try:
        return RunFilter(text.strip().upper())
    except ValueError:
        names = ", ".join(f.value for f in RunFilter)
        raise argparse.ArgumentTypeError(f"{text!r:.40} is not one of {names}") from None


def recovery_policy(threshold: timedelta | None, run_policy: RunPolicy) -> RecoveryPolicy:
    """The worker's rule with its stall threshold: the flag, else $TDEV_STALL_THRESHOLD (seconds or a
    duration, as the worker and `tdev backlog` read it); 0 or unset: each run's own declared window."""
    if threshold is None:
        raw = os.environ.get(STALL_VARIABLE, "").strip()
        try:
            threshold = parse_duration(raw) if raw else None
        except ValidationError as exc:
            raise CommandLineError(
                f"${STALL_VARIABLE}: {exc} (also settable with --stall-threshold)"
            ) from None
    return RecoveryPolicy(run_policy=run_policy, stall_threshold=threshold or None)


def state_of(run: ListedRun, *, now: datetime, policy: RecoveryPolicy) -> RunFilter | None:
    """The filter a run falls under now (they partition the runs; None only for a status none names)."""
    return next((f for f in RunFilter if f.matches(run, now=now, policy=policy)), None)


def _keep(
    wanted: RunFilter | None, span: DateRange | None, now: datetime, policy: RecoveryPolicy
) -> Callable[[Session], bool]:
    def keep(session: Session) -> bool:
        if span is not None and not span.contains(session.created_at):
            return False
        return wanted is None or wanted.matches(session, now=now, policy=policy)

    return keep


#: The largest page of the recovery index one listing reads (validate.limit's bound).
MAX_OPEN_PAGE = 1000

#: Index pages one read (a user's runs, one day's) may take to fill the listing when the filters drop runs:
#: a rare filter over a user with thousands of runs costs a bounded read, not all of them.
MAX_INDEX_PAGES = 20


def _collect(
    fetch: Callable[[int, str | None], Page[Session]], keep: Callable[[Session], bool], limit: int
) -> list[Session]:
    """Pages of one index read until `limit` runs pass `keep`, the index ends, or MAX_INDEX_PAGES."""
    found: list[Session] = []
    cursor: str | None = None
    for _ in range(MAX_INDEX_PAGES):
        page = fetch(limit - len(found), cursor)
        found.extend(s for s in page.items if keep(s))
        cursor = page.next_cursor
        if cursor is None or len(found) >= limit:
            break
    return found[:limit]


def runs_of_user(
    client: StateClient,
    user: str,
    wanted: RunFilter | None,
    span: DateRange | None,
    limit: int,
    *,
    now: datetime,
    policy: RecoveryPolicy,
) -> list[Session]:
    """A user's runs, newest first, from the by-user index (filtered after the read, page by page)."""
    keep = _keep(wanted, span, now, policy)

    def fetch(size: int, cursor: str | None) -> Page[Session]:
        return client.sessions.list_for_user(user, limit=size, cursor=cursor, load_metadata=False)

    return _collect(fetch, keep, limit)


def open_runs(
    client: StateClient, wanted: RunFilter, limit: int, *, now: datetime, policy: RecoveryPolicy
) -> list[Session]:
    """Open runs under one filter from the sparse recovery index (never a Scan), of any age. STALLED asks
    the index for the runs the rule says are stalled (as the worker's sweep and the backlog do), and each
    candidate is judged with the window its last write declared."""
    # ACTIVE reads live and stalled runs alike, oldest first: the stalled ones (silent longest) would fill
    # a page of `limit` and leave the live ones out, so it reads the index's largest page and keeps `limit`.
    found = client.sessions.recovery_candidates(
        failed_idle=timedelta(0) if wanted is RunFilter.FAILED else None,
        stalled_idle=None if wanted is RunFilter.FAILED else timedelta(0),
        limit=MAX_OPEN_PAGE if wanted is RunFilter.ACTIVE else limit,
        now=now,
        policy=policy,
        live=wanted is not RunFilter.STALLED,
    )
    sessions: list[Session] = []
    for candidate in found:
        if len(sessions) >= limit:
            break
        if not wanted.matches(candidate, now=now, policy=policy):
            continue
        try:
            sessions.append(client.sessions.get(candidate.session_id))
        except (MalformedItemError, SessionNotFoundError):
            continue  # unreadable (logged by the library) or gone since the sweep: the others are listed
    return sessions


def runs_by_day(
    client: StateClient,
    span: DateRange,
    wanted: RunFilter | None,
    limit: int,
    *,
    now: datetime,
    policy: RecoveryPolicy,
) -> list[Session]:
    """Runs started inside `span`, newest day first, from the by-day index (one Query per day touched,
    asking the stored status the filter selects)."""
    keep = _keep(wanted, span, now, policy)
    stored = wanted.stored.value if wanted is not None else None
    found: list[Session] = []
    for day in reversed(span.days()):

        def fetch(size: int, cursor: str | None, day: date = day) -> Page[Session]:
            return client.sessions.list_by_day(
                day, status=stored, limit=size, cursor=cursor, load_metadata=False
            )

        found.extend(_collect(fetch, keep, limit - len(found)))
        if len(found) >= limit:
            break
    return found
