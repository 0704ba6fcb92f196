"""The console's Rerun from here (fork a stored run at an agent, start the child through the resume path),
the lineage on a run's page, and the diff of a child against its parent — over moto."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from tdev_console import ConsoleSettings, create_app
from tdev_console._fork import parse_overrides
from tdev_state import AGENTS, SessionStatus, StateClient, ValidationError
from tdev_state.testing import FakeClock

from ..console_runs import HOSTILE, BackgroundResumer, make_completed_run, make_failed_run

pytestmark = pytest.mark.unit

TOKEN = "unit-token-0123456789"
BASE = "http://127.0.0.1:8080"


def browser(client: StateClient, clock: FakeClock, **settings: Any) -> TestClient:
    config = ConsoleSettings(clock=clock, **settings)
    return TestClient(create_app(client, config), base_url=BASE, follow_redirects=False)


def acting(client: StateClient, clock: FakeClock) -> tuple[TestClient, BackgroundResumer]:
    resumer = BackgroundResumer(client)
    web = browser(client, clock, allow_actions=True, token=TOKEN, resumer=resumer, resumer_name="test")
    return web, resumer


def signed_in_csrf(web: TestClient, sid: str, agent: str) -> str:
    """Sign in with the per-start token; the CSRF token from the Rerun form of `sid` at `agent`."""
    assert web.get(f"/login?token={TOKEN}").status_code == 303
    form = web.get(f"/runs/{sid}/fork/{agent}")
    assert form.status_code == 200, form.text
    found = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert found
    return found.group(1)


def test_a_run_page_offers_rerun_from_here_on_each_completed_agent_only_when_acting(
    client: StateClient, clock: FakeClock
) -> None:
    """Rerun from here shows on every completed agent of an ended run, and only on a console that acts."""
    sid = make_completed_run(client)
    web, _ = acting(client, clock)
    links = re.findall(rf'href="{BASE}/runs/{sid}/fork/(\w+)"', web.get(f"/runs/{sid}").text)
    assert links == list(AGENTS)
    assert "Rerun from here" not in browser(client, clock).get(f"/runs/{sid}").text
    active = client.sessions.create(project_name="still running").session_id
    client.executions.start(active, "nl_input")
    client.executions.complete(active, "nl_input", output_data={"out": 1})
    assert "Rerun from here" not in web.get(f"/runs/{active}").text


def test_rerun_from_here_forks_starts_the_child_and_opens_its_page(
    client: StateClient, clock: FakeClock
) -> None:
    """The POST forks at the agent with the overrides, starts the child through the worker's claim and
    resume route (the resumer gets the merged input), and redirects to the child's page with its lineage."""
    sid = make_completed_run(client)
    web, resumer = acting(client, clock)
    csrf = signed_in_csrf(web, sid, "ui_selection")
    done = web.post(
        f"/runs/{sid}/fork/ui_selection", data={"csrf": csrf, "overrides": "framework=vue\nlevel=3"}
    )
    assert done.status_code == 303, done.text
    child = client.sessions.get(sid).children[0].run_id
    assert done.headers["location"] == f"{BASE}/runs/{child}"
    resumer.join()
    assert resumer.errors == []
    [request] = resumer.requests
    assert (request.session_id, request.next_agent, request.fencing_token) == (child, "ui_selection", 1)
    assert request.next_input["framework"] == "vue"
    assert request.next_input["level"] == 3
    stored = client.sessions.get(child)
    assert (stored.parent_id, stored.fork_point, stored.replay) == (sid, "ui_selection", False)
    assert stored.status is SessionStatus.COMPLETED
    page = web.get(done.headers["location"]).text
    assert f'id="lineage-parent" href="{BASE}/runs/{sid}"' in page
    assert re.search(r'id="lineage-fork-point">ui_selection<', page)
    assert "rerun from ui_selection" in page  # the flash
    assert child in web.get(f"/runs/{sid}").text  # the parent lists its fork


def test_rerun_needs_the_sign_in_and_the_csrf_token_and_writes_nothing_without(
    client: StateClient, clock: FakeClock
) -> None:
    """Without the sign-in, with a forged CSRF token or from another origin, the action is refused (403)
    and no child exists."""
    sid = make_completed_run(client)
    web, resumer = acting(client, clock)
    assert web.post(f"/runs/{sid}/fork/parser", data={"csrf": ""}).status_code == 403
    csrf = signed_in_csrf(web, sid, "parser")
    assert web.post(f"/runs/{sid}/fork/parser", data={"csrf": "forged"}).status_code == 403
    cross = web.post(
        f"/runs/{sid}/fork/parser", data={"csrf": csrf}, headers={"origin": "http://evil.example"}
    )
    assert cross.status_code == 403
    off = browser(client, clock).post(f"/runs/{sid}/fork/parser", data={"csrf": csrf})
    assert off.status_code == 403
    assert "--allow-actions" in off.text
    assert client.sessions.get(sid).children == ()
    assert resumer.requests == []


