"""The console in a real headless browser (Debian's Chromium, driven by Playwright) against LocalStack.

After a small demo (real pipeline processes, recovery workers, a SIGKILL), the console serves the demo's
tables; the browser loads the runs list, opens a run and checks its timeline against the stored items,
resumes a FAILED run from the backlog and watches it reach COMPLETED without a reload, and proves stored
markup inert. Screenshots go to reports/console/.

`make test` installs Chromium from Debian's packages when it is missing. Without a browser these tests fail
and say why; only TDEV_SKIP_BROWSER=1 skips them (and the test summary then says so).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tdev_console import ConsoleSettings, create_app
from tdev_console.server import console_thread
from tdev_state import AGENTS, SessionStatus, StateClient, StateConfig
from tdev_state.tables import delete_tables
from tdev_state.testing import empty_and_delete_bucket

from ..console_runs import HOSTILE, BackgroundResumer, make_failed_run, make_hostile_run
from .endpoints import raw_client

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "reports" / "console"
TOKEN = "browser-test-token-0123456789"


def chromium() -> str:
    """Debian's Chromium (or $TDEV_CHROMIUM); a failure that says how to get one, or the explicit skip."""
    if os.environ.get("TDEV_SKIP_BROWSER") == "1":
        pytest.skip("TDEV_SKIP_BROWSER=1: the console's browser tests were not run")
    for candidate in (os.environ.get("TDEV_CHROMIUM"), "chromium", "chromium-browser", "/usr/bin/chromium"):
        if candidate and (found := shutil.which(candidate)):
            return found
    pytest.fail(
        "no Chromium for the console's browser tests: `make test` installs Debian's `chromium` package with "
        "apt-get (it needs root and Debian's package mirror); install it, point $TDEV_CHROMIUM at one, or "
        "set TDEV_SKIP_BROWSER=1 to skip these tests explicitly"
    )


@dataclass
class Console:
    url: str
    client: StateClient
    resumer: BackgroundResumer
    demo: dict[str, Any]
    failed: str
    hostile: str


@pytest.fixture(scope="module")
def chromium_path() -> str:
    """Checked first: without a browser (or with the explicit skip) no demo is run for nothing."""
    return chromium()


@pytest.fixture(scope="module")
def console(base_config: StateConfig, chromium_path: str) -> Iterator[Console]:
    """A small demo into tables of its own, two seeded runs, and the console serving them (in this process,
    so its resumer can finish the runs it is given)."""
    env = f"{base_config.env}c"
    config = replace(base_config, env=env, payload_bucket=f"tdev-{env}-payloads")
    out = ROOT / "reports" / "console" / "demo"
    demo_env = {
        **os.environ,
        "TDEV_ENV": env,
        "TDEV_PAYLOAD_BUCKET": config.payload_bucket or "",
        "PYTHONPATH": str(ROOT),
    }
    if config.endpoint_url:
        demo_env["AWS_ENDPOINT_URL"] = config.endpoint_url
    client = StateClient(config)
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "demo",
                "--runs",
                "6",
                "--drivers",
                "2",
                "--kills",
                "1",
                "--out",
                str(out),
            ],
            cwd=ROOT,
            env=demo_env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        summary = json.loads((out / "summary.json").read_text())
        # Written a quarter of an hour ago: past the failed generation's retry window, so Resume may take it.
        earlier = StateClient(client.config, clock=lambda: datetime.now(UTC) - timedelta(minutes=15))
        failed = make_failed_run(earlier, project="checkout flow", user="console-user")
        hostile = make_hostile_run(client)
        resumer = BackgroundResumer(client)
        settings = ConsoleSettings(
            allow_actions=True,
            token=TOKEN,
            resumer=resumer,
            resumer_name="tests.console_runs:BackgroundResumer",
            refresh_seconds=1.0,
            stall_threshold=timedelta(minutes=10),
        )
        with console_thread(create_app(client, settings)) as url:
            yield Console(url, client, resumer, summary, failed, hostile)
    finally:
        delete_tables(client.layer)
        empty_and_delete_bucket(raw_client("s3", config), config.payload_bucket or "")
        client.close()


