"""The demo's fork: one completed run forked from `ui_selection` with `framework=vue`, run through the resume
path, and its per-agent diff against the parent (docs/fork.md).

Runs in the demo's own process once every planned run is final, while the pipeline's resume endpoint still
serves: the fork is `sessions.fork`, the start is `resume_pipeline` with the demo's HTTP resumer (the fenced
claim, then the pipeline's resume route, as for a failed run), and the endpoint runs the child's agents from
the fork point on with the override in `ui_selection`'s input. Its checks join the demo's invariants.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tdev_recovery import RecoveryError, resume_pipeline
from tdev_recovery.resumers import load_resumer
from tdev_state import AGENTS, AgentStatus, SessionStatus, StateClient
from tdev_state.diff import RunDiff, diff_runs

FORK_POINT = "ui_selection"
OVERRIDES = {"framework": "vue"}
#: The child runs 8 agents of a few tenths of a second each; this bounds the wait, it is not a sleep.
DEADLINE_SECONDS = 60.0


def pick_parent(client: StateClient, plans: list[dict[str, Any]]) -> str | None:
    """A COMPLETED run with no planned failure: its diff then shows only what the override changed."""
    for plan in plans:
        if plan["fail_at"] or plan["tolerated"] or plan["doomed"]:
            continue
        if client.sessions.get(plan["session_id"], strict=False).status is SessionStatus.COMPLETED:
            return str(plan["session_id"])
    return None


def fork_and_diff(
    client: StateClient, plans: list[dict[str, Any]], resume_url: str
) -> tuple[list[str], list[str], str | None]:
    """Fork one completed run from ui_selection with the override, start it, wait for it, diff it.
    Returns (lines to print, failed checks, the child's id)."""
    parent = pick_parent(client, plans)
    if parent is None:
        return ["fork: no COMPLETED run without a planned failure to fork"], [], None
    started = time.monotonic()
    child = client.sessions.fork(parent, from_agent=FORK_POINT, overrides=OVERRIDES)
    sid = child.session_id
    try:
        result = asyncio.run(resume_pipeline(sid, resumer=load_resumer(resume_url), client=client))
        how = f"started here ({result['outcome']}, fencing token {result['fencing_token']})"
    except RecoveryError as exc:  # the child is due at once: a worker's sweep may have started it first
        how = f"started by a recovery worker's sweep ({type(exc).__name__})"
    deadline = time.monotonic() + DEADLINE_SECONDS
    session = client.sessions.get(sid, strict=False)
    while session.status is not SessionStatus.COMPLETED and time.monotonic() < deadline:
        time.sleep(0.2)
        session = client.sessions.get(sid, strict=False)
    seconds = time.monotonic() - started
    diff = diff_runs(client, parent, sid)
    skipped = AGENTS[: AGENTS.index(FORK_POINT)]
    saved = sum(
        e.duration_seconds or 0.0
        for e in client.executions.list(parent, load_payloads=False)
        if e.agent_name in skipped and e.status is AgentStatus.COMPLETED
    )
    lines = [
        f"fork: {sid} from {parent} at {FORK_POINT} with {OVERRIDES}: {how}, {session.status.value} after "
        f"{seconds:.1f}s; agent seconds not spent again (the parent's stored {', '.join(skipped)}): "
        f"{saved:.2f}s",
        *(f"  {line}" for line in diff_lines(diff)),
    ]
    return lines, check_fork(client, parent, sid, session.status, diff), sid


def diff_lines(diff: RunDiff) -> list[str]:
    """One line per agent of the diff: same, or how it differs (statuses, the first paths)."""
    lines = []
    for d in diff.agents:
        status = d.status_a if d.status_a == d.status_b else f"{d.status_a} -> {d.status_b}"
        if d.same_output:
            lines.append(f"{d.agent:<19} {status:<9} same output")
            continue
        shown = ", ".join(
            f"{p.path}: {p.a} -> {p.b}" if len(p.a) + len(p.b) < 40 else p.path for p in d.paths[:3]
        )
        more = len(d.paths) - 3 + d.more_paths
        lines.append(
            f"{d.agent:<19} {status:<9} differs at {shown}" + (f" (+{more} more)" if more > 0 else "")
        )
    return lines


def check_fork(
    client: StateClient, parent: str, child: str, status: SessionStatus, diff: RunDiff
) -> list[str]:
    """The fork's invariants: the child COMPLETED, its lineage names the parent (and the parent the child),
    the agents before the fork point are the parent's (same output), and generation made Vue — the
    override reached the agents after the fork point through the resume path."""
    failures = []
    if status is not SessionStatus.COMPLETED:
        failures.append(f"fork {child}: ended {status.value}, expected COMPLETED")
    lineage = client.sessions.lineage(child)
    if (lineage.parent_id, lineage.fork_point, lineage.replay) != (parent, FORK_POINT, False):
        failures.append(f"fork {child}: lineage {lineage}, expected parent {parent} at {FORK_POINT}")
    if child not in [c.run_id for c in client.sessions.lineage(parent).children]:
        failures.append(f"fork {child}: not among the children of {parent}")
    by_agent = {d.agent: d for d in diff.agents}
    kept = AGENTS[: AGENTS.index(FORK_POINT)]
    if [a for a in kept if not by_agent[a].same_output] or set(kept) & set(diff.differing):
        failures.append(
            f"fork {child}: agents before {FORK_POINT} differ from the parent's: {diff.differing}"
        )
    framework = [p for p in by_agent["generation"].paths if p.path == "$.framework"]
    if not framework or framework[0].b != '"vue"':
        failures.append(f"fork {child}: generation's framework is not vue ({framework})")
    return failures
