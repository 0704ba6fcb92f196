"""The state client against a real DynamoDB/S3 endpoint: runs, payloads, recovery index, listing."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from tdev_state import (
    AGENTS,
    AgentStatus,
    PayloadTooLargeError,
    SessionStatus,
    StateClient,
)
from tdev_state.client import StateClient as _Client
from tdev_state.testing import agent_payload, generated_project

from .endpoints import layer_for


def test_a_full_run_with_a_megabyte_of_generated_code(client: StateClient) -> None:
    """A 9-agent run with 1 MB of generated source stores and returns every payload exactly."""
    sid = client.sessions.create(user_id="it-user", project_name="shop").session_id
    code = generated_project(1_000_000)
    outputs = {}
    for i, agent in enumerate(AGENTS):
        outputs[agent] = code if agent == "generation" else agent_payload(3, seed=i)
        client.executions.start(sid, agent, input_data=agent_payload(1, seed=100 + i), project_id="p1")
        client.executions.complete(sid, agent, output_data=outputs[agent])
    run = client.executions.list(sid)
    assert [e.agent_name for e in run] == list(AGENTS)
    assert all(e.status is AgentStatus.COMPLETED for e in run)
    for e in run:
        assert json.dumps(e.output_data, sort_keys=True) == json.dumps(outputs[e.agent_name], sort_keys=True)
    assert run[6].output_bytes > 990_000
    assert client.sessions.get(sid).status is SessionStatus.COMPLETED


def test_without_a_bucket_a_huge_payload_writes_nothing(client: StateClient) -> None:
    """No bucket: 1 MB raises PayloadTooLargeError, and neither the agent nor the session changed."""
    no_bucket = _Client(layer=layer_for(client.config, payload_bucket=None))
    sid = no_bucket.sessions.create(user_id="it-user", project_name="big").session_id
    with pytest.raises(PayloadTooLargeError, match="Nothing was written"):
        no_bucket.executions.start(sid, "nl_input", input_data=generated_project(1_000_000))
    assert no_bucket.executions.list(sid) == []
    assert no_bucket.sessions.get(sid).version == 1


def test_recovery_index_finds_failed_and_stalled_runs(client: StateClient) -> None:
    """The sparse index returns a FAILED run and a stalled ACTIVE one, not a COMPLETED one."""
    failed = client.sessions.create(user_id="rec", project_name="a").session_id
    for agent in AGENTS[:6]:
        client.executions.complete(failed, agent)
    client.executions.fail(failed, "generation", error_message="llm timeout")  # critical: the run fails
    stalled = client.sessions.create(user_id="rec", project_name="b").session_id
    done = client.sessions.create(user_id="rec", project_name="c").session_id
    for agent in AGENTS:
        client.executions.start(done, agent)
        client.executions.complete(done, agent)
    found = {
        c.session_id: c.status
        for c in client.sessions.recovery_candidates(
            failed_idle=timedelta(0), stalled_idle=timedelta(0), limit=1000, live=True
        )
    }
    assert found[failed] is SessionStatus.FAILED
    assert found[stalled] is SessionStatus.ACTIVE
    assert done not in found


def test_user_listing_pages_newest_first(client: StateClient) -> None:
    """Sessions and projects list newest / most recently accessed first across pages."""
    ids = [client.sessions.create(user_id="lister", project_name=f"p{i}").session_id for i in range(5)]
    seen = []
    cursor = None
    while True:
        page = client.sessions.list_for_user("lister", limit=2, cursor=cursor)
        seen += [s.session_id for s in page.items]
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert seen == ids[::-1]
    for i in range(3):
        client.projects.save(user_id="lister", project_id=f"proj{i}", project_name=f"P{i}")
    client.projects.record_download("lister", "proj0")
    projects = client.projects.list_for_user("lister").items
    assert [p.project_id for p in projects] == ["proj0", "proj2", "proj1"]
    assert projects[0].download_count == 1