def test_rerun_of_an_active_run_is_a_409_page_and_writes_nothing(
    client: StateClient, clock: FakeClock
) -> None:
    """A run still ACTIVE cannot be forked: the form says so, and a POST is a 409 page naming the reason."""
    done = make_completed_run(client)
    active = client.sessions.create(project_name="still running").session_id
    client.executions.start(active, "nl_input")
    client.executions.complete(active, "nl_input", output_data={"out": 1})
    web, resumer = acting(client, clock)
    csrf = signed_in_csrf(web, done, "parser")
    assert web.get(f"/runs/{active}/fork/ui_selection").status_code == 409
    refused = web.post(f"/runs/{active}/fork/ui_selection", data={"csrf": csrf})
    assert refused.status_code == 409
    assert "ACTIVE" in refused.text
    assert "Traceback" not in refused.text
    assert client.sessions.get(active).children == ()
    assert resumer.requests == []


def test_bad_overrides_are_a_400_page_and_write_nothing(client: StateClient, clock: FakeClock) -> None:
    """An override line that is not key=value is refused before anything is written, saying which line."""
    sid = make_completed_run(client)
    web, resumer = acting(client, clock)
    csrf = signed_in_csrf(web, sid, "parser")
    bad = web.post(f"/runs/{sid}/fork/parser", data={"csrf": csrf, "overrides": "framework=vue\nno value"})
    assert bad.status_code == 400
    assert "line 2" in bad.text
    assert client.sessions.get(sid).children == ()
    assert resumer.requests == []


def test_unknown_agent_is_a_404_page(client: StateClient, clock: FakeClock) -> None:
    """An agent name that is not one of the nine is a 404 page, escaped."""
    sid = make_completed_run(client)
    web, _ = acting(client, clock)
    page = web.get(f"/runs/{sid}/fork/%3Cb%3Ex")
    assert page.status_code == 404
    assert "<b>x" not in page.text


def test_parse_overrides_reads_json_values_and_refuses_what_is_not_key_value() -> None:
    """Values read as JSON when they are JSON, as text otherwise; an empty field is no overrides."""
    assert parse_overrides("") is None
    assert parse_overrides(" \n \n") is None
    assert parse_overrides('framework = vue\nn=3\nflag=true\nq="3"\nobj={"a": [1]}') == {
        "framework": "vue",
        "n": 3,
        "flag": True,
        "q": "3",
        "obj": {"a": [1]},
    }
    for text in ("=vue", "novalue", "a=1\na=2", "x=1\n" * 51, "k=" + "v" * 10_001):
        with pytest.raises(ValidationError):
            parse_overrides(text)


def test_lineage_and_the_rerun_form_escape_stored_strings(client: StateClient, clock: FakeClock) -> None:
    """Markup in the parent's project name and in a fork's overrides reaches the pages as text."""
    sid = make_completed_run(client, project=f"shop {HOSTILE}")
    child = client.sessions.fork(sid, from_agent="parser", overrides={"note": HOSTILE, HOSTILE: 1})
    web, _ = acting(client, clock)
    signed_in_csrf(web, sid, "parser")
    for url in (f"/runs/{child.session_id}", f"/runs/{sid}/fork/parser", f"/runs/{sid}"):
        page = web.get(url)
        assert page.status_code == 200, url
        assert "<script>window.__xss" not in page.text, url
        assert "<img src=x" not in page.text, url
        assert "&lt;script&gt;" in page.text, url
    assert 'id="lineage-fork-point">parser<' in web.get(f"/runs/{child.session_id}").text


