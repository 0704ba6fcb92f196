"""The console against a hostile web and hostile data (issue 23): DNS rebinding is refused before any handler,
odd run ids stored before the identifier rule still list and link to themselves, bad query values are 400
pages, and the actions are counted in the usage report."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

import tdev_state
from tdev_console import ConsoleSettings, create_app
from tdev_console._http import AllowedHosts, decode_id, encode_id, split_host
from tdev_console.cli import build_parser, usage_collector
from tdev_metrics.usage_reader import UsageReader
from tdev_state import StateClient, ValidationError
from tdev_state.testing import FakeClock

from ..console_runs import BackgroundResumer, make_failed_run

pytestmark = pytest.mark.unit

TOKEN = "unit-token-0123456789"
BASE = "http://127.0.0.1:8080"


def browser(client: StateClient, clock: FakeClock, **settings: Any) -> TestClient:
    return TestClient(
        create_app(client, ConsoleSettings(clock=clock, **settings)), base_url=BASE, follow_redirects=False
    )


@pytest.fixture
def calls(client: StateClient) -> Iterator[list[str]]:
    """Every DynamoDB operation the console makes."""
    seen: list[str] = []
    dynamo = client.layer.dynamodb
    handler = lambda model, **_: seen.append(model.name)  # noqa: E731
    dynamo.meta.events.register("before-call.dynamodb.*", handler)
    yield seen
    dynamo.meta.events.unregister("before-call.dynamodb.*", handler)


# --- 23.3 DNS rebinding ---------------------------------------------------------------------------


def test_a_rebound_host_is_refused_on_every_route_before_any_handler(
    client: StateClient, clock: FakeClock, calls: list[str]
) -> None:
    """A request naming another Host (a rebound DNS name) gets a 400 on every route and reads nothing."""
    sid = make_failed_run(client)
    web = browser(client, clock, allow_actions=True, token=TOKEN)
    routes = [
        "/",
        "/runs",
        f"/runs?run={sid}",
        "/fragments/runs",
        f"/runs/{sid}",
        f"/fragments/runs/{sid}",
        f"/fragments/runs/{sid}/metrics",
        f"/runs/{sid}/payload/metadata",
        "/backlog",
        "/fragments/backlog",
        f"/backlog/{sid}/abandon",
        "/metrics/view",
        "/charts/metrics.svg",
        "/usage",
        "/charts/usage.png",
        "/login",
        f"/login?token={TOKEN}",
        "/readyz",
        "/static/console.js",
        "/static/console.css",
        "/nowhere",
    ]
    calls.clear()
    for host in ("evil.example:8080", "evil.example", "127.0.0.1.evil.example:8080", "[::2]:8080", ""):
        for url in routes:
            page = web.get(url, headers={"host": host})
            assert page.status_code == 400, (host, url)
            assert sid not in page.text, (host, url)
            assert "set-cookie" not in page.headers, (host, url)
            assert "localhost" not in page.text, (host, url)  # the allowed names stay unsaid
        posted = web.post(f"/backlog/{sid}/abandon", data={"reason": "x"}, headers={"host": host})
        assert posted.status_code == 400
    assert calls == []  # no handler ran: not one read
    assert client.sessions.recovery_history(sid).fencing_token == 0


def test_the_loopback_names_are_served(client: StateClient, clock: FakeClock) -> None:
    """127.0.0.1, localhost and [::1] (any case, a trailing dot) are the console's own names."""
    web = browser(client, clock)
    for host in ("127.0.0.1:8080", "localhost:8080", "LOCALHOST:8080", "[::1]:8080", "localhost.:8080"):
        assert web.get("/runs", headers={"host": host}).status_code == 200, host


def test_the_cli_allows_the_bound_port_and_the_names_it_is_given() -> None:
    """Bound to loopback: the loopback names with that port only; --allowed-host adds a balancer's name."""
    allowed = AllowedHosts.for_address("127.0.0.1", 8090, ["console.example.com"])
    assert allowed.allows("127.0.0.1:8090")
    assert allowed.allows("[::1]:8090")
    assert allowed.allows("localhost:8090")
    assert not allowed.allows("localhost:8091")
    assert allowed.allows("console.example.com")
    assert allowed.allows("Console.Example.com:443")
    assert not allowed.allows("evil.example:8090")
    assert AllowedHosts.for_address("::1", 8090).allows("[::1]:8090")
    wide = AllowedHosts.for_address("10.0.0.5", 8080)
    assert wide.allows("10.0.0.5:8080")
    assert not wide.allows("evil.example:8080")
    assert split_host("[::1]:8080") == ("[::1]", 8080)
    assert split_host("evil:80:80") == ("evil:80:80", None)
    args = build_parser().parse_args(["--allowed-host", "a.example", "--allowed-host", "b.example:8443"])
    assert args.allowed_host == ["a.example", "b.example:8443"]


