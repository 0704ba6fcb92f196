"""Fork on LocalStack (#27): a fork at ui_selection started by the recovery worker through the pipeline's
resume route, completed while its parent's items are deleted (as TTL would); what a fork writes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tdev_recovery import RecoveryWorker, ResumeRequest, RetryPolicy, WorkerConfig
from tdev_state import (
    AGENTS,
    AsyncStateClient,
    PipelineRun,
    SessionStatus,
    StateClient,
    accept_resume,
)
from tdev_state.testing import agent_payload

from .endpoints import raw_client

pytestmark = pytest.mark.integration

WORKER = WorkerConfig(worker_id="fork-it", retry=RetryPolicy(maximum_attempts=1), grace_period=1.0)
BIG = agent_payload(300, seed=27)  # offloaded to S3 chunks: the fork refers to them, never copies them


def finished_run(client: StateClient) -> str:
    """A COMPLETED run: nl_input's output offloaded, every agent's accumulated input stored."""
    sid = client.sessions.create(user_id="u-fork", project_name="todo").session_id
    data: dict[str, Any] = {"query": "a todo app", "framework": "react"}
    for agent in AGENTS:
        client.executions.start(sid, agent, input_data=dict(data))
        output = BIG if agent == "nl_input" else {"by": agent}
        client.executions.complete(sid, agent, output_data=output)
        data[agent] = output
    return sid


def delete_items(client: StateClient, sid: str) -> int:
    """Delete a run's session and agent items behind the library's back, as TTL would."""
    dynamodb = raw_client("dynamodb", client.config)
    tables = client.layer.tables
    found = dynamodb.query(
        TableName=tables.executions,
        KeyConditionExpression="execution_id = :id",
        ExpressionAttributeValues={":id": {"S": sid}},
    )["Items"]
    for item in found:
        dynamodb.delete_item(
            TableName=tables.executions, Key={k: item[k] for k in ("execution_id", "agent_name")}
        )
    dynamodb.delete_item(TableName=tables.sessions, Key={"session_id": {"S": sid}})
    return len(found) + 1


@pytest.mark.timeout(120)
async def test_a_fork_runs_through_the_resume_route_while_its_parent_expires(client: StateClient) -> None:
    """The worker claims the fork and hands it to the pipeline's accept_resume; the parent's items are
    deleted after the fork's first agent; the fork completes and reads its copied output back intact."""
    parent = finished_run(client)
    child = client.sessions.fork(parent, from_agent="ui_selection", overrides={"framework": "vue"})
    aclient = AsyncStateClient(StateClient(client.config))
    continued: list[asyncio.Task[Any]] = []
    seen: dict[str, Any] = {}

    async def pipeline(run: PipelineRun, request: ResumeRequest) -> None:
        """The orchestrator's continuation: agent k's input as the worker sent it, then the rest."""
        data = dict(run.resumed_input or {})
        seen["input"] = dict(data)
        for agent in AGENTS[AGENTS.index(request.next_agent) :]:
            async with run.agent(agent, input_data=data, agent_version={"model": "m2"}) as step:
                step.complete({"by": agent, "framework": data.get("framework")})
            if agent == request.next_agent:
                seen["deleted"] = await asyncio.to_thread(delete_items, client, parent)

    async def resumer(request: ResumeRequest) -> None:
        """The pipeline's resume route, in process: what an HTTP resumer would POST to."""
        continued.append(await accept_resume(aclient, json.loads(json.dumps(request.to_json())), pipeline))

    try:
        worker = RecoveryWorker(StateClient(client.config), resumer, WORKER)
        result = await worker.resume_now(child.session_id)
        await worker.wait_for_inflight()
        (task,) = continued
        await asyncio.wait_for(task, 60)
    finally:
        await aclient.aclose()

    assert result.fencing_token == 1
    assert seen["input"]["framework"] == "vue"
    assert seen["deleted"] == len(AGENTS) + 1
    stored = client.sessions.get(child.session_id)
    assert stored.status is SessionStatus.COMPLETED
    assert stored.parent_id == parent
    outputs = {e.agent_name: e.output_data for e in client.executions.list(child.session_id)}
    assert outputs["nl_input"] == BIG
    assert outputs["download"] == {"by": "download", "framework": "vue"}


@pytest.mark.parametrize("agent", ["ui_selection", "generation"])
def test_a_fork_writes_k_items_of_its_own_and_no_s3_byte(
    fresh_client: StateClient, agent: str, record_property: Any
) -> None:
    """A fork at agent k stores k agent items (k - 1 copies and agent k's input) with its session, in one
    transaction with the parent's update, and PUTs no S3 byte although an output is offloaded. The write
    units LocalStack reports are recorded (`fork_write_units`; docs/data-model.md compares them with the
    billing rule)."""
    parent = finished_run(fresh_client)
    before = fresh_client.layer.meter.snapshot()
    child = fresh_client.sessions.fork(parent, from_agent=agent).session_id
    after = fresh_client.layer.meter.snapshot()
    k = AGENTS.index(agent) + 1
    record_property("fork_write_units", after["write_units"] - before["write_units"])
    assert len(fresh_client.executions.list(child, load_payloads=False)) == k
    assert (after["s3_puts"], after["s3_put_bytes"]) == (before["s3_puts"], before["s3_put_bytes"])
    assert fresh_client.executions.get(child, "nl_input").output_data == BIG


def test_a_fork_raced_by_a_resume_of_the_parent_writes_nothing(client: StateClient) -> None:
    """The parent resumed (set ACTIVE again, as a resumed pipeline does) between the fork's reads and its
    transaction: DynamoDB's own condition refuses the fork, ConflictError, and no child item exists."""
    from tdev_state import ConflictError

    parent = client.sessions.create(user_id="u-fork", project_name="raced").session_id
    for agent in AGENTS[:4]:
        client.executions.complete(parent, agent, input_data={"q": agent}, output_data={"by": agent})
    client.sessions.update(parent, status="FAILED", error_message="stopped")
    layer = client.layer
    real = layer.query_all

    def resumed_meanwhile(*args: Any, **kwargs: Any) -> Any:
        layer.query_all = real  # type: ignore[method-assign]
        client.sessions.update(parent, status="ACTIVE")
        return real(*args, **kwargs)

    layer.query_all = resumed_meanwhile  # type: ignore[method-assign]
    try:
        with pytest.raises(ConflictError):
            client.sessions.fork(parent, from_agent="match_rate")
    finally:
        layer.query_all = real  # type: ignore[method-assign]
    pages = (
        raw_client("dynamodb", client.config)
        .get_paginator("scan")
        .paginate(
            TableName=client.layer.tables.sessions,
            FilterExpression="parent_id = :p",
            ExpressionAttributeValues={":p": {"S": parent}},
        )
    )
    assert [item for page in pages for item in page["Items"]] == []
    assert client.sessions.get(parent).children == ()
    assert client.sessions.get(parent).status is SessionStatus.ACTIVE
