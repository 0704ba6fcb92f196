"""The usage report for people: four charts on one PNG, and an HTML page with the charts and the numbers.

Charts a product manager reads at a glance: the funnel over the agents (where runs stop), runs per
day by outcome, duration percentiles per agent and per run, and the top tech stacks. Nothing is drawn that
was not measured: an empty part says "no data". Needs the `tdev-metrics-collector[report]` extra.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, BinaryIO


def render_png(report: dict[str, Any], target: Path | BinaryIO) -> None:
    """Write the four charts as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogFormatter

    fig, ((funnel, days), (durations, stacks)) = plt.subplots(2, 2, figsize=(14, 9))
    fig.suptitle(f"T-Developer usage {report['from']} .. {report['to']} (UTC)")

    rows = report["funnel"]
    y = list(range(len(rows)))[::-1]
    height = 0.2
    for offset, (key, color) in enumerate(
        (("started", "#90a4ae"), ("completed", "#2e7d32"), ("failed", "#c62828"), ("retries", "#f9a825"))
    ):
        funnel.barh([v + (1.5 - offset) * height for v in y], [r[key] for r in rows], height=height,
                    color=color, label=key)  # fmt: skip
    funnel.set_yticks(y, [r["agent"] for r in rows])
    funnel.set_title("Funnel: agent attempts by outcome")
    funnel.set_xlabel("count")
    funnel.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")

    per_day = report.get("runs_per_day", {})
    labels = sorted(per_day)
    width = 0.2
    for offset, (key, color) in enumerate(
        (("started", "#90a4ae"), ("completed", "#2e7d32"), ("failed", "#c62828"), ("abandoned", "#6d4c41"))
    ):
        days.bar([i + (offset - 1.5) * width for i in range(len(labels))], [per_day[d][key] for d in labels],
                 width=width, color=color, label=key)  # fmt: skip
    days.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    days.set_title("Runs per day (by creation day): started, completed, failed, abandoned")
    days.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")

    series = [("run", report["duration_seconds"]["run"]), *report["duration_seconds"]["agents"].items()]
    measured = [(name, d) for name, d in series if d.get("p50") is not None]
    if measured:
        xs = range(len(measured))
        durations.bar([x - 0.2 for x in xs], [d["p50"] for _, d in measured], width=0.4, label="p50")
        durations.bar([x + 0.2 for x in xs], [d["p95"] for _, d in measured], width=0.4, label="p95")
        durations.set_xticks(list(xs), [name for name, _ in measured], rotation=45, ha="right")
        durations.set_yscale("log")
        # Plain tick labels: the default log formatter writes mathtext, which a host that draws stored
        # names as text (text.parse_math off: the console, `tdev usage --html`) would show raw.
        durations.yaxis.set_major_formatter(LogFormatter())
        durations.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
        durations.legend(fontsize="small")
    else:
        durations.text(0.5, 0.5, "no data", ha="center", va="center", transform=durations.transAxes)
    error = report["duration_seconds"].get("relative_error", 0)
    durations.set_title(f"Durations, seconds (log scale; within ±{error * 100:.1f} %)")

    top = report["projects"]["tech_stack"][:10]
    if top:
        stacks.barh([t["name"] for t in top][::-1], [t["projects"] for t in top][::-1], color="#1565c0")
    else:
        stacks.text(0.5, 0.5, "no data", ha="center", va="center", transform=stacks.transAxes)
    stacks.set_title(f"Top tech stacks of new projects ({report['projects']['saved']} saved)")
    stacks.set_xlabel("projects")

    fig.tight_layout()
    fig.savefig(target, format="png", dpi=100)
    plt.close(fig)


def _fmt(value: Any) -> str:
    return "n/a" if value is None else str(value)


def render_html(report: dict[str, Any]) -> str:
    """A self-contained page: the charts (embedded) and every number, each stored string escaped."""
    buffer = io.BytesIO()
    render_png(report, buffer)
    png = base64.b64encode(buffer.getvalue()).decode()
    e = html.escape
    runs = report["runs"]

    def table(headers: list[str], rows: list[list[Any]]) -> str:
        head = "".join(f"<th>{e(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{e(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    by_type = [[t, *v.values()] for t, v in runs["by_pipeline_type"].items()]
    durations = [["run", *report["duration_seconds"]["run"].values()]] + [
        [a, *d.values()] for a, d in report["duration_seconds"]["agents"].items()
    ]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>T-Developer usage</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;
margin-bottom:1em}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}</style></head><body>
<h1>T-Developer usage, {e(report["from"])} .. {e(report["to"])} (UTC)</h1>
<p>{runs["started"]} runs started, {runs["completed"]} completed, {runs["failed"]} failed
({runs["failure_events"]} failure events),
{runs["abandoned"]} abandoned, {runs["recovered"]} recovered after a resume;
{report["active_users"]["total_distinct"]} distinct users.</p>
<img src="data:image/png;base64,{png}" width="100%" alt="usage charts">
<h2>Runs by pipeline type</h2>
{
        table(
            ["type", "started", "completed", "failed", "failure events", "abandoned", "recovered", "resumes"],
            by_type,
        )
    }
<h2>Funnel</h2>
{
        table(
            ["agent", "started", "completed", "failed attempts", "retries", "tolerated"],
            [list(r.values()) for r in report["funnel"]],
        )
    }
<h2>Forks by fork point</h2>
<p>{report.get("forks", {}).get("forks", 0)} runs forked from a stored run,
{report.get("forks", {}).get("replays", 0)} of them replays (no overrides).</p>
{
        table(
            ["fork point", "forks", "replays"],
            [
                [a, r["forks"], r["replays"]]
                for a, r in report.get("forks", {}).get("by_fork_point", {}).items()
            ],
        )
    }
<h2>Durations (seconds; within ±{report["duration_seconds"]["relative_error"] * 100:.1f} %)</h2>
{table(["series", "p50", "p95"], durations)}
<h2>Projects</h2>
<p>{report["projects"]["saved"]} saved, {report["projects"]["downloads"]} downloads.</p>
{
        table(
            ["tech stack", "new projects"],
            [[t["name"], t["projects"]] for t in report["projects"]["tech_stack"]]
            + (
                [["(other)", report["projects"]["tech_stack_other"]]]
                if report["projects"].get("tech_stack_other")
                else []
            ),
        )
    }
<p>Capped to keep usage items bounded: {report.get("capped", {}).get("tech_stack_entries_as_other", 0)}
tech-stack entries counted as other (a day's shard takes 100 distinct names),
{report.get("capped", {}).get("durations_clamped", 0)} durations clamped to 1 ms .. 11.6 days.</p>
<h2>Active users by day</h2>
{table(["day", "users"], [[d, n] for d, n in report["active_users"]["by_day"].items()])}
<h2>Busiest hours (UTC)</h2>
{table(["hour", "runs started"], [[h["hour"], h["runs_started"]] for h in report["busiest_hours_utc"]])}
</body></html>"""