def test_a_health_check_answers_whatever_the_host(client: StateClient, clock: FakeClock) -> None:
    """/healthz (a balancer addresses targets by IP) answers any Host; it says nothing but ok."""
    page = browser(client, clock).get("/healthz", headers={"host": "10.1.2.3:8080"})
    assert page.status_code == 200
    assert page.json() == {"ok": True}


# --- 23.4 odd ids ---------------------------------------------------------------------------------

#: Ids written behind the library's back (or before its rule): each must list, and its link open it.
LEGACY_IDS = [
    "a/b",
    "x/../other",
    "..",
    ".",
    "q?run=other",
    "h#other",
    "p%2Fother",
    "sp ace",
    "bidi\u202eevil",
    "esc\x1b[31m",
    "back\\slash",
    "ünï-çødé",
    "!..",
    "other/payload/metadata",
]


def _store_raw(client: StateClient, source: str, new_id: str) -> None:
    """A copy of run `source`'s item under `new_id`, put with the low-level client (no validation)."""
    table = client.layer.tables.sessions
    item = client.layer.dynamodb.get_item(TableName=table, Key={"session_id": {"S": source}})["Item"]
    client.layer.dynamodb.put_item(TableName=table, Item={**item, "session_id": {"S": new_id}})


def _opened(web: TestClient, page: str, prefix: str) -> dict[str, str]:
    """Every link under `prefix` on `page` -> the run id the page it opens shows."""
    found = {}
    for href in {html.unescape(h) for h in re.findall(r'href="([^"]+)"', page)}:
        if href.startswith(f"{BASE}{prefix}") and "/payload/" not in href:
            target = web.get(href)
            assert target.status_code == 200, href
            shown = re.search(r'<span class="mono"(?: id="run-id")?>([^<]*)</span>', target.text)
            assert shown, href
            found[href] = html.unescape(shown.group(1))
    return found


def test_legacy_odd_ids_list_and_every_link_opens_the_run_it_names(
    client: StateClient, clock: FakeClock
) -> None:
    """Runs stored with '/', '?', '#', '..', '%', spaces or escapes: every list answers 200, links each."""
    other = client.sessions.create(session_id="other", project_name="the other run").session_id
    failed = make_failed_run(client)
    for legacy in LEGACY_IDS:
        _store_raw(client, failed, legacy)
    web = browser(client, clock, allow_actions=True, token=TOKEN)
    runs = web.get("/runs")
    assert runs.status_code == 200
    opened = _opened(web, runs.text, "/runs/")
    assert sorted(opened.values()) == sorted([*LEGACY_IDS, other, failed])
    for href, shown in opened.items():  # the page a link opens shows that link's run
        assert href == f"{BASE}/runs/{encode_id(shown)}"
    clock.advance(minutes=12)  # past the failed agent's window: the backlog offers the actions
    assert web.get(f"/login?token={TOKEN}").status_code == 303
    backlog = web.get("/backlog")
    assert backlog.status_code == 200
    confirms = _opened(web, backlog.text, "/backlog/")
    assert sorted(confirms.values()) == sorted([*LEGACY_IDS, failed, other])  # `other`: stalled by now
    for legacy in ("a/b", "..", "q?run=other"):  # the run's own fragments and payloads open too
        segment = encode_id(legacy)
        assert web.get(f"/fragments/runs/{segment}").status_code == 200
        assert web.get(f"/fragments/runs/{segment}/metrics").status_code == 200
        assert web.get(f"/runs/{segment}/payload/metadata").status_code == 200


def test_the_search_box_opens_an_odd_id_as_one_segment(client: StateClient, clock: FakeClock) -> None:
    """/runs?run=ID redirects to the run's own page whatever ID holds."""
    failed = make_failed_run(client)
    _store_raw(client, failed, "q?run=other#x")
    web = browser(client, clock)
    moved = web.get("/runs?run=q%3Frun%3Dother%23x")
    assert moved.headers["location"] == f"{BASE}/runs/q%3Frun%3Dother%23x"
    assert "q?run=other#x" in html.unescape(web.get(moved.headers["location"]).text)


