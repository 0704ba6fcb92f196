"""`make demo`: the whole system on LocalStack, faults on purpose, invariants checked, a report written.

    python -m demo [--runs 32] [--drivers 4] [--kills 2] [--out reports/demo]

Plans the runs (users, SIMPLE/PRODUCTION, flaky agents, runs that fail outright once, runs doomed to fail
every time), starts the pipeline's resume endpoint and two recovery-worker replicas as separate processes,
starts the driver processes, SIGKILLs some of them mid-run, shows live progress until every run is final,
then checks the invariants and exits non-zero if one fails. The child processes' logs go to files under
`--out`/logs, so the console shows only the demo's own progress, its summary and where the report is.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
from rich.console import Console
from rich.live import Live
from rich.table import Table

from demo.fork import fork_and_diff
from demo.live import LiveRun, check_live
from demo.report import write_report
from tdev_metrics import MetricsReader
from tdev_metrics.usage_reader import UsageReader
from tdev_state import (
    AGENTS,
    PIPELINE,
    Session,
    SessionNotFoundError,
    SessionStatus,
    StateClient,
    StateConfig,
)
from tdev_state.log import configure_output

ROOT = Path(__file__).resolve().parent.parent


#: Agents the demo makes fail for good in some runs (tolerated: the run goes on), and the critical agents,
#: which it makes fail once (the run stops FAILED, then is recovered) or every time (doomed).
TOLERABLE = tuple(a.name for a in PIPELINE if a.demo_tolerated)
CRITICAL = tuple(a.name for a in PIPELINE if a.critical)


def plan_runs(runs: int, drivers: int, demo_run: str, rng: random.Random) -> list[dict[str, Any]]:
    """The runs' fates: some tolerate a failed agent, some fail at a critical agent once (then recover),
    a few are doomed there (must end ABANDONED); some have no user id, as the orchestrator has none."""
    # Stable user ids (demo-user0, demo-user1, …): repeated demos add runs to the same users, and the README's
    # commands can name one. Session ids carry the demo run's prefix, so they never collide.
    users = [f"demo-user{u}" for u in range(max(2, runs // 6))]
    plans = []
    for i in range(runs):
        kind = rng.random()
        sid = f"{demo_run}-run{i:03d}"
        plans.append(
            {
                "session_id": sid,
                "demo_run": demo_run,
                "driver": i % drivers,
                "user_id": users[(i // 4 * 3 + i % 4 - 1) % len(users)] if i % 4 else None,  # round robin
                "project_id": sid,  # the orchestrator's run id is its project id
                "project_name": rng.choice(["todo app", "shop", "blog", "dashboard", "chat"]),
                "pipeline_type": rng.choice(["SIMPLE", "PRODUCTION"]),
                "request": f"build me a {rng.choice(['todo app', 'shop', 'blog'])} with login",
                "flaky": sorted(rng.sample(AGENTS, rng.randint(0, 2))),
                # fails for good there (all in-process retries): tolerated, the run goes on
                "tolerated": rng.choice(TOLERABLE) if 0.30 <= kind < 0.55 else None,
                # a critical agent fails for good once: the run stops FAILED; resumed, it succeeds
                "fail_at": rng.choice(CRITICAL) if kind < 0.30 else None,
                "doomed": kind < 0.08,  # fails there on every attempt: must end ABANDONED
                "variant": "A" if i % 2 else "B",
            }
        )
    return plans


def start(args: list[str], env: dict[str, str], log: Path, **kw: Any) -> subprocess.Popen[Any]:
    """A child process whose output (stderr, and stdout unless piped) goes to its own log file."""
    handle = log.open("a")
    kw.setdefault("stdout", handle)
    return subprocess.Popen([sys.executable, *args], env=env, cwd=ROOT, stderr=handle, **kw)  # noqa: S603


STATUSES = ("ACTIVE", "FAILED", "COMPLETED", "ABANDONED")


def progress_table(
    elapsed: float, *, total: int, created: int, statuses: Counter[str], resumes: int, killed: str
) -> Table:
    """The live view: one row of counts; finished = COMPLETED + ABANDONED."""
    table = Table(title=f"t = {elapsed:5.1f} s", title_justify="left")
    for column in ("runs created", *STATUSES, "resumes", "SIGKILLed"):
        table.add_column(column, justify="right")
    finished = statuses.get("COMPLETED", 0) + statuses.get("ABANDONED", 0)
    table.add_row(
        f"{created}/{total}",
        *(str(statuses.get(k, 0)) for k in STATUSES),
        str(resumes),
        killed,
    )
    table.caption = f"{finished}/{total} runs final"
    return table


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m demo")
    parser.add_argument("--runs", type=int, default=32)
    parser.add_argument("--drivers", type=int, default=4)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "demo")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    configure_output("WARNING")  # the library's warnings and up, on stderr
    console = Console() if sys.stdout.isatty() else Console(width=200)  # piped: no wrapping
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    os.environ.setdefault("TDEV_ENV", "local")
    # The bucket the pipeline processes will use (theirs to name with $TDEV_PAYLOAD_BUCKET): created below.
    bucket = os.environ.setdefault("TDEV_PAYLOAD_BUCKET", f"t-developer-{os.environ['TDEV_ENV']}-payloads")
    demo_run = datetime.now(UTC).strftime("demo%H%M%S") + uuid.uuid4().hex[:4]
    rng = random.Random(args.seed if args.seed is not None else time.time_ns())
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    events_path, plan_path = out / "events.jsonl", out / "plan.json"
    events_path.unlink(missing_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    for old in logs.glob("*.log"):
        old.unlink()

    client = StateClient(StateConfig.from_env())
    console.print(
        f"demo {demo_run}: tables t-developer-{client.config.env}-* on {client.config.endpoint_url or 'AWS'}",
        highlight=False,
    )
    client.create_tables(streams=False)  # LocalStack's stream emulation halves its write rate (benchmarks.md)
    s3 = boto3.client("s3", endpoint_url=client.config.endpoint_url, region_name=client.config.region)
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=bucket)
    baseline = _stored_attempts(client)
    today = datetime.now(UTC).date()
    usage_before = UsageReader(client).report(today, today)
    plans = plan_runs(args.runs, args.drivers, demo_run, rng)
    plan_path.write_text(json.dumps(plans))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    common = ["--plan", str(plan_path), "--events", str(events_path)]

    server = start(
        ["-m", "demo.pipeline", "serve", *common],
        env,
        logs / "pipeline-server.log",
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    port = int(server.stdout.readline())
    workers = [
        start(
            [
                "-m",
                "tdev_recovery",
                "--resumer",
                f"http://127.0.0.1:{port}/resume",
                "--poll-interval",
                "0.5",
                "--stall-threshold",
                "5",
                "--retry-delay",
                "4",
                "--lease",
                "2",
                "--max-resumes",
                "2",
                "--max-attempts",
                "4",
                "--initial-backoff",
                "0.2",
                "--http-port",
                "0",
                "--worker-id",
                f"demo-worker-{i}",
                "--log-level",
                "info",
            ],
            env,
            logs / f"worker-{i}.log",
        )
        for i in range(2)
    ]
    drivers = [
        start(["-m", "demo.pipeline", "drive", *common, "--driver", str(d)], env, logs / f"pipeline-{d}.log")
        for d in range(args.drivers)
    ]
    live = LiveRun(client.config, plans[0]["session_id"], lambda text: console.print(text, highlight=False))
    live.start()
    started = time.monotonic()
    # Kills land mid-run: 0.5-2.5 s after every run exists (a process start takes seconds here).
    kill_delays = sorted(rng.uniform(0.5, 2.5) for _ in range(min(args.kills, args.drivers)))
    kill_at: list[float] = []
    victims = rng.sample(range(args.drivers), len(kill_delays))
    killed_pids: list[int] = []
    final = {SessionStatus.COMPLETED, SessionStatus.ABANDONED}
    statuses: Counter[str] = Counter()
    fork_lines: list[str] = []
    fork_failures: list[str] = []
    fork_child: str | None = None
    planned_kills = len(kill_delays)
    console.print(
        f"{len(plans)} runs, {args.drivers} pipeline processes ({planned_kills} to be SIGKILLed mid-run), "
        f"2 recovery workers; child logs in {logs}",
        highlight=False,
    )
    view = Live(console=console, auto_refresh=False) if console.is_terminal else None
    last_line = -10.0
    try:
        if view:
            view.start()
        while time.monotonic() - started < args.timeout:
            elapsed = time.monotonic() - started
            while kill_at and elapsed >= kill_at[0]:
                kill_at.pop(0)
                victim = drivers[victims.pop(0)]
                victim.send_signal(signal.SIGKILL)
                killed_pids.append(victim.pid)
                console.print(
                    f"t={elapsed:5.1f}s  SIGKILL pipeline process {victim.pid} mid-run", highlight=False
                )
            sessions = [s for s in (_get(client, p["session_id"]) for p in plans) if s is not None]
            if len(sessions) == len(plans) and kill_delays:
                kill_at, kill_delays = [elapsed + d for d in kill_delays], []
            statuses = Counter(s.status.value for s in sessions)
            table = progress_table(
                elapsed,
                total=len(plans),
                created=len(sessions),
                statuses=statuses,
                resumes=sum(s.resume_count for s in sessions),
                killed=f"{len(killed_pids)}/{planned_kills}",
            )
            done = len(sessions) == len(plans) and all(s.status in final for s in sessions)
            if view:
                view.update(table, refresh=True)
            elif done or elapsed - last_line >= 5:  # piped (CI, tests): a line every 5 s, not a redraw
                last_line = elapsed
                counts = "  ".join(f"{k} {statuses.get(k, 0)}" for k in STATUSES)
                console.print(
                    f"t={elapsed:5.1f}s  created {len(sessions)}/{len(plans)}  {counts}", highlight=False
                )
            if done:
                # While the resume endpoint still serves: fork one completed run and diff it (demo/fork.py).
                fork_lines, fork_failures, fork_child = fork_and_diff(
                    client, plans, f"http://127.0.0.1:{port}/resume"
                )
                break
            time.sleep(1.0)
    finally:
        if view:
            view.stop()
        for proc in [*drivers, *workers, server]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*drivers, *workers, server]:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    live.stop()
    elapsed = time.monotonic() - started
    if elapsed >= args.timeout:
        console.print(f"timed out after {args.timeout:.0f}s")
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    failures = check_invariants(client, plans, events, killed_pids, baseline)
    usage_after = UsageReader(client).report(today, today)
    forks = [fork_child] if fork_child else []
    usage_lines, usage_failures = check_usage(client, plans, usage_before, usage_after, forks=forks)
    failures += usage_failures + fork_failures + check_live(client, live)
    report = write_report(
        out, client, MetricsReader(client), plans, events, killed_pids, elapsed, usage=usage_after, live=live
    )
    summary = {
        "demo_run": demo_run,
        "seconds": round(elapsed, 1),
        "runs": len(plans),
        "final": dict(sorted(statuses.items())),
        "sigkilled": len(killed_pids),
        "resumes": sum(1 for sid, _ in _resumes(events) if sid != fork_child),
        "forks": len(forks),
        "fork": fork_child,
        "invariants_failed": failures,
        "report": str(report),
        "logs": str(logs),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print()
    console.print(
        f"finished in {elapsed:.0f}s: "
        + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
        + f"; {summary['resumes']} resumes; {len(killed_pids)} pipeline processes SIGKILLed",
        highlight=False,
    )
    deferred = sum(1 for e in events if e["event"] == "complete" and e.get("stored") is False)
    console.print(
        f"completions the store answered after the helper's budget (deferred, in order): {deferred}",
        highlight=False,
    )
    for line in [*usage_lines, *fork_lines]:
        console.print(line, highlight=False, markup=False)
    console.print(f"report: {report}", highlight=False)
    console.print(f"logs:   {logs}", highlight=False)
    if failures:
        console.print("INVARIANTS FAILED:")
        for failure in failures:
            console.print(f"  - {failure}", highlight=False, markup=False)
        return 1
    console.print("all invariants hold")
    env = client.config.env
    where = "" if env == "local" else f" ENV={env}"
    console.print(
        f"browse these runs in the web console: make console{where}   (then open http://127.0.0.1:8080/runs)",
        highlight=False,
    )
    console.print(
        "or in the terminal: uv run tdev sessions list --user demo-user1 · uv run tdev-metrics report",
        highlight=False,
    )
    return 0


def _get(client: StateClient, session_id: str) -> Session | None:
    try:
        return client.sessions.get(session_id)
    except SessionNotFoundError:
        return None


def check_invariants(
    client: StateClient,
    plans: list[dict[str, Any]],
    events: list[dict[str, Any]],
    killed: list[int],
    baseline: int,
) -> list[str]:
    """Every run ended as intended: COMPLETED (with exactly its tolerated failures), FAILED-then-recovered,
    or ABANDONED when doomed; no COMPLETED agent and no tolerated failure ever ran again; metric counts equal
    the work done."""
    failures = []
    for plan in plans:
        sid = plan["session_id"]
        session = client.sessions.get(sid)
        expected = SessionStatus.ABANDONED if plan["doomed"] else SessionStatus.COMPLETED
        if session.status is not expected:
            failures.append(f"{sid} ended {session.status.value}, expected {expected.value}")
        if expected is SessionStatus.COMPLETED:
            tolerated = (plan["tolerated"],) if plan["tolerated"] else ()
            if session.failed_agents != tolerated:
                failures.append(f"{sid}: tolerated failures {session.failed_agents}, expected {tolerated}")
            run = client.executions.list(sid, load_payloads=False)
            done = [e.agent_name for e in run if e.status.value == "COMPLETED"]
            if done != [a for a in AGENTS if a not in tolerated]:
                failures.append(f"{sid}: COMPLETED agents {done}")
            if plan["fail_at"] and session.resume_count < 1:
                failures.append(f"{sid}: failed at {plan['fail_at']} but was never recovered")
    # A completion the store acknowledged is never run again. One the helper had to defer (the store was
    # slower than its budget) lives in the process until it drains; a SIGKILL before that loses it, and the
    # resumed run does that agent again — counted and shown, not hidden (docs/adoption.md, defer mode).
    stored = Counter(
        (e["sid"], e["agent"]) for e in events if e["event"] == "complete" and e.get("stored", True)
    )
    twice = [k for k, n in stored.items() if n > 1]
    if twice:
        failures.append(f"agents completed twice after their completion was stored: {twice[:5]}")
    finished_at = {(e["sid"], e["agent"]): e["t"] for e in events if e["event"] in ("complete", "tolerated")}
    rerun = [
        (e["sid"], e["agent"])
        for e in events
        if e["event"] == "start" and e["t"] > finished_at.get((e["sid"], e["agent"]), float("inf"))
    ]
    if rerun:
        failures.append(f"finished agents started again: {rerun[:5]}")
    # One resume per fencing token: a worker whose POST timed out sends the same request again, and the
    # pipeline answers that repeat with the continuation it already started (a second 202, not a resume).
    accepted = Counter(sid for sid, _ in _resumes(events))
    for plan in plans:
        session = client.sessions.get(plan["session_id"])
        if accepted.get(plan["session_id"], 0) != session.resume_count:
            failures.append(
                f"{plan['session_id']}: pipeline accepted {accepted.get(plan['session_id'], 0)} resumes, "
                f"worker recorded {session.resume_count}"
            )
    # Metrics: every agent attempt records one observation; a SIGKILLed process loses its unflushed buffer
    # by nature, so those processes' attempts are excluded from the expected count.
    attempts = sum(1 for e in events if e["event"] in ("complete", "fail") and e["pid"] not in killed)
    demo_attempts_stored = _stored_attempts(client) - baseline
    killed_attempts = sum(1 for e in events if e["event"] in ("complete", "fail") and e["pid"] in killed)
    if not attempts <= demo_attempts_stored <= attempts + killed_attempts:
        failures.append(
            f"metrics: {demo_attempts_stored} observations stored, {attempts} recorded by processes that "
            f"exited normally (+ up to {killed_attempts} flushed by killed ones before they died)"
        )
    return failures


def check_usage(
    client: StateClient,
    plans: list[dict[str, Any]],
    before: dict[str, Any],
    after: dict[str, Any],
    *,
    forks: Sequence[str] = (),
) -> tuple[list[str], list[str]]:
    """The usage report of this demo's runs (today's report after minus before) against the tables: every
    count equal, with no allowance — the SIGKILLed pipeline processes included, since the report counts
    runs and agents from the tables (tdev_metrics.usage_tables), not from a buffer that dies with them.
    The counters are the env's: run the demo in an env with no other activity (its workers sweep every
    open run there)."""
    sessions = [client.sessions.get(sid) for sid in [*(p["session_id"] for p in plans), *forks]]
    agents = [e for s in sessions for e in client.executions.list(s.session_id, load_payloads=False)]
    truth = {
        "started": len(sessions),
        "completed": sum(1 for s in sessions if s.status is SessionStatus.COMPLETED),
        "failed": sum(1 for s in sessions if s.fail_count > 0),
        "failure_events": sum(s.fail_count for s in sessions),
        "abandoned": sum(1 for s in sessions if s.status is SessionStatus.ABANDONED),
        # A fork's first resume is how it starts (demo/fork.py), not a recovery: Session.recoveries.
        "recovered": sum(1 for s in sessions if s.status is SessionStatus.COMPLETED and s.recoveries),
        "resumes": sum(s.resume_count for s in sessions),
        # A fork's copies of its parent's agents (origin_run) were counted with the parent.
        "agents_completed": sum(1 for e in agents if e.status.value == "COMPLETED" and e.origin_run is None),
        "forks": sum(1 for s in sessions if s.fork_point is not None),
        "replays": sum(1 for s in sessions if s.fork_point is not None and s.replay),
    }

    def agents_completed(report: dict[str, Any]) -> int:
        return sum(row["completed"] for row in report["funnel"])

    extra = ("agents_completed", "forks", "replays")
    counted = {k: after["runs"][k] - before["runs"][k] for k in truth if k not in extra}
    counted["agents_completed"] = agents_completed(after) - agents_completed(before)
    for k in ("forks", "replays"):  # by fork point in the report (docs/fork.md); totals here
        counted[k] = after["forks"][k] - before["forks"][k]
    problems = [
        f"usage: {k} counted {counted[k]}, the tables say {truth[k]}" for k in truth if counted[k] != truth[k]
    ]
    shown = ", ".join(f"{k} {counted[k]}/{truth[k]}" for k in truth)
    lines = [f"usage of this demo's runs (tdev usage report; counted/in the tables): {shown}"]
    return lines, problems


def _resumes(events: list[dict[str, Any]]) -> set[tuple[str, int]]:
    """The resumes the pipeline accepted, one per (run, fencing token): a repeat is the same resume."""
    return {(e["sid"], e["token"]) for e in events if e["event"] == "resume_accepted"}


def _stored_attempts(client: StateClient) -> int:
    """Observations of agent_execution_time stored today (the demo compares before and after)."""
    reader = MetricsReader(client)
    today = datetime.now(UTC).date()
    return sum(s.count for s in reader.daily("agent_execution_time", start=today))


if __name__ == "__main__":
    sys.exit(main())