def test_the_diff_page_compares_a_child_with_its_parent_and_escapes_stored_strings(
    client: StateClient, clock: FakeClock
) -> None:
    """The diff of a fork against its parent: agents before the fork point the same, the rerun ones as they
    came out; stored markup (project name, overrides) is escaped."""
    sid = make_completed_run(client, project=f"shop {HOSTILE}")
    child = client.sessions.fork(sid, from_agent="generation", overrides={"note": HOSTILE})
    for agent in AGENTS[AGENTS.index("generation") :]:
        client.executions.start(child.session_id, agent)
        client.executions.complete(child.session_id, agent, output_data={"out": agent, "v": 2, "x": HOSTILE})
    web = browser(client, clock)
    page = web.get(f"/runs/{sid}/diff/{child.session_id}")
    assert page.status_code == 200, page.text
    rows = dict(re.findall(r'<tr data-agent="(\w+)" data-same="(\w+)"', page.text))
    assert rows == {a: "true" if AGENTS.index(a) < AGENTS.index("generation") else "false" for a in AGENTS}
    assert "$.v" in page.text
    child_page = web.get(f"/runs/{child.session_id}").text
    for text in (page.text, child_page):
        assert "<script>window.__xss" not in text
        assert "&lt;script&gt;" in text
    assert web.get(f"/runs/{sid}/diff/no-such-run").status_code == 404


def test_a_run_page_says_when_its_agents_were_made_by_different_versions(
    client: StateClient, clock: FakeClock
) -> None:
    """A fork whose rerun agents record another model than the copied ones: the run page says the run mixes
    versions, and each agent shows its own."""
    sid = client.sessions.create(project_name="versioned").session_id
    for agent in AGENTS:
        client.executions.start(sid, agent, input_data={"a": agent}, agent_version={"model": "m1"})
        client.executions.complete(sid, agent, output_data={"out": agent})
    child = client.sessions.fork(sid, from_agent="generation").session_id
    web = browser(client, clock)
    assert 'id="mixed-versions"' not in web.get(f"/runs/{sid}").text
    for agent in AGENTS[AGENTS.index("generation") :]:
        client.executions.start(child, agent, agent_version={"model": "m2"})
        client.executions.complete(child, agent, output_data={"out": agent})
    page = web.get(f"/runs/{child}").text
    assert re.search(r'id="mixed-versions">mixed: model m1 → m2<', page)
    assert page.count("model=m2") == 3


def test_rerun_starts_the_child_at_once_under_a_fixed_stall_threshold(
    client: StateClient, clock: FakeClock
) -> None:
    """With --stall-threshold set, a fresh child would look live for that long: Rerun from here starts it
    anyway (it created it a moment ago), through the same claim."""
    sid = make_completed_run(client)
    resumer = BackgroundResumer(client)
    web = browser(
        client,
        clock,
        allow_actions=True,
        token=TOKEN,
        resumer=resumer,
        resumer_name="test",
        stall_threshold=timedelta(minutes=10),
    )
    csrf = signed_in_csrf(web, sid, "search")
    assert web.post(f"/runs/{sid}/fork/search", data={"csrf": csrf}).status_code == 303
    resumer.join()
    assert [r.next_agent for r in resumer.requests] == ["search"]
    child = client.sessions.get(sid).children[0].run_id
    assert client.sessions.get(child).status is SessionStatus.COMPLETED


def test_a_child_the_console_cannot_start_is_shown_with_the_reason(
    client: StateClient, clock: FakeClock
) -> None:
    """When the start is refused after the fork (the child was ended meanwhile), the browser still lands on
    the child's page, told why it was not started from here — not an error page that hides the new run."""
    sid = make_completed_run(client)
    web, resumer = acting(client, clock)
    csrf = signed_in_csrf(web, sid, "parser")
    original = client.sessions.fork

    def fork_then_taken(*args: Any, **kwargs: Any) -> Any:
        child = original(*args, **kwargs)
        client.sessions.update(child.session_id, status=SessionStatus.ABANDONED)  # someone gave it up
        return child

    client.sessions.fork = fork_then_taken  # type: ignore[method-assign]
    done = web.post(f"/runs/{sid}/fork/parser", data={"csrf": csrf})
    assert done.status_code == 303
    child = client.sessions.get(sid).children[0].run_id
    assert done.headers["location"] == f"{BASE}/runs/{child}"
    assert "not started from here" in web.get(done.headers["location"]).text
    assert resumer.requests == []


def test_a_post_cannot_fork_from_an_agent_the_page_does_not_offer(
    client: StateClient, clock: FakeClock
) -> None:
    """The form refuses a rerun from an agent that did not complete (generation FAILED), and so does a POST
    with a valid CSRF token: 409, no child written."""
    done = make_completed_run(client)
    failed = make_failed_run(client)
    web, resumer = acting(client, clock)
    csrf = signed_in_csrf(web, done, "parser")
    assert web.get(f"/runs/{failed}/fork/generation").status_code == 409
    refused = web.post(f"/runs/{failed}/fork/generation", data={"csrf": csrf})
    assert refused.status_code == 409
    assert "did not complete" in refused.text
    assert client.sessions.get(failed).children == ()
    assert resumer.requests == []