def test_a_legacy_odd_id_can_be_abandoned_from_the_console(client: StateClient, clock: FakeClock) -> None:
    """The confirm form of a run stored as `a/b` posts to that run, and Abandon applies to it alone."""
    failed = make_failed_run(client)
    _store_raw(client, failed, "a/b")
    _store_raw(client, failed, "a")
    clock.advance(minutes=12)  # past the failed agent's window: its pipeline is done with the run
    web = browser(client, clock, allow_actions=True, token=TOKEN)
    assert web.get(f"/login?token={TOKEN}").status_code == 303
    confirm = web.get(f"/backlog/{encode_id('a/b')}/abandon").text
    action = re.search(r'<form method="post" action="([^"]+)" class="confirm"', confirm)
    csrf = re.search(r'name="csrf" value="([^"]+)"', confirm)
    assert action
    assert csrf
    assert action.group(1) == f"{BASE}/backlog/a%2Fb/abandon"
    done = web.post(action.group(1), data={"csrf": csrf.group(1), "reason": "legacy"})
    assert done.headers["location"] == f"{BASE}/runs/a%2Fb"
    assert client.sessions.get("a/b").status.value == "ABANDONED"
    assert client.sessions.get("a").status.value == "FAILED"


@pytest.mark.parametrize("value", [*LEGACY_IDS, "", "a" * 300, "run\ud800", "z" * 100])
def test_run_id_segments_round_trip(value: str) -> None:
    """encode_id gives one segment (no '/', never a dot segment) that decodes to the same id."""
    segment = encode_id(value)
    assert "/" not in segment
    assert "?" not in segment
    assert "#" not in segment
    assert segment.lower() not in (".", "..", "%2e", "%2e%2e", ".%2e", "%2e.")
    if value and "\ud800" not in value:
        assert decode_id(segment) == value


#: Ids the library must refuse (typed, nothing written), one per class of fault.
HOSTILE_IDS = {
    "slash": "a/b",
    "backslash": "a\\b",
    "query": "a?b",
    "fragment": "a#b",
    "percent": "a%2Fb",
    "dot-dot": "a..b",
    "dot": ".",
    "space": "a b",
    "tab": "a\tb",
    "nbsp": "a\u00a0b",
    "line-separator": "a\u2028b",
    "csi": "a\x1b[31mb",
    "c1": "a\x9bb",
    "bidi": "a\u202eb",
    "zero-width": "a\u200bb",
    "private-use": "a\ue000b",
    "lone-surrogate": "a\ud800b",
    "over-long": "x" * 257,
}


def _written(client: StateClient) -> float:
    meter = client.layer.meter.snapshot()
    return float(meter["write_units"] + meter["s3_puts"])


async def test_the_library_refuses_hostile_ids_typed_and_writes_nothing(client: StateClient) -> None:
    """Every writing entry point refuses each hostile id with a ValidationError naming the field; nothing
    is written."""
    before = _written(client)
    tdev_state.configure(client)
    try:
        for kind, bad in HOSTILE_IDS.items():
            with pytest.raises(ValidationError, match="session_id"):
                client.sessions.create(session_id=bad)
            with pytest.raises(ValidationError, match="user_id"):
                client.sessions.create(user_id=bad)
            with pytest.raises(ValidationError, match="user_id"):
                client.projects.save(user_id=bad, project_id="p", project_name="n")
            with pytest.raises(ValidationError, match="project_id"):
                client.projects.save(user_id="u", project_id=bad, project_name="n")
            with pytest.raises(ValidationError, match="session_id"):
                await tdev_state.save_pipeline_session({"session_id": bad, "status": "ACTIVE"})
            with pytest.raises(ValidationError, match=r"execution_id|session_id"):
                await tdev_state.update_agent_execution(
                    {"execution_id": f"{bad}-parser", "status": "RUNNING"}
                )
            assert _written(client) == before, kind
    finally:
        tdev_state.configure(None)


async def test_t_developers_own_ids_are_accepted(client: StateClient) -> None:
    """The orchestrator's run ids, the API's project ids, its default user and the plan's execution ids."""
    tdev_state.configure(client)
    try:
        for sid in ("prod_20250101_120000_0042", "project_3f2a9c1e-0b7d-4e55-9a61-2f0c8d7e4b13"):
            await tdev_state.save_pipeline_session(
                {"session_id": sid, "user_id": "user-1", "status": "ACTIVE", "current_agent": "nl_input"}
            )
            await tdev_state.update_agent_execution({"execution_id": f"{sid}-nl_input", "status": "RUNNING"})
            assert client.executions.get(sid, "nl_input").status.value == "RUNNING"
    finally:
        tdev_state.configure(None)


