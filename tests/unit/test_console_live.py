"""The console's run page follows the run's Server-Sent Events (the same endpoint the orchestrator mounts)
instead of polling every 5 s."""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

from tdev_console import ConsoleSettings, create_app
from tdev_state import AGENTS, StateClient
from tdev_state.testing import FakeClock

pytestmark = pytest.mark.unit


def browser(client: StateClient, clock: FakeClock) -> TestClient:
    app = create_app(client, ConsoleSettings(clock=clock))
    return TestClient(app, base_url="http://127.0.0.1:8080", follow_redirects=False)


def completed_run(client: StateClient) -> str:
    sid = client.sessions.create(refs=["project_console"]).session_id
    for agent in AGENTS:
        client.executions.start(sid, agent)
        client.executions.complete(sid, agent, output_data={})
    return sid


def test_the_run_page_subscribes_to_its_events_from_the_version_it_shows(
    client: StateClient, clock: FakeClock
) -> None:
    """The run page's live region names its SSE endpoint, starting after the version rendered."""
    sid = completed_run(client)
    page = browser(client, clock).get(f"/runs/{sid}")
    assert page.status_code == 200
    found = re.search(r'data-events="([^"]+)"', page.text)
    assert found is not None
    expected = f"http://127.0.0.1:8080/runs/{sid}/events?after={client.sessions.get(sid).version}"
    assert found.group(1) == expected


def test_the_console_serves_a_runs_events_by_id_and_by_ref(client: StateClient, clock: FakeClock) -> None:
    """GET /runs/{id-or-ref}/events streams the run's events (id: seq) and ends after an ended run."""
    sid = completed_run(client)
    with browser(client, clock) as web:
        for name in (sid, "project_console"):
            with web.stream("GET", f"/runs/{name}/events", headers={"Last-Event-ID": "17"}) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                body = "".join(response.iter_text())
            assert re.findall(r"^id: (\d+)$", body, re.M) == ["18", "19"]
            assert body.rstrip().endswith("event: end\ndata: {}")


def test_the_console_answers_404_and_400_for_events(client: StateClient, clock: FakeClock) -> None:
    """An unknown run is 404 and a malformed Last-Event-ID 400, through the console's own stack."""
    sid = completed_run(client)
    with browser(client, clock) as web:
        assert web.get("/runs/nobody/events").status_code == 404
        assert web.get(f"/runs/{sid}/events", headers={"Last-Event-ID": "x"}).status_code == 400


def test_the_console_serves_the_events_of_a_run_whose_id_is_percent_encoded_in_its_url(
    client: StateClient, clock: FakeClock
) -> None:
    """A run id with `:`, `@` or a non-ASCII letter (legal ids, percent-encoded in the page's URL) streams
    from the URL the run page gives, not a 404."""
    sid = client.sessions.create(session_id="prod:2026@é").session_id
    client.sessions.update(sid, status="ABANDONED")
    with browser(client, clock) as web:
        page = web.get("/runs/prod%3A2026%40%C3%A9")
        found = re.search(r'data-events="([^"]+)"', page.text)
        assert found is not None
        with web.stream("GET", found.group(1).replace("&amp;", "&")) as response:
            assert response.status_code == 200
            body = "".join(response.iter_text())
    assert body.rstrip().endswith("event: end\ndata: {}")
