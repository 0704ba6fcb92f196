"""The console's metrics page over a date range, with a picker of the metrics recorded in it (#25): no more
one day and a free-text box. The range is read as every command reads one (tdev_state.dates)."""

from __future__ import annotations

import html
import re
from datetime import UTC, date, datetime
from typing import Any

import pytest
from starlette.testclient import TestClient

from tdev_console import ConsoleSettings, create_app
from tdev_metrics import MetricsCollector, MetricsReader
from tdev_state import StateClient
from tdev_state.testing import FakeClock

pytestmark = pytest.mark.unit

BASE = "http://127.0.0.1:8080"


def browser(client: StateClient, clock: FakeClock) -> TestClient:
    return TestClient(create_app(client, ConsoleSettings(clock=clock)), base_url=BASE, follow_redirects=False)


@pytest.fixture
def recorded(client: StateClient, clock: FakeClock) -> MetricsCollector:
    """agent_execution_time on Nov 25 and 26, tokens on Nov 26 only, cache_hits on Nov 20; usage counters
    (a run started) in Nov 26's partition too."""
    metrics = MetricsCollector(client, start=False)

    def at(day: int, hour: int) -> float:
        return datetime(2026, 11, day, hour, 5, tzinfo=UTC).timestamp()

    for day in (25, 26):
        metrics.record("agent_execution_time", 2.0, agent_name="generation", timestamp=at(day, 10))
    metrics.record("tokens", 900, agent_name="generation", timestamp=at(26, 11))
    metrics.record("cache_hits", 1, agent_name="search", timestamp=at(20, 9))
    client.sessions.create(user_id="ops", project_name="counted")  # a usage event, on the fake clock's day
    assert metrics.flush()
    return metrics


def _picker(page: str) -> list[str]:
    select = re.search(r'<select name="metric" id="metric-picker">(.*?)</select>', page, flags=re.DOTALL)
    assert select, page[:2000]
    return re.findall(r'<option value="([^"]+)"', select.group(1))


def _daily_counts(page: str) -> list[str]:
    table = re.search(r'<table class="metrics" id="metrics-daily">(.*?)</table>', page, flags=re.DOTALL)
    return re.findall(r"<tr><td>[^<]*</td><td>[^<]*</td><td>(\d+)</td>", table.group(1)) if table else []


def test_the_reader_lists_the_metrics_recorded_in_a_range(client: StateClient, recorded: Any) -> None:
    """metric_names gives the metrics of the days asked, never the usage counters of the same partitions."""
    reader = MetricsReader(client)
    assert reader.metric_names(start=date(2026, 11, 25), end=date(2026, 11, 26)) == [
        "agent_execution_time",
        "tokens",
    ]
    assert reader.metric_names(start=date(2026, 11, 20)) == ["cache_hits"]


def test_the_page_offers_a_picker_of_the_metrics_in_the_range(
    client: StateClient, clock: FakeClock, recorded: Any
) -> None:
    """The metric is picked from what the range holds (no free-text box)."""
    page = browser(client, clock).get("/metrics/view?since=2026-11-20&until=2026-11-26")
    assert page.status_code == 200
    assert _picker(page.text) == ["agent_execution_time", "cache_hits", "tokens"]
    assert '<input name="metric"' not in page.text


def test_the_table_covers_the_whole_range(client: StateClient, clock: FakeClock, recorded: Any) -> None:
    """Two days of one agent's metric are one row counting both days; one day counts one."""
    web = browser(client, clock)
    assert _daily_counts(web.get("/metrics/view?since=2026-11-25&until=2026-11-26").text) == ["2"]
    assert _daily_counts(web.get("/metrics/view?day=2026-11-26").text) == ["1"]  # the old one-day link


def test_relative_ranges_read_at_the_consoles_clock(
    client: StateClient, clock: FakeClock, recorded: Any
) -> None:
    """since=2d is two days before the console's now: both days of the metric are in."""
    page = browser(client, clock).get("/metrics/view?since=2d")
    assert page.status_code == 200
    assert _daily_counts(page.text) == ["2"]


def test_the_chart_draws_a_range_of_days(client: StateClient, clock: FakeClock, recorded: Any) -> None:
    """The chart's link carries the range, and the chart is drawn over it."""
    web = browser(client, clock)
    page = web.get("/metrics/view?since=2026-11-25&until=2026-11-26").text
    link = html.unescape(re.search(r'<img class="chart" src="([^"]+)"', page).group(1))  # type: ignore[union-attr]
    assert "since=2026-11-25" in link
    assert "until=2026-11-26" in link
    chart = web.get(link)
    assert chart.status_code == 200
    assert chart.headers["content-type"].startswith("image/svg+xml")


@pytest.mark.parametrize(
    ("query", "hint"),
    [
        ("since=last+week", "2026-11-26T14:30"),
        ("since=2026-11-27&until=2026-11-26", "since must come before until"),
        ("since=2026-09-01&until=2026-11-26", "at most 31 days"),
    ],
)
def test_a_bad_range_is_a_400_saying_what_to_type(
    client: StateClient, clock: FakeClock, query: str, hint: str
) -> None:
    """A range the page cannot use answers 400 with the accepted forms or the limit."""
    page = browser(client, clock).get(f"/metrics/view?{query}")
    assert page.status_code == 400
    assert hint in html.unescape(page.text)


def test_the_picker_offers_no_hand_edited_name_the_page_would_refuse(
    client: StateClient, clock: FakeClock, recorded: Any
) -> None:
    """A metric item written by hand under a name with markup is neither rendered as markup nor offered:
    picking it would only be the page's 400 (it is no metric name)."""
    hostile = '"><script>alert(1)</script>'
    table = client.layer.tables.metrics
    client.layer.put(table, {"date": "2026-11-26", "metric_name": f"{hostile}#generation#0#10#0", "c": 1})
    page = browser(client, clock).get("/metrics/view?since=2026-11-26&until=2026-11-26")
    assert page.status_code == 200
    assert "<script>alert" not in page.text
    assert _picker(page.text) == ["agent_execution_time", "tokens"]
