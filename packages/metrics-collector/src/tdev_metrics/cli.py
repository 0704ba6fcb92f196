"""`tdev-metrics report`: print metrics as a table, chart them to a PNG, compare two variants.

    tdev-metrics report --metric agent_execution_time [--since WHEN] [--until WHEN] [--agent generation]
                        [--daily] [--png out.png] [--json]
    tdev-metrics report --metric agent_execution_time --agent generation --compare A B [--days 7]

The range is the platform's one date range (`tdev_state.dates`: --since/--from, --until/--to, --days;
days, times or `12h`-style times ago); without one, today (UTC). Hourly rows are those whose hour overlaps
the range; --daily and --compare cover every UTC day it touches.

Target options (`--env`, `--local`/`--aws`, `--region`, `--profile`) go anywhere on the line. Exit codes:
0 ok, 1 no data, 2 bad arguments, 3 the store failed (`tdev_state.command`, shared by the three CLIs).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from tdev_metrics.report import Comparison, MetricsReader, Summary
from tdev_state import StateClient, command, dates
from tdev_state.command import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, CommandLineError

if TYPE_CHECKING:
    from rich.console import Console


def build_parser(prog: str = "tdev-metrics") -> argparse.ArgumentParser:
    target = command.target_options()
    parser = command.Parser(
        prog=prog, description="T-Developer metrics: tables, charts, A/B comparisons.", parents=[target]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    text = "hourly or daily figures, a PNG chart, or an A/B comparison"
    report = command.add_command(sub, "report", text, target)
    report.add_argument("--metric", default="agent_execution_time", help="metric name")
    dates.add_range_options(report, default="today (UTC)")
    report.add_argument("--agent", default=None, help="only this agent")
    report.add_argument("--variant", default=None, help="only this A/B variant")
    report.add_argument("--daily", action="store_true", help="one row per day instead of per hour")
    report.add_argument(
        "--png",
        type=Path,
        default=None,
        help="also write a chart here (needs tdev-metrics-collector[report])",
    )
    report.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two variants of --agent")
    report.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    return parser


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_table(rows: list[Summary], console: Console, title: str) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title)
    for column in ("date", "hour", "agent", "variant", "count", "avg", "p50", "p95", "p99", "error rate"):
        table.add_column(column, justify="right" if column not in ("date", "agent", "variant") else "left")
    for r in rows:
        table.add_row(
            Text(command.printable(r.date)),
            "-" if r.hour is None else f"{r.hour:02d}",
            Text(command.printable(r.agent)),
            Text(command.printable(r.variant or "")),
            str(r.count),
            _fmt(r.avg_response_time),
            _fmt(r.p50),
            _fmt(r.p95),
            _fmt(r.p99),
            _fmt(r.error_rate, 4),
        )
    console.print(table)


def render_png(
    rows: list[Summary], path: Path | BinaryIO, metric: str, *, colors: Mapping[str, Any] | None = None
) -> None:
    """Average and error rate per agent per hour (variants merged, count-weighted; the average is over
    every recorded observation, failed attempts included): lines over the hours, or grouped bars when there
    is a single hour. `colors` gives agents fixed colours (the demo report uses the same in every chart);
    the legend sits beside the plot, never on the bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        hour = f"{r.date} {(r.hour or 0):02d}:00"
        cell = cells.setdefault((r.agent, hour), [0.0, 0.0, 0.0])
        cell[0] += r.count
        cell[1] += r.total
        cell[2] += r.errors
    agents = sorted({agent for agent, _ in cells})
    hours = sorted({hour for _, hour in cells})
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)

    def style(agent: str) -> dict[str, Any]:
        return {"color": colors[agent]} if colors and agent in colors else {}

    width = 0.8 / max(1, len(agents))
    for i, agent in enumerate(agents):
        avg = [
            cells[(agent, h)][1] / cells[(agent, h)][0] if (agent, h) in cells else float("nan")
            for h in hours
        ]
        err = [
            100 * cells[(agent, h)][2] / cells[(agent, h)][0] if (agent, h) in cells else float("nan")
            for h in hours
        ]
        if len(hours) == 1:
            x = [j - 0.4 + (i + 0.5) * width for j in range(len(hours))]
            top.bar(x, avg, width=width, label=agent, **style(agent))
            bottom.bar(x, err, width=width, label=agent, **style(agent))
        else:
            top.plot(range(len(hours)), avg, marker="o", label=agent, **style(agent))
            bottom.plot(range(len(hours)), err, marker="o", label=agent, **style(agent))
    bottom.set_xticks(range(len(hours)), hours, rotation=30, ha="right")
    top.set_ylabel(f"avg {metric}\n(all attempts)")
    top.set_title(f"{metric}: average (failed attempts included) and error rate per agent per hour (UTC)")
    bottom.set_ylabel("error rate (%)")
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title="agent")
    top.grid(alpha=0.3)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def render_comparison(result: Comparison, console: Console) -> None:
    from rich.table import Table
    from rich.text import Text

    names = [command.printable(n) for n in (result.a.agent, result.b.variant, result.a.variant)]
    table = Table(title=Text(f"{names[0]}: {names[1]} vs {names[2]} (95 % intervals)"))
    for column in ("variant", "count", "avg", "p95", "error rate"):
        table.add_column(column)
    for s in (result.a, result.b):
        table.add_row(
            Text(command.printable(s.variant or "")),
            str(s.count),
            _fmt(s.avg_response_time),
            _fmt(s.p95),
            _fmt(s.error_rate, 4),
        )
    console.print(table)
    for label, interval in (("mean", result.mean), ("error rate", result.error_rate)):
        if interval is None:
            console.print(f"{label}: not enough data")
        else:
            verdict = "significant" if interval.significant else "not significant"
            console.print(
                f"{label} difference (B - A): {interval.difference:+.4f} "
                f"[{interval.low:+.4f}, {interval.high:+.4f}] — {verdict}"
            )


