"""`tdev usage report`: how T-Developer is used, from the platform's own counters (docs/usage.md).

    tdev usage report --since 2026-11-01 --until 2026-11-30 [--json] [--png FILE] [--html FILE]
    tdev usage report --days 30            # the 30 days ending today (UTC)

The range is the platform's one date range (`tdev_state.dates`: --since/--from, --until/--to, --days);
without one, today (UTC). The report is by day: it covers every UTC day the range touches.

One Query per day on the metrics table, whatever the number of runs. Exit codes are the shared ones
(tdev_state.command): 0 ok, 1 no runs in the range, 2 bad arguments, 3 the store failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tdev_metrics.usage_reader import UsageReader
from tdev_state import StateClient, command, dates
from tdev_state.command import EXIT_NOT_FOUND, EXIT_OK, CommandLineError


def build_parser(prog: str = "tdev usage") -> argparse.ArgumentParser:
    target = command.target_options()
    parser = command.Parser(prog=prog, description="T-Developer usage analysis.", parents=[target])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    text = "runs, funnel, durations, projects, tech stacks, users and busy hours over a date range"
    report = command.add_command(sub, "report", text, target)
    dates.add_range_options(report, default="today (UTC)")
    report.add_argument("--json", action="store_true", help="the report as one JSON object on stdout")
    report.add_argument(
        "--png",
        type=Path,
        default=None,
        help="also write the charts here (needs tdev-metrics-collector[report])",
    )
    report.add_argument(
        "--html",
        type=Path,
        default=None,
        help="also write a page with charts and numbers (needs tdev-metrics-collector[report])",
    )
    return parser


def _n(value: Any) -> str:
    return "n/a" if value is None else str(value)


def print_report(report: dict[str, Any]) -> None:
    """The report as tables on the terminal (rich)."""
    from rich.table import Table
    from rich.text import Text

    console = command.console()
    runs = report["runs"]
    console.print(
        f"usage {report['from']} .. {report['to']} (UTC): {runs['started']} runs started, "
        f"{runs['completed']} completed, {runs['failed']} failed ({runs['failure_events']} failure events), "
        f"{runs['abandoned']} abandoned, "
        f"{runs['recovered']} recovered; {report['active_users']['total_distinct']} distinct users; "
        f"{report['projects']['saved']} projects saved, {report['projects']['downloads']} downloads",
        highlight=False,
        markup=False,
    )
    funnel = Table(title="funnel")
    for column in (
        "agent",
        "started",
        "completed",
        "failed attempts",
        "retries",
        "tolerated",
        "p50 s",
        "p95 s",
    ):
        funnel.add_column(column, justify="left" if column == "agent" else "right")
    for row in report["funnel"]:
        d = report["duration_seconds"]["agents"][row["agent"]]
        counts = (str(row[k]) for k in ("started", "completed", "failed", "retries", "tolerated"))
        funnel.add_row(Text(command.printable(row["agent"])), *counts, _n(d["p50"]), _n(d["p95"]))
    console.print(funnel)
    forks = report.get("forks") or {}
    if forks.get("forks"):
        console.print(
            f"forks of stored runs: {forks['forks']} ({forks['replays']} replays), by fork point:",
            highlight=False,
        )
        by_point = Table()
        for column in ("fork point", "forks", "replays"):
            by_point.add_column(column, justify="left" if column == "fork point" else "right")
        for agent, row in forks["by_fork_point"].items():
            by_point.add_row(Text(command.printable(agent)), str(row["forks"]), str(row["replays"]))
        console.print(by_point)
    run = report["duration_seconds"]["run"]
    console.print(f"run duration: p50 {_n(run['p50'])} s, p95 {_n(run['p95'])} s", highlight=False)
    stacks = ", ".join(
        f"{command.printable(t['name'])} {t['projects']}" for t in report["projects"]["tech_stack"][:10]
    )
    if report["projects"].get("tech_stack_other"):
        stacks += f", other {report['projects']['tech_stack_other']}"
    console.print(f"tech stacks: {stacks or 'n/a'}", highlight=False, markup=False)
    capped = report.get("capped", {})
    if capped.get("tech_stack_entries_as_other") or capped.get("durations_clamped"):
        console.print(
            f"capped to keep usage items bounded: {capped.get('tech_stack_entries_as_other', 0)} tech-stack "
            f"entries counted as other, {capped.get('durations_clamped', 0)} durations clamped",
            highlight=False,
        )
    hours = ", ".join(f"{h['hour']:02d}h {h['runs_started']}" for h in report["busiest_hours_utc"][:5])
    console.print(f"busiest hours (UTC): {hours or 'n/a'}", highlight=False)


def _report(args: argparse.Namespace) -> int:
    span = dates.date_range(args, datetime.now(UTC))
    client = StateClient(command.state_config(args, need_credentials=True))
    report = UsageReader(client).report(span.first_day, span.last_day)
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    try:
        if args.png or args.html:
            import matplotlib

            from tdev_metrics.usage_report import render_html, render_png

            # Stored names (tech stacks) are drawn as text: a `$…$` in one is not mathtext to parse.
            with matplotlib.rc_context({"text.parse_math": False}):
                if args.png:
                    render_png(report, args.png)
                if args.html:
                    args.html.write_text(render_html(report))
    except ImportError:
        raise CommandLineError(
            "--png/--html draw with matplotlib: install tdev-metrics-collector[report]"
        ) from None
    except OSError as exc:
        raise CommandLineError(f"cannot write the chart: {exc.strerror or exc}") from None
    return EXIT_OK if report["runs"]["started"] or report["projects"]["saved"] else EXIT_NOT_FOUND


def main(argv: Sequence[str] | None = None, *, prog: str = "tdev usage") -> int:
    """Entry point of `tdev usage`."""
    return command.entry(build_parser(prog), argv, _report)


if __name__ == "__main__":
    sys.exit(main())