@pytest.fixture(scope="module")
def browser(console: Console, chromium_path: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=chromium_path, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield tab
    context.close()
    assert errors == [], errors  # no script error, no refused resource (CSP), no failed fetch


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def all_runs_today(client: StateClient) -> list[Any]:
    runs, cursor = [], None
    while True:
        found = client.sessions.list_by_day(datetime.now(UTC).date(), limit=100, cursor=cursor)
        runs += found.items
        cursor = found.next_cursor
        if cursor is None:
            return runs


def test_runs_list_after_a_small_demo(console: Console, page: Any) -> None:
    assert console.demo["invariants_failed"] == []
    page.goto(f"{console.url}/runs")
    stored = {s.session_id: s for s in all_runs_today(console.client)}
    assert len(stored) == console.demo["runs"] + console.demo["forks"] + 2
    shown = page.locator("table.runs tbody tr")
    assert shown.count() == len(stored)
    for row in shown.all():
        sid = row.locator("td").nth(0).inner_text()
        badge = row.locator(".badge").inner_text()
        assert badge.startswith(stored[sid].status.value) or badge == "stalled", (sid, badge)
    shot(page, "runs")
    page.select_option("select[name=status]", "COMPLETED")
    page.click("form.filters button")
    page.wait_for_url("**/runs?*status=COMPLETED*")
    badges = page.locator("table.runs .badge").all_inner_texts()
    assert badges == ["COMPLETED"] * sum(
        1 for s in stored.values() if s.status is SessionStatus.COMPLETED and not s.failed_agents
    )
    # Live: a run created now appears without a reload.
    page.goto(f"{console.url}/runs")
    new = console.client.sessions.create(project_name="arrives live").session_id
    page.locator(f"text={new}").wait_for(timeout=10_000)


def test_a_run_page_shows_its_stored_timeline_and_recovery(console: Console, page: Any) -> None:
    resumed = [s for s in all_runs_today(console.client) if s.resume_count > 0]
    assert resumed, "the demo resumed no run (it SIGKILLs a pipeline process to make some)"
    run = resumed[0]
    page.goto(f"{console.url}/runs")
    page.click(f"a:text-is('{run.session_id}')")
    page.wait_for_url(f"**/runs/{run.session_id}")
    stored = {e.agent_name: e for e in console.client.executions.list(run.session_id, load_payloads=False)}
    rows = page.locator("#timeline tbody tr")
    assert rows.count() == len(AGENTS)
    for i, agent in enumerate(AGENTS):
        row = rows.nth(i)
        assert row.get_attribute("data-agent") == agent
        execution = stored.get(agent)
        assert row.get_attribute("data-status") == (execution.status.value if execution else "PENDING")
        assert int(row.get_attribute("data-attempts") or -1) == (
            execution.retry_count + 1 if execution else 0
        )
        if execution and execution.error_message:
            assert execution.error_message in row.inner_text()
    history = console.client.sessions.recovery_history(run.session_id)
    assert page.locator("#recovery-history tbody tr").count() == len(history.events)
    assert [e.kind for e in history.events].count("resumed") == history.resume_count == run.resume_count
    page.locator("#run-metrics table").wait_for()
    shot(page, "run")


def test_a_run_page_follows_its_events_without_a_reload(console: Console, page: Any) -> None:
    """A transition written by the library shows on the open run page, driven by the run's SSE stream (the
    region records the last event id it refreshed on), with no reload."""
    sid = console.client.sessions.create(
        project_name="watched live", refs=[f"project_{uuid.uuid4().hex[:8]}"]
    )
    page.goto(f"{console.url}/runs/{sid.session_id}")
    agent_row = page.locator(f"#timeline tbody tr[data-agent='{AGENTS[0]}']")
    assert agent_row.get_attribute("data-status") == "PENDING"
    # Each transition's delay to the page is measured, not asserted (no timing assertions). The console
    # serves from this process with the writing client, whose writes wake its hub at once
    # (`on_transition`); one in another process reads the stream or polls (docs/benchmarks.md).
    delays = []
    for seq, (write, agent, status) in enumerate(
        [
            (console.client.executions.start, AGENTS[0], "RUNNING"),
            (console.client.executions.complete, AGENTS[0], "COMPLETED"),
            (console.client.executions.start, AGENTS[1], "RUNNING"),
        ],
        start=2,
    ):
        written = time.monotonic()
        write(sid.session_id, agent)
        page.locator(f"#run[data-last-event='{seq}']").wait_for(timeout=10_000)
        delays.append(time.monotonic() - written)
        page.locator(f"#timeline tbody tr[data-agent='{agent}'][data-status='{status}']").wait_for(
            timeout=10_000
        )
    print(f"\nlive run page: transitions shown {', '.join(f'{d:.2f}' for d in delays)} s after their writes")
    shot(page, "run-live")


def test_resume_a_failed_run_from_the_backlog(console: Console, page: Any) -> None:
    sid = console.failed
    assert console.client.sessions.get(sid).status is SessionStatus.FAILED
    page.goto(f"{console.url}/login?token={TOKEN}")
    page.wait_for_url("**/backlog")
    row = page.locator(f"tr[data-session='{sid}']")
    assert "FAILED" in row.inner_text()
    shot(page, "backlog")
    row.locator("text=Resume now").click()
    page.wait_for_url(f"**/backlog/{sid}/resume")
    shot(page, "confirm-resume")
    page.click("#confirm")
    page.wait_for_load_state()
    assert f"/runs/{sid}" in page.url, page.inner_text("main")
    assert "resume: outcome resumed under fencing token 1" in page.locator(".flash").inner_text()
    # The page refreshes itself while the pipeline finishes the run.
    page.locator("#run-status", has_text="COMPLETED").wait_for(timeout=30_000)
    console.resumer.join()
    assert console.resumer.errors == []
    assert console.client.sessions.get(sid).status is SessionStatus.COMPLETED
    assert page.locator("#recovery-history tbody tr").all_inner_texts()[-1].split("\t")[1] == "resumed"
    shot(page, "resumed")
    page.goto(f"{console.url}/backlog")
    assert page.locator(f"tr[data-session='{sid}']").count() == 0


def test_rerun_a_completed_run_from_here(console: Console, page: Any) -> None:
    """Rerun from here on a completed run's timeline, with an override: the browser lands on the child's
    page, which shows its lineage (parent and fork point) and follows the child to COMPLETED."""
    done = [
        s
        for s in all_runs_today(console.client)
        # not the demo's own fork nor its parent: this test's fork is then the run's only child
        if s.status is SessionStatus.COMPLETED
        and not s.failed_agents
        and s.parent_id is None
        and not s.children
    ]
    assert done, "the demo completed no run without a tolerated failure"
    parent = done[0].session_id
    page.goto(f"{console.url}/login?token={TOKEN}")
    page.wait_for_url("**/backlog")
    page.goto(f"{console.url}/runs/{parent}")
    page.locator("#timeline tr[data-agent='ui_selection'] a.rerun").click()
    page.wait_for_url(f"**/runs/{parent}/fork/ui_selection")
    page.fill("#overrides", "framework=vue")
    shot(page, "confirm-rerun")
    page.click("#confirm")
    page.wait_for_load_state()
    children = console.client.sessions.get(parent).children
    assert [c.fork_point for c in children] == ["ui_selection"]
    child = children[0].run_id
    assert page.url.endswith(f"/runs/{child}"), page.inner_text("main")
    assert page.inner_text("#lineage-parent") == parent
    assert page.inner_text("#lineage-fork-point") == "ui_selection"
    page.locator("#run-status", has_text="COMPLETED").wait_for(timeout=30_000)
    console.resumer.join()
    assert console.resumer.errors == []
    shot(page, "rerun-child")


def test_stored_markup_is_inert_in_the_browser(console: Console, page: Any) -> None:
    sid = console.hostile
    for url in (
        f"/runs/{sid}",
        "/runs?user=console-user",
        f"/runs/{sid}/payload/metadata",
        f"/runs/{sid}/payload/nl_input.input",
    ):
        page.goto(console.url + url)
        page.wait_for_timeout(300)  # any injected handler would have run by now
        assert page.evaluate("window.__xss") is None, url
        assert page.locator("img[src=x]").count() == 0, url
        assert page.locator("script").count() == 1, url  # console.js only
        assert "<script>window.__xss = 1</script>" in page.inner_text("main"), url
    page.goto(f"{console.url}/runs/{sid}")
    assert HOSTILE in page.inner_text("#project-name")
    assert HOSTILE in page.inner_text("#timeline")
    shot(page, "xss")


def test_missing_run_is_a_404_page(console: Console, browser: Any) -> None:
    page = browser.new_page()  # not the `page` fixture: the browser rightly logs the 404 as an error
    response = page.goto(f"{console.url}/runs/no-such-run")
    assert response is not None
    assert response.status == 404
    assert page.inner_text("#error-title") == "Not found"
    assert "no pipeline session 'no-such-run'" in page.inner_text("#error-message")
    shot(page, "not-found")
    page.close()


def test_metrics_and_usage_charts_render(console: Console, page: Any) -> None:
    for name, url in (("metrics", "/metrics/view"), ("usage", "/usage")):
        page.goto(console.url + url)
        chart = page.locator("img.chart")
        chart.wait_for()
        page.wait_for_function("document.querySelector('img.chart').complete")
        assert page.evaluate("document.querySelector('img.chart').naturalWidth") > 300, name
        shot(page, name)
    assert page.locator("#usage-funnel tbody tr").count() == len(AGENTS)


def test_console_timings_are_recorded(console: Console) -> None:
    """Server time (Server-Timing) of the runs list (50 runs) and of one run, written for the docs; no
    timing is asserted: the machine is shared."""
    import urllib.request

    for i in range(50 - len(all_runs_today(console.client))):
        console.client.sessions.create(project_name=f"filler {i}")
    run = all_runs_today(console.client)[0].session_id
    timings: dict[str, list[float]] = {"runs list (50)": [], "run (9 agents)": []}
    for _ in range(40):
        for name, path in (("runs list (50)", "/runs"), ("run (9 agents)", f"/runs/{run}")):
            with urllib.request.urlopen(console.url + path) as response:
                assert response.status == 200
                timings[name].append(float(response.headers["server-timing"].split("dur=")[1]))
    assert len(all_runs_today(console.client)) >= 50
    report = {
        name: {"n": len(v), "p50_ms": sorted(v)[len(v) // 2], "p95_ms": sorted(v)[int(len(v) * 0.95) - 1]}
        for name, v in timings.items()
    }
    (SHOTS / "timings.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