def _report(args: argparse.Namespace) -> int:
    span = dates.date_range(args, datetime.now(UTC))
    start, end = span.first_day, span.last_day
    # The console (rich, the `cli` extra) only where a table is printed: --json needs no extra.
    reader = MetricsReader(StateClient(command.state_config(args, need_credentials=True)))
    if args.compare:
        if not args.agent:
            raise CommandLineError("--compare needs --agent: the comparison is of one agent's two variants")
        result = reader.compare(
            args.metric,
            agent=args.agent,
            variant_a=args.compare[0],
            variant_b=args.compare[1],
            start=start,
            end=end,
        )
        if args.json:
            mean, rate = result.mean, result.error_rate
            payload = {
                "a": result.a.to_dict(),
                "b": result.b.to_dict(),
                "mean": mean.__dict__ if mean else None,
                "error_rate": rate.__dict__ if rate else None,
            }
            print(json.dumps(payload))
        else:
            render_comparison(result, command.console())
        return EXIT_OK if result.a.count and result.b.count else EXIT_NOT_FOUND
    if args.daily:
        rows = reader.daily(args.metric, start=start, end=end, agent=args.agent, variant=args.variant)
    else:
        hours = reader.hourly(args.metric, start=start, end=end, agent=args.agent, variant=args.variant)
        rows = [r for r in hours if span.overlaps(_hour_start(r), timedelta(hours=1))]
    if args.json:
        print(json.dumps([r.to_dict() for r in rows]))
    else:
        render_table(rows, command.console(), f"{args.metric} {span.label()}")
    if args.png and rows:
        try:
            render_png(rows, args.png, args.metric)
        except ImportError:
            raise CommandLineError(
                "--png draws with matplotlib: install tdev-metrics-collector[report]"
            ) from None
        except OSError as exc:
            print(f"error: cannot write the chart to {args.png}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
        if not args.json:
            command.console().print(f"chart written to {args.png}")
    return EXIT_OK if rows else EXIT_NOT_FOUND


def _hour_start(row: Summary) -> datetime:
    """The first moment of an hourly row (its date and hour, UTC)."""
    return datetime.fromisoformat(row.date).replace(hour=row.hour or 0, tzinfo=UTC)


def main(argv: Sequence[str] | None = None, *, prog: str = "tdev-metrics") -> int:
    """Entry point of the console script and of `tdev metrics`."""
    return command.entry(build_parser(prog), argv, _report)


if __name__ == "__main__":
    sys.exit(main())
