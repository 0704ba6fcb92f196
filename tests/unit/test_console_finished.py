"""The console, finished (issues 24 and 25): its own Prometheus metrics at /metrics (the page moved to
/metrics/view), a usage page rendered as tables, actions offered only where they will be accepted — by the
recovery worker's RecoveryPolicy — and frozen settings."""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from tdev_console import ConsoleSettings, create_app
from tdev_state import RunPolicy, StateClient, ValidationError
from tdev_state.testing import FakeClock

from ..console_runs import BackgroundResumer, make_failed_run

pytestmark = pytest.mark.unit

TOKEN = "unit-token-0123456789"
BASE = "http://127.0.0.1:8080"
CONFIRM_FORM = re.compile(r'<form method="post" action="[^"]+" class="confirm"')


def browser(client: StateClient, clock: FakeClock, **settings: Any) -> TestClient:
    app = create_app(client, ConsoleSettings(clock=clock, **settings))
    return TestClient(app, base_url=BASE, follow_redirects=False)


def signed_in(client: StateClient, clock: FakeClock, **settings: Any) -> TestClient:
    web = browser(client, clock, allow_actions=True, token=TOKEN, **settings)
    assert web.get(f"/login?token={TOKEN}").status_code == 303
    return web


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a Prometheus text exposition (None: no such sample)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, value = line.rsplit(" ", 1)
        found = dict(re.findall(r'(\w+)="([^"]*)"', head))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


# --- /metrics ---------------------------------------------------------------------------------------


