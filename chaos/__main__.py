"""`python -m chaos` (`make chaos`): run every fault test against LocalStack and report what each lost,
counted twice and resumed twice — the figures of docs/reliability.md.

The figures come from the tests themselves (tests/chaos_report.py): each fault test records what it
measured and asserted on. This runner only runs them with TDEV_CHAOS_REPORT set and renders the lines as a
table in reports/chaos/report.md (and on the terminal). Its exit code is pytest's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
TESTS = [
    "tests/integration/test_fault_report_it.py",
    "tests/integration/test_faults_it.py",
    "tests/integration/test_metrics_faults_it.py",
    "tests/integration/test_metrics_fork_it.py",
    "tests/integration/test_recovery_chaos_it.py",
    "tests/integration/test_poison_and_wedged_it.py",
    "tests/integration/test_clock_skew_it.py",
    "tests/integration/test_malformed_items_it.py",
    "tests/integration/test_concurrent_payloads_it.py",
]
FIXED = {"scenario", "lost", "double_counted", "resumed_twice", "at"}


def _measured(value: object) -> str:
    """A figure as measured, or "n/a" for one the scenario does not measure (never a made-up 0)."""
    return "n/a" if value is None else str(value)


def main() -> int:
    out = ROOT / "reports" / "chaos"
    out.mkdir(parents=True, exist_ok=True)
    figures = out / "figures.jsonl"
    figures.unlink(missing_ok=True)
    started = time.monotonic()
    code = subprocess.call(
        [sys.executable, "-m", "pytest", "-m", "integration", "-q", "-p", "no:cacheprovider", *TESTS],
        cwd=ROOT,
        env={**os.environ, "TDEV_CHAOS_REPORT": str(figures)},
    )
    rows = [json.loads(line) for line in figures.read_text().splitlines()] if figures.exists() else []
    table = Table(title=f"Fault report ({len(rows)} scenarios, {time.monotonic() - started:.0f} s)")
    for column in ("scenario", "lost", "double-counted", "resumed twice", "figures"):
        table.add_column(column)
    lines = [
        f"# Fault report — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| scenario | lost | double-counted | resumed twice | figures |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        extra = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in row.items() if k not in FIXED)
        cells = [
            row["scenario"],
            *(_measured(row.get(k)) for k in ("lost", "double_counted", "resumed_twice")),
            extra,
        ]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"pytest exit code: {code}"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    Console(width=200).print(table)
    print(f"report: {out / 'report.md'}")
    if not rows:
        print("no figures were recorded: did the fault tests run?", file=sys.stderr)
        return code or 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
