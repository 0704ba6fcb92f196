"""How `tdev backlog` writes: durations read and printed, moments in three styles, the backlog table and
one line per action. Plain text (no colour, no rich), full ids, stored text through `command.printable`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from tdev_recovery.backlog import RESUME, ActionResult, BacklogEntry
from tdev_state import RecoveryPolicy, command, dates
from tdev_state.models import epoch_float

TIME_FORMATS = ("relative", "iso", "epoch")

#: Durations are read as every command reads them (90s, 30m, 2h, 1d): the platform's one parser.
duration = dates.duration


def human(delta: timedelta) -> str:
    """A duration people read at a glance: 45s, 12m, 2h05m, 3d04h."""
    seconds = int(delta.total_seconds())
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def moment_text(moment: datetime, now: datetime, style: str) -> str:
    if style == "epoch":
        return f"{epoch_float(moment):.3f}"
    if style == "iso":
        return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return f"{human(max(timedelta(0), now - moment))} ago"


def rule_text(policy: RecoveryPolicy) -> str:
    if policy.stall_threshold is not None:
        threshold = human(policy.stall_threshold)
        return f"stalled = ACTIVE and silent for {threshold}+ (the worker's stall threshold)"
    return "stalled = ACTIVE and silent past its agent's declared window (the worker's rule)"


def lease_text(row: BacklogEntry, now: datetime, style: str) -> str:
    if row.lease_holder is None or row.run.lease_expires_at is None:
        return "-"
    until = row.run.lease_expires_at
    when = f"{human(until - now)} left" if style == "relative" else moment_text(until, now, style)
    return f"{command.printable(row.lease_holder)} ({when})"


def table_lines(rows: Sequence[BacklogEntry], now: datetime, style: str) -> list[str]:
    """Plain aligned columns: full ids, nothing cut, greppable and pasteable (no colour, no rich). The
    command prints them; this module only builds text."""
    header = ("STATE", "SESSION ID", "IDLE", "LAST UPDATE", "AGENT", "ATTEMPTS", "RESUMES", "LEASE", "ACTION")
    lines = [
        (
            row.state,
            command.printable(row.session_id),
            human(row.idle),
            moment_text(row.run.last_updated, now, style),
            command.printable(row.run.current_agent or "-"),
            str(row.run.resume_attempts),
            str(row.run.resume_count),
            lease_text(row, now, style),
            "ready" if row.verdict.claimable else f"refused: {command.printable(row.verdict.reason)}",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header) - 1)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)) + "  " + line[-1]
        for line in [header, *lines]
    ]


_FORCE_HINT = re.compile(r"; pass force=True to (\w+) it anyway")


def action_line(result: ActionResult, *, batch: bool = False) -> str:
    row = result.entry
    sid = command.printable(row.session_id)
    what = f"{row.state} at {command.printable(row.run.current_agent or '-')}, idle {human(row.idle)}"
    if result.dry_run:
        if result.ok:
            return f"would {result.action} {sid} ({what})"
        return f"would refuse {sid}: {command.printable(result.reason)}"
    if result.ok:
        return f"{result.outcome} {sid} ({what}; fencing token {result.fencing_token})"
    # The plan's refusal names its Python argument. Here that is --force, and only for one named run no
    # worker's lease holds (a batch never forces; a lease is never forced).
    forceable = not batch and row.lease_holder is None
    why = _FORCE_HINT.sub(r"; pass --force to \1 it anyway" if forceable else "", result.reason or "")
    return f"refused {sid}: {command.printable(why)}"


def batch_json(action: str, dry_run: bool, results: list[ActionResult]) -> dict[str, Any]:
    ok = sum(1 for r in results if r.ok)
    return {
        "action": action,
        "dry_run": dry_run,
        "results": [r.to_json() for r in results],
        "summary": {"selected": len(results), "ok": ok, "refused": len(results) - ok},
    }


def summary(action: str, dry_run: bool, results: list[ActionResult]) -> str:
    ok = sum(1 for r in results if r.ok)
    past = "resumed" if action == RESUME else "abandoned"
    if dry_run:
        return (
            f"dry run, nothing written: {len(results)} run(s); {ok} would be {past}, "
            f"{len(results) - ok} would be refused"
        )
    return f"{len(results)} run(s): {ok} {past}, {len(results) - ok} refused"
