"""The console over moto: pages, filters read through indexes, 404/400 pages, escaping, and the actions'
security (off by default, token sign-in, CSRF, origin) and effects (the worker's claim path)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from tdev_console import ConsoleSettings, create_app
from tdev_state import AGENTS, SessionStatus, StateClient

from ..console_runs import HOSTILE, BackgroundResumer, make_failed_run, make_hostile_run
from .conftest import FakeClock

pytestmark = pytest.mark.unit

TOKEN = "unit-token-0123456789"


def browser(client: StateClient, clock: FakeClock, **settings: Any) -> TestClient:
    config = ConsoleSettings(clock=clock, **settings)
    return TestClient(create_app(client, config), base_url="http://127.0.0.1:8080", follow_redirects=False)


@pytest.fixture
def calls(client: StateClient) -> Iterator[list[str]]:
    """Every DynamoDB operation the console makes (to prove listings never Scan)."""
    seen: list[str] = []
    dynamo = client.layer.dynamodb  # the one low-level client of the access layer
    handler = lambda model, **_: seen.append(model.name)  # noqa: E731
    dynamo.meta.events.register("before-call.dynamodb.*", handler)
    yield seen
    dynamo.meta.events.unregister("before-call.dynamodb.*", handler)


def test_runs_list_filters_through_indexes_never_a_scan(
    client: StateClient, clock: FakeClock, calls: list[str]
) -> None:
    failed = make_failed_run(client, user="alice")
    done = client.sessions.create(user_id="bob", project_name="blog", pipeline_type="PRODUCTION").session_id
    for agent in AGENTS:
        client.executions.complete(done, agent, output_data={"out": agent})
    active = client.sessions.create(user_id="alice", project_name="live").session_id
    web = browser(client, clock)
    calls.clear()

    def ids(query: str) -> set[str]:
        page = web.get(f"/runs?{query}")
        assert page.status_code == 200, page.text
        return set(re.findall(r'href="http://127.0.0.1:8080/runs/([^"?/]+)"', page.text))

    assert ids("") == {failed, done, active}
    assert ids("status=FAILED") == {failed}
    assert ids("status=COMPLETED") == {done}
    assert ids("type=PRODUCTION") == {done}
    assert ids("user=alice") == {failed, active}
    assert ids("user=alice&status=ACTIVE") == {active}
    assert ids("day=2020-01-01") == set()
    clock.advance(minutes=11)  # past the stall threshold: the ACTIVE run shows as stalled
    assert ids("status=STALLED") == {active}
    assert ids("status=ACTIVE") == set()
    assert "Scan" not in calls
    assert {"Query", "BatchGetItem"} <= set(calls)


def test_runs_pages_follow_the_cursor_without_losing_a_run(client: StateClient, clock: FakeClock) -> None:
    made = {client.sessions.create(project_name=f"p{i}").session_id for i in range(7)}
    web = browser(client, clock, page_size=3)
    seen: list[str] = []
    url = "/runs"
    while url:
        page = web.get(url)
        seen += re.findall(r'href="http://127.0.0.1:8080/runs/([^"?/]+)"', page.text)
        more = re.search(r'href="(http://127.0.0.1:8080/runs\?[^"]*cursor=[^"]+)"', page.text)
        url = more.group(1).replace("&amp;", "&") if more else ""
    assert sorted(seen) == sorted(made)  # every run once, over three pages


def test_run_page_shows_the_stored_timeline_and_recovery(client: StateClient, clock: FakeClock) -> None:
    sid = make_failed_run(client)
    page = browser(client, clock).get(f"/runs/{sid}")
    assert page.status_code == 200
    rows = re.findall(r'<tr data-agent="(\w+)" data-status="(\w+)" data-attempts="(\d+)">', page.text)
    stored = {e.agent_name: e for e in client.executions.list(sid, load_payloads=False)}
    assert [r[0] for r in rows] == list(AGENTS)
    for agent, status, attempts in rows:
        execution = stored.get(agent)
        assert status == (execution.status.value if execution else "PENDING")
        assert int(attempts) == (execution.retry_count + 1 if execution else 0)
    assert "generation timed out (model overloaded)" in page.text
    assert "FAILED (final)" in page.text
    assert "Never claimed by recovery." in page.text


def test_missing_run_bad_filter_and_unknown_path_are_pages_not_tracebacks(
    client: StateClient, clock: FakeClock
) -> None:
    web = browser(client, clock)
    missing = web.get("/runs/no-such-run")
    assert missing.status_code == 404
    assert "no pipeline session &#39;no-such-run&#39;" in missing.text
    assert "Traceback" not in missing.text
    bad = web.get("/runs?status=<b>x</b>")
    assert bad.status_code == 400
    assert "&lt;b&gt;x&lt;/b&gt;" in bad.text
    assert "<b>x</b>" not in bad.text
    assert web.get("/nowhere").status_code == 404
    assert web.get("/runs?day=2026-13-01").status_code == 400
    assert web.get("/usage?days=0").status_code == 400
    assert web.get(f"/runs/{'x' * 300}").status_code == 404  # a lookup: older ids may break today's rule
    assert web.get(f"/runs/{'x' * 3000}").status_code == 400  # longer than any stored key: says why
    assert web.get("/runs/abc/payload/nothing").status_code == 400
    searched = web.get("/runs?run=a/b")  # the search box: the id, encoded as one path segment
    assert searched.headers["location"] == "http://127.0.0.1:8080/runs/a%2Fb"
    assert web.get("/runs?cursor=garbage").status_code == 400
    assert web.get("/metrics?metric=a%23b").status_code == 400


def test_every_stored_string_is_escaped(client: StateClient, clock: FakeClock) -> None:
    sid = make_hostile_run(client)
    web = browser(client, clock)
    for url in (
        f"/runs/{sid}",
        "/runs",
        f"/runs/{sid}/payload/metadata",
        f"/runs/{sid}/payload/nl_input.output",
    ):
        page = web.get(url)
        assert page.status_code == 200, url
        assert "<script>window.__xss" not in page.text, url
        assert "<img src=x" not in page.text, url  # the tag never reaches the page as markup
        assert "&lt;script&gt;" in page.text, url
    assert HOSTILE not in web.get(f"/runs/{sid}").text


def test_security_headers_on_every_response(client: StateClient, clock: FakeClock) -> None:
    web = browser(client, clock)
    for url in ("/runs", "/runs/none", "/static/console.js"):
        headers = web.get(url).headers
        assert "script-src 'self'" in headers["content-security-policy"]
        assert "'unsafe-inline'" not in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"


def test_actions_are_off_unless_allowed(client: StateClient, clock: FakeClock) -> None:
    sid = make_failed_run(client)
    web = browser(client, clock)
    assert "Resume now" not in web.get("/backlog").text
    refused = web.post(f"/backlog/{sid}/abandon", data={"reason": "x", "csrf": "anything"})
    assert refused.status_code == 403
    assert "--allow-actions" in refused.text
    assert client.sessions.get(sid).status is SessionStatus.FAILED
    assert client.sessions.recovery_history(sid).fencing_token == 0  # not even claimed


def _sign_in(web: TestClient) -> str:
    assert web.get(f"/login?token={TOKEN}").status_code == 303
    form = web.get("/backlog")
    link = re.search(r'href="(http://127.0.0.1:8080/backlog/[^"]+/abandon)"', form.text)
    assert link, form.text
    confirm = web.get(link.group(1))
    found = re.search(r'name="csrf" value="([^"]+)"', confirm.text)
    assert found
    return found.group(1)


def test_actions_need_the_token_a_csrf_token_and_the_same_origin(
    client: StateClient, clock: FakeClock
) -> None:
    sid = make_failed_run(client)
    clock.advance(minutes=12)  # past the failed agent's window: its pipeline is done with the run
    web = browser(client, clock, allow_actions=True, token=TOKEN)
    assert web.get("/login?token=wrong").status_code == 403
    assert web.post(f"/backlog/{sid}/abandon", data={"reason": "x", "csrf": ""}).status_code == 403
    csrf = _sign_in(web)
    assert web.post(f"/backlog/{sid}/abandon", data={"reason": "x", "csrf": "forged"}).status_code == 403
    cross = web.post(
        f"/backlog/{sid}/abandon",
        data={"reason": "x", "csrf": csrf},
        headers={"origin": "http://evil.example"},
    )
    assert cross.status_code == 403
    assert client.sessions.recovery_history(sid).fencing_token == 0
    other = browser(client, clock, allow_actions=True, token=TOKEN)  # another browser, not signed in
    assert other.post(f"/backlog/{sid}/abandon", data={"reason": "x", "csrf": csrf}).status_code == 403
    done = web.post(
        f"/backlog/{sid}/abandon",
        data={"reason": "customer cancelled", "csrf": csrf},
        headers={"origin": "http://127.0.0.1:8080"},
    )
    assert done.status_code == 303
    history = client.sessions.recovery_history(sid)
    assert history.status is SessionStatus.ABANDONED
    assert [e.kind for e in history.events] == ["claimed", "abandoned"]
    assert history.events[1].fencing_token == 1
    assert "customer cancelled" in (history.abandon_reason or "")
    run_page = web.get(done.headers["location"])
    assert "abandon: outcome abandoned under fencing token 1" in run_page.text
    again = web.post(f"/backlog/{sid}/abandon", data={"reason": "again", "csrf": csrf})
    assert again.status_code == 409  # final now: nothing to abandon, said on a page


def test_resume_now_goes_through_the_workers_claim_and_hand_over(
    client: StateClient, clock: FakeClock
) -> None:
    sid = make_failed_run(client)
    clock.advance(minutes=12)  # past the failed agent's window: its pipeline is done with the run
    resumer = BackgroundResumer(client)
    web = browser(client, clock, allow_actions=True, token=TOKEN, resumer=resumer, resumer_name="test")
    csrf = _sign_in(web)
    assert "Resume now" in web.get("/backlog").text
    done = web.post(f"/backlog/{sid}/resume", data={"csrf": csrf})
    assert done.status_code == 303
    resumer.join()
    assert resumer.errors == []
    assert [r.next_agent for r in resumer.requests] == ["generation"]
    assert resumer.requests[0].fencing_token == 1
    session = client.sessions.get(sid)
    assert session.status is SessionStatus.COMPLETED
    history = client.sessions.recovery_history(sid)
    assert [e.kind for e in history.events] == ["claimed", "resumed"]
    assert history.resume_count == 1
    assert sid not in web.get("/backlog").text


def test_read_only_console_makes_no_writes(client: StateClient, clock: FakeClock, calls: list[str]) -> None:
    sid = make_failed_run(client)
    hostile = make_hostile_run(client)
    web = browser(client, clock)
    calls.clear()
    for url in (
        "/runs",
        "/fragments/runs",
        f"/runs/{sid}",
        f"/fragments/runs/{sid}",
        f"/fragments/runs/{sid}/metrics",
        f"/runs/{hostile}/payload/metadata",
        "/backlog",
        "/fragments/backlog",
        "/metrics",
        "/usage",
    ):
        assert web.get(url).status_code == 200, url
    assert set(calls) <= {"GetItem", "Query", "BatchGetItem"}, set(calls)


def test_backlog_lists_failed_and_stalled_runs_with_their_attempts(
    client: StateClient, clock: FakeClock
) -> None:
    failed = make_failed_run(client)
    stalled = client.sessions.create(project_name="silent").session_id
    client.executions.start(stalled, "nl_input")
    web = browser(client, clock, stall_threshold=timedelta(minutes=5))
    assert stalled not in web.get("/backlog").text
    clock.advance(minutes=6)
    page = web.get("/fragments/backlog").text
    assert failed in page
    assert stalled in page
    assert page.index(failed) < page.index(stalled)  # oldest first


def test_sealed_payloads_open_only_with_kms_decrypt(clock: FakeClock, aws: None) -> None:
    import boto3

    from .conftest import make_client

    key = boto3.client("kms", region_name="us-east-1").create_key()["KeyMetadata"]["KeyId"]
    sealed = make_client(clock, kms_key_id=key, encrypt_fields={"output_data"})
    sid = sealed.sessions.create(project_name="secret").session_id
    sealed.executions.complete(sid, "nl_input", output_data={"api_key": "s3cr3t"})
    # The same tables read by another console whose credentials may not use the key (no cached data key).
    reader = StateClient(sealed.config, clock=clock)
    kms = reader.layer.cipher._kms
    kms.meta.events.register("before-call.kms.Decrypt", _deny)
    run_page = browser(reader, clock).get(f"/runs/{sid}")
    assert "inline, sealed" in run_page.text
    opened = browser(reader, clock).get(f"/runs/{sid}/payload/nl_input.output")
    assert opened.status_code == 200
    assert "sealed: these credentials cannot open it" in opened.text
    assert "s3cr3t" not in opened.text
    kms.meta.events.unregister("before-call.kms.Decrypt", _deny)
    assert "s3cr3t" in browser(reader, clock).get(f"/runs/{sid}/payload/nl_input.output").text


def _deny(**_: Any) -> None:
    from botocore.exceptions import ClientError

    raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "denied"}}, "Decrypt")


def test_read_only_console_calls_exactly_its_read_grants(clock: FakeClock, aws: None) -> None:
    """Every page, as another process would serve them: the AWS calls are read actions only, all declared
    in CONSOLE_READER, and every grant declared is used (sealed and offloaded payloads included)."""
    import boto3

    from tdev_console.access import CONSOLE_READER, READ_ACTIONS
    from tdev_state.access import PIPELINE_CLIENT

    from ..aws_calls import CallRecorder
    from ..payloads import generated_project
    from .conftest import BUCKET, make_client

    key = boto3.client("kms", region_name="us-east-1").create_key()["KeyMetadata"]["KeyId"]
    writer = make_client(clock, kms_key_id=key, encrypt_fields={"output_data"})
    sid = make_failed_run(writer, user="alice")
    writer.executions.retry(sid, "generation")
    writer.executions.complete(sid, "generation", output_data=generated_project(200_000))
    failed = make_failed_run(writer)
    reader = StateClient(writer.config, clock=clock)
    web = browser(reader, clock)
    recorder = CallRecorder(writer.config.env, BUCKET)
    with recorder.recording():
        for url in (
            "/runs",
            "/runs?user=alice",
            f"/runs/{sid}",
            f"/fragments/runs/{sid}/metrics",
            f"/runs/{sid}/payload/generation.output",
            f"/runs/{sid}/payload/nl_input.output",
            f"/runs/{failed}",
            "/backlog",
            "/metrics",
            "/usage",
        ):
            assert web.get(url).status_code == 200, url
    declared = CONSOLE_READER.pairs()
    assert recorder.pairs == declared, (sorted(recorder.pairs - declared), sorted(declared - recorder.pairs))
    assert {action for action, _ in declared} <= READ_ACTIONS
    # The pipeline policy's read grants cover all of it but the by-day index and the metrics table.
    pipeline_reads = {(a, r) for a, r in PIPELINE_CLIENT.pairs() if a in READ_ACTIONS}
    assert declared - pipeline_reads == {
        ("dynamodb:Query", "index:pipeline-sessions/by-day"),
        ("dynamodb:Query", "table:metrics"),
    }


def test_a_live_run_is_never_resumed_or_abandoned_from_the_console(
    client: StateClient, clock: FakeClock
) -> None:
    live = client.sessions.create(project_name="running").session_id
    client.executions.start(live, "nl_input")
    web = browser(client, clock, allow_actions=True, token=TOKEN, resumer=BackgroundResumer(client))
    csrf = _sign_in_only(web, live)
    assert "Resume now" not in web.get(f"/runs/{live}").text
    for action in ("resume", "abandon"):
        refused = web.post(f"/backlog/{live}/{action}", data={"csrf": csrf, "reason": "x"})
        assert refused.status_code == 409
        assert "the run is live" in refused.text  # the recovery policy's own reason
    assert client.sessions.recovery_history(live).fencing_token == 0


def _sign_in_only(web: TestClient, sid: str) -> str:
    assert web.get(f"/login?token={TOKEN}").status_code == 303
    found = re.search(r'name="csrf" value="([^"]+)"', web.get(f"/backlog/{sid}/abandon").text)
    assert found
    return found.group(1)


def test_cli_refuses_bad_settings_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from tdev_console.cli import main

    assert main(["--port", "http"]) == 2
    assert "is not a TCP port" in capsys.readouterr().err
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        assert main(["--local", "--port", str(port)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: 127.0.0.1:{port} is in use: pick another --port (0 picks a free one)"]
    finally:
        taken.close()


def test_actions_are_judged_by_the_consoles_threshold_the_same_rule_the_worker_applies(
    client: StateClient, clock: FakeClock
) -> None:
    """One rule: a FAILED run past the console's stall threshold is abandoned, not refused by a second one."""
    sid = make_failed_run(client)
    clock.advance(minutes=6)  # past the 5-minute threshold; inside generation's own declared window
    web = browser(client, clock, allow_actions=True, token=TOKEN, stall_threshold=timedelta(minutes=5))
    csrf = _sign_in_only(web, sid)
    done = web.post(f"/backlog/{sid}/abandon", data={"reason": "x", "csrf": csrf})
    assert done.status_code == 303, done.text
    assert client.sessions.get(sid).status is SessionStatus.ABANDONED
