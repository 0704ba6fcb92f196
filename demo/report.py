"""The demo's HTML report: run timelines, recoveries, response times and error rates, write units."""

from __future__ import annotations

import base64
import html
import io
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from demo.live import LiveRun, live_section
from tdev_metrics import MetricsReader
from tdev_metrics.cli import render_png
from tdev_state import AGENTS, PIPELINE, StateClient

WRU_USD = 0.625e-6


def agent_colors() -> dict[str, str]:
    """One colour per agent, the same in every chart: the agent's declared colour (tdev_state.agents)."""
    return {a.name: a.color for a in PIPELINE}


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def timeline_png(plans: list[dict[str, Any]], events: list[dict[str, Any]], killed: list[int]) -> str:
    """One row per run; a bar per agent attempt in the agent's colour (cross-hatched with a dark edge when
    it failed); black ticks where a resume was accepted."""
    t0 = min(e["t"] for e in events)
    rows = {p["session_id"]: i for i, p in enumerate(plans)}
    labels = [p["session_id"].split("-")[-1] for p in plans]
    for e in events:  # runs not planned: the demo's fork (demo/fork.py), a row of its own at the bottom
        if "sid" in e and e["sid"] not in rows:
            rows[e["sid"]] = len(rows)
            labels.append(f"fork {e['sid'][:8]}")
    colors = agent_colors()
    fig, ax = plt.subplots(figsize=(12, max(4, len(rows) * 0.28 + 1.2)))
    open_attempts: dict[tuple[str, str, int], dict[str, Any]] = {}
    for e in sorted(events, key=lambda e: e["t"]):
        if e["event"] == "start":
            open_attempts[(e["sid"], e["agent"], e["pid"])] = e
        elif e["event"] in ("complete", "fail"):
            start = open_attempts.pop((e["sid"], e["agent"], e["pid"]), None)
            if start:
                failed = e["event"] == "fail"
                ax.barh(
                    rows[e["sid"]],
                    e["t"] - start["t"],
                    left=start["t"] - t0,
                    color=colors[e["agent"]],
                    height=0.7,
                    hatch="xxx" if failed else None,
                    edgecolor="black" if failed else "white",
                    linewidth=1.2 if failed else 0.5,
                )
        elif e["event"] == "resume_accepted":
            ax.plot([e["t"] - t0] * 2, [rows[e["sid"]] - 0.45, rows[e["sid"]] + 0.45], color="black", lw=2)
    for (sid, _agent, _pid), start in open_attempts.items():  # attempts cut off by a SIGKILL
        ax.barh(
            rows[sid], 0.3, left=start["t"] - t0, color="white", edgecolor="black", hatch="//", height=0.7
        )
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the demo started")
    ax.set_title(
        "Run timelines — bars: agent attempts (cross-hatched: failed; white hatched: cut by SIGKILL); "
        "black: resume",
        fontsize=10,
    )
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[a]) for a in AGENTS]
    handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="black", hatch="xxx"))
    ax.legend(handles, [*AGENTS, "failed attempt"], fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return _png(fig)


def write_report(  # noqa: PLR0917 - the demo's one call site passes everything it gathered
    out: Path,
    client: StateClient,
    reader: MetricsReader,
    plans: list[dict[str, Any]],
    events: list[dict[str, Any]],
    killed: list[int],
    elapsed: float,
    *,
    usage: dict[str, Any] | None = None,
    live: LiveRun | None = None,
) -> Path:
    sessions = {p["session_id"]: client.sessions.get(p["session_id"]) for p in plans}
    status = Counter(s.status.value for s in sessions.values())
    today = datetime.now(UTC).date()
    hourly = reader.hourly("agent_execution_time", start=today)
    metrics_png = ""
    if hourly:
        buffer = io.BytesIO()
        render_png(hourly, buffer, "agent_execution_time", colors=agent_colors())
        metrics_png = base64.b64encode(buffer.getvalue()).decode()
    # One row per resume: a repeat of a timed-out request (same run, same token) is the same resume.
    resumes = list({(e["sid"], e["token"]): e for e in events if e["event"] == "resume_accepted"}.values())
    meters = [e["meter"] for e in events if e["event"] == "meter"]
    write_units = sum(m["write_units"] for m in meters)
    completed_by_metered = len(
        {e["sid"] for e in events if e["event"] == "run_completed" and e["pid"] not in killed}
    )
    per_run = write_units / completed_by_metered if completed_by_metered else 0.0
    by_agent: dict[str, list[float]] = defaultdict(list)
    errors: Counter[str] = Counter()
    for e in events:
        if e["event"] == "complete":
            by_agent[e["agent"]].append(e["duration"])
        elif e["event"] == "fail":
            errors[e["agent"]] += 1

    final_status = ", ".join(f"{k} {v}" for k, v in sorted(status.items()))

    def row(*cells: Any) -> str:
        return "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"

    # A fork's start goes through the resume route too (demo/fork.py): its row names it as a fork.
    recovery_rows = "".join(
        row(
            e["sid"] if e["sid"] in sessions else f"{e['sid']} (fork)",
            e["token"],
            e["next_agent"],
            len(e["completed"]),
            (sessions.get(e["sid"]) or client.sessions.get(e["sid"])).status.value,
        )
        for e in resumes
    )
    agent_rows = "".join(
        row(
            a,
            len(by_agent[a]),
            f"{sum(by_agent[a]) / len(by_agent[a]):.3f}" if by_agent[a] else "-",
            errors[a],
        )
        for a in AGENTS
    )
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>T-Developer demo</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}h2{{margin-top:1.5em}}</style></head><body>
<h1>T-Developer state platform — demo report</h1>
<p>{len(plans)} runs in {elapsed:.0f} s; final status: {final_status};
{len(killed)} pipeline processes SIGKILLed mid-run; {len(resumes)} resumes accepted by the pipeline.</p>
<h2>Write units</h2>
<p>{write_units:.0f} write units reported by the processes that exited normally, for the
{completed_by_metered} runs they completed: <b>{per_run:.1f} write units per run</b>
(≈ ${per_run * WRU_USD * 1e6:.2f} per million runs on demand). Killed processes could not report theirs.</p>
<h2>Run timelines</h2><img src="data:image/png;base64,{timeline_png(plans, events, killed)}" width="100%">
<h2>Recoveries</h2><table><tr><th>session</th><th>fencing token</th><th>resumed at</th>
<th>agents already done</th><th>final</th></tr>{recovery_rows}</table>
<h2>Response time and error rate per agent per hour</h2>
<p>From the metrics table (what <code>tdev-metrics report</code> reads): the hourly average is over every
recorded attempt, failed ones included.</p>
{f'<img src="data:image/png;base64,{metrics_png}" width="100%">' if hourly else "<p>no metrics</p>"}
<p>From the pipeline processes' own event log: the mean is over <b>completed attempts only</b> (failed
attempts excluded; they are counted in the last column).</p>
<table><tr><th>agent</th><th>completed attempts</th><th>mean seconds of completed attempts</th>
<th>failed attempts</th></tr>
{agent_rows}</table>
{live_section(live)}
{_usage_section(usage)}
</body></html>"""
    path = out / "index.html"
    path.write_text(doc)
    return path


def _usage_section(usage: dict[str, Any] | None) -> str:
    """Today's usage report in this env (`tdev usage report`): its four charts and headline numbers."""
    if usage is None:
        return ""
    from tdev_metrics.usage_report import render_png as usage_png

    buffer = io.BytesIO()
    usage_png(usage, buffer)
    runs = usage["runs"]
    return f"""<h2>Usage today (<code>tdev usage report</code>; every run in this env today)</h2>
<p>{runs["started"]} runs started, {runs["completed"]} completed, {runs["failed"]} failed
({runs["failure_events"]} failure events),
{runs["abandoned"]} abandoned, {runs["recovered"]} recovered;
{usage["active_users"]["total_distinct"]} distinct users; {usage["projects"]["saved"]} projects saved.</p>
<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}" width="100%">"""