def test_a_stored_legacy_id_is_still_readable(client: StateClient) -> None:
    """Reads accept a key stored before the rule (and find it); writes under a new odd id are refused."""
    failed = make_failed_run(client)
    _store_raw(client, failed, "old/run")
    assert client.sessions.get("old/run").session_id == "old/run"
    assert client.sessions.recovery_history("old/run").session_id == "old/run"
    with pytest.raises(ValidationError, match="'/'"):
        client.sessions.create(session_id="new/run")


# --- 23.13 query values ---------------------------------------------------------------------------


#: (url, what the 400 page must say): every query parameter the console parses, with a value it cannot use.
BAD_QUERIES = [
    ("/usage?days=%C2%B2", "whole number from 1 to 366"),  # '²': isdigit() says yes, int() says no
    ("/charts/usage.png?days=%C2%B2", "whole number from 1 to 366"),
    ("/usage?days=%D9%A3", "whole number from 1 to 366"),  # an Arabic-Indic three
    ("/usage?days=9999999999999999999999", "whole number from 1 to 366"),
    ("/metrics/view?metric=%24%5Cfrac%7B%24", "1-64 letters"),  # $\frac{$: mathtext that cannot parse
    ("/charts/metrics.svg?metric=%24%5Cfrac%7B%24", "1-64 letters"),
    ("/charts/metrics.svg?metric=a%23b", "1-64 letters"),
    ("/metrics/view?day=2026-02-30", "YYYY-MM-DD"),
    ("/runs?day=%C2%B2", "YYYY-MM-DD"),
    ("/runs?status=stalled", "is not one of"),
    ("/runs?type=%00", "is not one of"),
    ("/runs?cursor=%FF", "cursor"),
]


def test_bad_query_values_are_400_pages_saying_what_to_type(client: StateClient, clock: FakeClock) -> None:
    """Each query parameter the console parses answers a bad value with a 400 page and what to type."""
    web = browser(client, clock)
    for url, hint in BAD_QUERIES:
        page = web.get(url)
        assert page.status_code == 400, url
        assert hint in html.unescape(page.text), url


def test_a_tech_stack_written_as_mathtext_still_draws(client: StateClient, clock: FakeClock) -> None:
    """Stored names are drawn as text: a tech stack `$\\frac{$` does not break the usage chart."""
    from tdev_metrics import MetricsCollector

    collector = MetricsCollector(client, start=False)
    client.projects.save(user_id="u", project_id="p", project_name="n", tech_stack=["$\\frac{$", "react"])
    collector.close()
    chart = browser(client, clock).get("/charts/usage.png?days=7")
    assert chart.status_code == 200
    assert chart.headers["content-type"] == "image/png"


# --- 23.18 actions counted ------------------------------------------------------------------------


def test_console_resume_and_abandon_are_counted_in_the_usage_report(
    client: StateClient, clock: FakeClock
) -> None:
    """With actions on, the console's collector counts Resume now and Abandon once each, as the worker's."""
    resumed, abandoned = make_failed_run(client), make_failed_run(client)
    clock.advance(minutes=12)  # past the failed agent's window: its pipeline is done with the run
    resumer = BackgroundResumer(client)
    collector = usage_collector(client, build_parser().parse_args(["--allow-actions"]))
    assert collector is not None
    web = browser(client, clock, allow_actions=True, token=TOKEN, resumer=resumer, resumer_name="test")
    assert web.get(f"/login?token={TOKEN}").status_code == 303
    csrf = re.search(r'name="csrf" value="([^"]+)"', web.get(f"/backlog/{resumed}/resume").text)
    assert csrf
    assert web.post(f"/backlog/{resumed}/resume", data={"csrf": csrf.group(1)}).status_code == 303
    resumer.join()
    form = {"csrf": csrf.group(1), "reason": "customer cancelled"}
    assert web.post(f"/backlog/{abandoned}/abandon", data=form).status_code == 303
    collector.close()
    day = clock().date()
    runs = UsageReader(client).report(day, day)["runs"]
    assert (runs["resumes"], runs["abandoned"]) == (1, 1)


def test_a_read_only_console_counts_nothing(client: StateClient) -> None:
    """Without --allow-actions (or with --no-usage) the console has no collector: it writes nothing."""
    assert usage_collector(client, build_parser().parse_args([])) is None
    assert usage_collector(client, build_parser().parse_args(["--allow-actions", "--no-usage"])) is None