def test_metrics_serves_prometheus_request_counts_by_route(client: StateClient, clock: FakeClock) -> None:
    """/metrics is the text exposition: requests counted by route template, method and status."""
    sid = make_failed_run(client)
    web = browser(client, clock)
    assert web.get(f"/runs/{sid}").status_code == 200
    assert web.get("/runs/no-such-run").status_code == 404
    scraped = web.get("/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
    labels = {"route": "/runs/{session_id:runid}", "method": "GET"}
    assert sample(scraped.text, "tdev_console_requests_total", **labels, status="200") == 1
    assert sample(scraped.text, "tdev_console_requests_total", **labels, status="404") == 1
    assert sample(scraped.text, "tdev_console_errors_total", kind="SessionNotFoundError") == 1
    assert sid not in scraped.text  # routes by template: no run id becomes a series


def test_metrics_counts_actions_by_outcome(client: StateClient, clock: FakeClock) -> None:
    """An accepted Abandon and one the recovery rule refuses are counted by their outcomes."""
    old = make_failed_run(client)
    clock.advance(minutes=12)
    live = make_failed_run(client)  # its generation failed just now: inside its window
    web = signed_in(client, clock)
    csrf = re.search(r'name="csrf" value="([^"]+)"', web.get(f"/backlog/{old}/abandon").text)
    assert csrf
    form = {"csrf": csrf.group(1), "reason": "duplicate"}
    assert web.post(f"/backlog/{old}/abandon", data=form).status_code == 303
    assert web.post(f"/backlog/{live}/abandon", data=form).status_code == 409
    text = web.get("/metrics").text
    assert sample(text, "tdev_console_actions_total", action="abandon", outcome="abandoned") == 1
    assert sample(text, "tdev_console_actions_total", action="abandon", outcome="live") == 1


def test_metrics_answers_a_scraper_by_ip_but_the_page_does_not(client: StateClient, clock: FakeClock) -> None:
    """A scraper addresses the target by its IP: /metrics answers any Host; /metrics/view stays refused."""
    web = browser(client, clock)
    assert web.get("/metrics", headers={"host": "10.1.2.3:8080"}).status_code == 200
    assert web.get("/metrics/view", headers={"host": "10.1.2.3:8080"}).status_code == 400


def test_the_metrics_page_moved_and_the_nav_links_it(client: StateClient, clock: FakeClock) -> None:
    """The HTML page of agent metrics is /metrics/view, and the navigation points there."""
    web = browser(client, clock)
    page = web.get("/metrics/view")
    assert page.status_code == 200
    assert "<h1>Metrics</h1>" in page.text
    assert f'href="{BASE}/metrics/view"' in web.get("/runs").text


# --- usage ------------------------------------------------------------------------------------------


def test_the_usage_page_renders_tables_not_a_python_dict(client: StateClient, clock: FakeClock) -> None:
    """Runs by pipeline type, durations and projects are tables; no dict's repr reaches the page."""
    page = browser(client, clock).get("/usage")
    assert page.status_code == 200
    assert "{&#39;" not in page.text
    assert "{'" not in page.text
    for table in ("usage-runs", "usage-by-type", "usage-funnel", "usage-durations", "usage-projects"):
        assert f'id="{table}"' in page.text, table
    # started, completed, failed, failure events, abandoned, recovered, resumes
    assert re.search(r"<tr><td>PRODUCTION</td>(<td>\d+</td>){7}</tr>", page.text)


# --- actions only where they will be accepted -------------------------------------------------------


def test_resume_is_offered_only_with_a_resumer(client: StateClient, clock: FakeClock) -> None:
    """No resumer: the run page offers Abandon alone, and the resume confirmation is a 409 without a form."""
    sid = make_failed_run(client)
    clock.advance(minutes=12)
    web = signed_in(client, clock)
    run = web.get(f"/runs/{sid}").text
    assert "Abandon…" in run
    assert "Resume now" not in run
    confirm = web.get(f"/backlog/{sid}/resume")
    assert confirm.status_code == 409
    assert "no resumer" in confirm.text
    assert not CONFIRM_FORM.search(confirm.text)
    with_resumer = signed_in(client, clock, resumer=BackgroundResumer(client), resumer_name="test")
    assert "Resume now…" in with_resumer.get(f"/runs/{sid}").text


def test_no_confirmation_for_a_run_the_recovery_rule_calls_live(
    client: StateClient, clock: FakeClock
) -> None:
    """A FAILED run inside its critical agent's window: listed, but no action and no confirm form (409)."""
    sid = make_failed_run(client)
    web = signed_in(client, clock, resumer=BackgroundResumer(client), resumer_name="test")
    row = re.search(rf'<tr data-session="{sid}">.*?</tr>', web.get("/backlog").text, re.S)
    assert row
    assert "not yet: the run is live" in row.group(0)
    assert "/abandon" not in row.group(0)
    for action in ("resume", "abandon"):
        confirm = web.get(f"/backlog/{sid}/{action}")
        assert confirm.status_code == 409, action
        assert not CONFIRM_FORM.search(confirm.text), action
    assert "Abandon…" not in web.get(f"/runs/{sid}").text
    clock.advance(minutes=12)  # its window passed: now the form is there
    assert CONFIRM_FORM.search(web.get(f"/backlog/{sid}/abandon").text)


def test_stalled_is_the_workers_rule_not_a_console_threshold(client: StateClient, clock: FakeClock) -> None:
    """10.5 min into generation (legal: 2 x 300 s + grace) a run is ACTIVE, as the worker sees it."""
    sid = make_failed_run(client)
    client.executions.retry(sid, "generation")
    clock.advance(minutes=10, seconds=30)
    web = browser(client, clock)
    assert 'id="run-status">ACTIVE<' in web.get(f"/runs/{sid}").text
    assert sid not in web.get("/runs?status=STALLED").text
    clock.advance(minutes=1)
    assert 'id="run-status">stalled<' in web.get(f"/runs/{sid}").text


def test_settings_are_frozen() -> None:
    """ConsoleSettings is frozen, like the worker's and the client's settings."""
    settings = ConsoleSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.allow_actions = True  # type: ignore[misc]
    assert settings.stall_threshold is None  # the worker's default: each run's declared window
    assert settings.policy(RunPolicy()).stall_threshold is None


@pytest.mark.parametrize("bad", [timedelta(0), timedelta(seconds=-1), 600])
def test_a_stall_threshold_that_is_no_duration_is_refused(bad: Any) -> None:
    """A zero, negative or bare-number threshold is a ValidationError saying what to pass."""
    with pytest.raises(ValidationError, match="positive timedelta or None"):
        ConsoleSettings(stall_threshold=bad)


def test_a_stall_threshold_shapes_the_rule_like_the_workers(client: StateClient, clock: FakeClock) -> None:
    """With a threshold, an ACTIVE run silent past it is stalled — the worker's --stall-threshold."""
    sid = client.sessions.create(project_name="quiet").session_id
    client.executions.start(sid, "nl_input")
    web = browser(client, clock, stall_threshold=timedelta(minutes=2))
    clock.advance(minutes=3)
    assert 'id="run-status">stalled<' in web.get(f"/runs/{sid}").text


def test_the_usage_charts_log_axis_has_plain_labels(
    client: StateClient, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The durations chart's log axis reads `10`, not the raw mathtext `$\\mathdefault{10^{1}}$` that the
    console's plain-text drawing (stored names are never parsed as math) would show."""
    import matplotlib.figure

    from tdev_console._charts import usage_png
    from tdev_metrics.usage_reader import UsageReader

    drawn: list[Any] = []
    original = matplotlib.figure.Figure.savefig

    def keep(self: Any, *args: Any, **kwargs: Any) -> None:
        drawn.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    day = clock().date()
    report = UsageReader(client).report(day, day)
    report["duration_seconds"]["run"] = {"p50": 8.1, "p95": 20.2}
    report["duration_seconds"]["agents"]["nl_input"] = {"p50": 0.7, "p95": 0.9}
    assert usage_png(report)[:4] == b"\x89PNG"
    (figure,) = drawn
    labels = [t.get_text() for ax in figure.axes for t in ax.get_yticklabels(which="both")]
    assert any(labels)
    assert not [label for label in labels if "$" in label or "mathdefault" in label]
