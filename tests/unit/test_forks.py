"""Fork and lineage on moto (#27): what a fork copies, what it hands the resume path, and what it refuses."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from tdev_metrics.usage_tables import count_day
from tdev_recovery import RecoveryWorker, RetryPolicy, WorkerConfig
from tdev_recovery.testing import RecordingResumer
from tdev_state import (
    AGENTS,
    AgentStatus,
    ConflictError,
    ForkPointError,
    InvalidTransitionError,
    PipelineRun,
    RunActiveError,
    SessionNotFoundError,
    SessionStatus,
    StateClient,
    ValidationError,
    fork_pipeline,
)
from tdev_state.runs import fork_steps
from tdev_state.testing import FakeClock, agent_payload, make_client
from tdev_state.usage import UsageEvent

pytestmark = pytest.mark.unit

WORKER = WorkerConfig(
    worker_id="w1",
    poll_interval=0.05,
    confirm=timedelta(0),
    lease=timedelta(seconds=30),
    retry=RetryPolicy(initial_interval=timedelta(milliseconds=1), maximum_attempts=2),
    grace_period=1.0,
)


def pipeline_input(agent: str) -> dict[str, Any]:
    """What T-Developer hands an agent: the request and the earlier outputs by agent name."""
    step = AGENTS.index(agent)
    data: dict[str, Any] = {"query": "a todo app", "framework": "react"}
    for earlier in AGENTS[:step]:
        data[earlier] = {"out": earlier}
    return data


def completed_run(client: StateClient, agents: int = len(AGENTS), **create: Any) -> str:
    """A run whose first `agents` agents completed, each with its accumulated input (COMPLETED when all)."""
    sid = client.sessions.create(user_id="u1", project_name="todo", **create).session_id
    for agent in AGENTS[:agents]:  # recorded when finished, with its input: one write per agent
        client.executions.complete(sid, agent, input_data=pipeline_input(agent), output_data={"out": agent})
    if agents < len(AGENTS):
        client.sessions.update(sid, status="FAILED", error_message="stopped")
    return sid


def table_items(client: StateClient) -> list[dict[str, Any]]:
    """Every item of the sessions and executions tables (a test's view of "nothing written")."""
    dynamodb = boto3.resource("dynamodb", region_name="us-east-1")
    found = []
    for name in (client.layer.tables.sessions, client.layer.tables.executions):
        found += dynamodb.Table(name).scan()["Items"]
    return found


def raw_agents(client: StateClient, sid: str) -> dict[str, dict[str, Any]]:
    table = boto3.resource("dynamodb", region_name="us-east-1").Table(client.layer.tables.executions)
    items = table.query(KeyConditionExpression="execution_id = :id", ExpressionAttributeValues={":id": sid})
    return {str(i["agent"]): i for i in items["Items"]}


def bucket_keys(client: StateClient) -> list[str]:
    s3 = boto3.client("s3", region_name="us-east-1")
    return [o["Key"] for o in s3.list_objects_v2(Bucket=client.config.payload_bucket).get("Contents", [])]


@pytest.fixture
def parent(client: StateClient) -> str:
    return completed_run(client)


def test_a_fork_copies_the_agents_before_its_point_as_stored(client: StateClient, parent: str) -> None:
    """Agents 1..k-1 of the child are the parent's items as stored, under the child's id."""
    child = client.sessions.fork(parent, from_agent="ui_selection").session_id
    old, new = raw_agents(client, parent), raw_agents(client, child)
    before = AGENTS[: AGENTS.index("ui_selection")]
    assert sorted(new) == sorted([*before, "ui_selection"])
    for agent in before:
        for name in ("input_data", "output_data", "status", "end_time", "agent_name", "input_bytes"):
            assert new[agent][name] == old[agent][name]
        assert new[agent]["payload_origin"] == parent
        assert "ev" not in new[agent]
    copies = {e.agent_name: e.origin_run for e in client.executions.list(child)}
    assert copies == {**dict.fromkeys(before, parent), "ui_selection": None}


def test_a_fork_is_a_run_due_at_its_fork_point(client: StateClient, parent: str) -> None:
    """The child is ACTIVE at progress k-1, its current agent the fork point, and records its parent."""
    session = client.sessions.fork(parent, from_agent="ui_selection", overrides={"framework": "vue"})
    stored = client.sessions.get(session.session_id)
    k = AGENTS.index("ui_selection") + 1
    assert (stored.status, stored.progress) == (SessionStatus.ACTIVE, k - 1)
    assert stored.current_agent == "ui_selection"
    assert (stored.parent_id, stored.fork_point, stored.replay) == (parent, "ui_selection", False)
    assert stored.fork_overrides == '{"framework":"vue"}'
    assert (stored.user_id, stored.project_name, stored.live_for) == ("u1", "todo", 0)


def test_a_fork_keeps_the_parents_ab_arm(client: StateClient) -> None:
    """The child carries the parent's metadata, and with it the A/B variant its metrics are labelled by."""
    parent = completed_run(client, metadata={"variant": "B", "source": "api"})
    child = client.sessions.fork(parent, from_agent="generation")
    assert client.sessions.get(child.session_id).metadata == {"variant": "B", "source": "api"}


async def test_the_worker_resumes_a_fork_with_the_overrides_merged(
    client: StateClient, clock: FakeClock, parent: str
) -> None:
    """The resume request of a fork carries agent k's input with the overrides and the copied outputs."""
    child = client.sessions.fork(parent, from_agent="ui_selection", overrides={"framework": "vue"})
    resumer = RecordingResumer()
    worker = RecoveryWorker(client, resumer, WORKER, clock=clock)
    await worker.resume_now(child.session_id)
    await worker.wait_for_inflight()
    (request,) = resumer.requests
    assert request.next_agent == "ui_selection"
    assert request.next_input == {**pipeline_input("ui_selection"), "framework": "vue"}
    assert [(c.agent_name, c.output_data) for c in request.completed] == [
        (a, {"out": a}) for a in AGENTS[: AGENTS.index("ui_selection")]
    ]
    assert request.request == pipeline_input("nl_input")


async def test_a_resumed_fork_runs_to_completion_from_its_fork_point(
    client: StateClient, clock: FakeClock, parent: str
) -> None:
    """The pipeline's resume of a fork starts agent k over its PENDING item and completes the run."""
    from tdev_state import AsyncStateClient

    child = client.sessions.fork(parent, from_agent="generation").session_id
    resumer = RecordingResumer()
    worker = RecoveryWorker(client, resumer, WORKER, clock=clock)
    await worker.resume_now(child)
    await worker.wait_for_inflight()
    (request,) = resumer.requests
    async with AsyncStateClient(client) as aclient:
        run = await PipelineRun.resume(aclient, child, request=request, on_store_error="raise")
        for agent in AGENTS[AGENTS.index("generation") :]:
            async with run.agent(agent, input_data=dict(run.resumed_input or {})) as step:
                step.complete({"again": agent})
    runs = {e.agent_name: e for e in client.executions.list(child)}
    assert client.sessions.get(child).status is SessionStatus.COMPLETED
    assert runs["generation"].input_data == pipeline_input("generation")
    assert runs["generation"].output_data == {"again": "generation"}
    assert runs["parser"].output_data == {"out": "parser"}


def test_lineage_is_read_both_ways(client: StateClient, parent: str) -> None:
    """The child names its parent and fork point; the parent lists the child."""
    child = client.sessions.fork(parent, from_agent="search").session_id
    mine, theirs = client.sessions.lineage(child), client.sessions.lineage(parent)
    assert (mine.parent_id, mine.fork_point, mine.replay, mine.children) == (parent, "search", True, ())
    assert [(c.run_id, c.fork_point) for c in theirs.children] == [(child, "search")]
    assert theirs.parent_id is None


def test_a_fork_of_a_fork_reads_the_outputs_of_the_first_run(client: StateClient, parent: str) -> None:
    """A grandchild copies the child's copies: the outputs still read back, its parent is the child."""
    child = client.sessions.fork(parent, from_agent="generation").session_id
    client.sessions.update(child, status="ABANDONED", error_message="not run")
    grandchild = client.sessions.fork(child, from_agent="parser").session_id
    outputs = {e.agent_name: e.output_data for e in client.executions.list(grandchild)}
    assert outputs["nl_input"] == {"out": "nl_input"}
    assert raw_agents(client, grandchild)["nl_input"]["payload_origin"] == parent
    assert client.sessions.lineage(grandchild).parent_id == child
    assert [c.run_id for c in client.sessions.lineage(child).children] == [grandchild]


def test_a_fork_at_the_first_agent_copies_no_agent(client: StateClient, parent: str) -> None:
    """Forking at nl_input copies nothing and hands its request, overrides merged, to the resume."""
    child = client.sessions.fork(parent, from_agent="nl_input", overrides={"framework": "vue"})
    (only,) = client.executions.list(child.session_id)
    assert (only.agent_name, only.status) == ("nl_input", AgentStatus.PENDING)
    assert only.input_data == {"query": "a todo app", "framework": "vue"}
    assert child.progress == 0


def test_the_copied_outputs_outlive_the_parents_items(client: StateClient, parent: str) -> None:
    """Deleting the parent's items (as TTL does) leaves every copied output of the child readable."""
    child = client.sessions.fork(parent, from_agent="ui_selection").session_id
    table = boto3.resource("dynamodb", region_name="us-east-1").Table(client.layer.tables.executions)
    for item in raw_agents(client, parent).values():
        table.delete_item(Key={"execution_id": parent, "agent_name": item["agent_name"]})
    outputs = {e.agent_name: e.output_data for e in client.executions.list(child)}
    assert outputs["nl_input"] == {"out": "nl_input"}


@pytest.fixture
def offloading(aws: None, clock: FakeClock) -> Iterator[StateClient]:
    client = make_client(clock, offload_threshold=1024)
    yield client
    client.close()


def test_a_fork_puts_no_payload_object(offloading: StateClient) -> None:
    """Offloaded outputs are referred to, not copied: the fork writes no S3 object and reads them back."""
    sid = offloading.sessions.create().session_id
    big = agent_payload(20, seed=1)
    offloading.executions.start(sid, "nl_input", input_data={"q": "big"})
    offloading.executions.complete(sid, "nl_input", output_data=big)
    offloading.executions.start(sid, "ui_selection", input_data={"q": "big"})
    offloading.sessions.update(sid, status="FAILED")
    objects = bucket_keys(offloading)
    assert objects  # the output is offloaded
    child = offloading.sessions.fork(sid, from_agent="ui_selection").session_id
    assert bucket_keys(offloading) == objects
    assert offloading.executions.get(child, "nl_input").output_data == big


def test_a_fork_without_overrides_is_a_replay(client: StateClient, parent: str) -> None:
    """No overrides: replay is True, no overrides stored, agent k gets the parent's input as stored."""
    child = client.sessions.fork(parent, from_agent="generation", overrides={})
    assert (child.replay, child.fork_overrides) == (True, None)
    assert (
        raw_agents(client, child.session_id)["generation"]["input_data"]
        == (raw_agents(client, parent)["generation"]["input_data"])
    )


# --- refusals: each is typed and writes nothing ------------------------------------------------------------


def refused_without_writing(client: StateClient, error: type[Exception], *args: Any, **kwargs: Any) -> None:
    before = table_items(client)
    with pytest.raises(error):
        client.sessions.fork(*args, **kwargs)
    assert table_items(client) == before


def test_an_active_run_is_not_forked(client: StateClient) -> None:
    """A run still ACTIVE is RunActiveError."""
    sid = client.sessions.create().session_id
    client.executions.complete(sid, "nl_input", output_data={})
    refused_without_writing(client, RunActiveError, sid, from_agent="ui_selection")


def test_a_run_leased_by_a_worker_is_not_forked(client: StateClient) -> None:
    """A FAILED run a worker holds (a resume under way) is RunActiveError."""
    sid = completed_run(client, 3)
    claim = client.claims.claim(client.sessions.candidate(sid), worker_id="w", lease=timedelta(minutes=5))
    assert claim is not None
    refused_without_writing(client, RunActiveError, sid, from_agent="component_decision")


def test_a_fork_point_the_run_never_reached_is_refused(client: StateClient) -> None:
    """From an agent whose predecessors did not all finish: ForkPointError."""
    sid = completed_run(client, 3)
    refused_without_writing(client, ForkPointError, sid, from_agent="generation")


@pytest.fixture
def stopped(client: StateClient) -> str:
    """A small FAILED run (two agents completed): enough for the refusals checked before any read."""
    return completed_run(client, 2)


@pytest.mark.parametrize("agent", ["not_an_agent", "", None])
def test_a_fork_from_something_not_an_agent_is_refused(client: StateClient, stopped: str, agent: Any) -> None:
    """An unknown agent name is ValidationError."""
    refused_without_writing(client, ValidationError, stopped, from_agent=agent)


@pytest.mark.parametrize("overrides", [["framework", "vue"], "framework=vue", {"x": float("nan")}, {1: "a"}])
def test_overrides_that_are_not_a_json_object_are_refused(
    client: StateClient, stopped: str, overrides: Any
) -> None:
    """Overrides must be a JSON object: ValidationError."""
    refused_without_writing(client, ValidationError, stopped, from_agent="parser", overrides=overrides)


def test_overrides_on_an_input_that_is_not_an_object_are_refused(client: StateClient) -> None:
    """A stored input that is not a JSON object cannot take overrides: ValidationError."""
    sid = client.sessions.create().session_id
    client.executions.start(sid, "nl_input", input_data="just text")
    client.executions.complete(sid, "nl_input", output_data={})
    client.sessions.update(sid, status="FAILED")
    refused_without_writing(client, ValidationError, sid, from_agent="nl_input", overrides={"a": 1})


def test_an_unknown_run_is_not_forked(client: StateClient) -> None:
    """An id that names no run and no ref is SessionNotFoundError."""
    refused_without_writing(client, SessionNotFoundError, "no-such-run", from_agent="search")


def test_a_fork_raced_by_a_resume_of_the_parent_writes_nothing(client: StateClient) -> None:
    """The parent resumed between the fork's read and its write: ConflictError, no item written."""
    parent = completed_run(client, 4)
    layer = client.layer
    real = layer.query_all

    def resumed_meanwhile(*args: Any, **kwargs: Any) -> Any:
        layer.query_all = real  # type: ignore[method-assign]
        client.sessions.update(parent, status="ACTIVE")  # what a resume's pipeline does
        return real(*args, **kwargs)

    layer.query_all = resumed_meanwhile  # type: ignore[method-assign]
    before = table_items(client)
    with pytest.raises(ConflictError):
        client.sessions.fork(parent, from_agent="match_rate")
    after = table_items(client)
    assert [i for i in after if i.get("session_id") != parent] == [
        i for i in before if i.get("session_id") != parent
    ]
    assert "children" not in client.layer.get(client.layer.tables.sessions, {"session_id": parent})


async def test_the_async_client_forks_and_reads_lineage(client: StateClient, parent: str) -> None:
    """AsyncStateClient mirrors fork and lineage."""
    from tdev_state import AsyncStateClient

    async with AsyncStateClient(client) as aclient:
        child = await aclient.sessions.fork(parent, from_agent="search", overrides={"framework": "vue"})
        lineage = await aclient.sessions.lineage(parent)
    assert [c.run_id for c in lineage.children] == [child.session_id]


def test_a_fork_is_found_by_its_ref(client: StateClient, parent: str) -> None:
    """A fork may carry refs like any run; lineage answers by ref too."""
    child = client.sessions.fork(parent, from_agent="search", refs=["project_fork_1"])
    assert client.sessions.resolve("project_fork_1") == child.session_id
    assert client.sessions.lineage("project_fork_1").parent_id == parent


def test_session_dict_carries_the_lineage(client: StateClient, parent: str) -> None:
    """Session.to_dict (the plan's dict shape) has the fork's fields and the parent's children."""
    child = client.sessions.fork(parent, from_agent="search").session_id
    as_dict = client.sessions.get(parent).to_dict()
    assert [c["run_id"] for c in as_dict["children"]] == [child]
    assert dataclasses.asdict(client.sessions.get(child))["parent_id"] == parent


# --- shared S3 objects: kept alive for the child, never deleted by it --------------------------------------


@pytest.fixture
def retained(aws: None) -> Iterator[tuple[StateClient, FakeClock]]:
    """A client with a retention rule and a low offload threshold, its clock at the real time (S3 stamps
    objects with the real time, which the fork compares with its own)."""
    clock = FakeClock(datetime.now(UTC))
    client = make_client(clock, offload_threshold=1024, retention_days=30)
    yield client, clock
    client.close()


BIG = agent_payload(20, seed=1)


def offloaded_run(client: StateClient) -> str:
    """A FAILED run whose first output and second input are offloaded to S3."""
    sid = client.sessions.create().session_id
    client.executions.start(sid, "nl_input", input_data={"q": "big"})
    client.executions.complete(sid, "nl_input", output_data=BIG)
    client.executions.start(sid, "ui_selection", input_data={"q": "big", "other": agent_payload(20, seed=2)})
    client.sessions.update(sid, status="FAILED")
    return sid


def test_a_fork_of_an_old_run_restarts_the_age_of_the_objects_it_shares(
    retained: tuple[StateClient, FakeClock],
) -> None:
    """Objects that would expire before the child's items are copied onto themselves: no byte sent."""
    client, clock = retained
    sid = offloaded_run(client)
    clock.advance(days=10)
    before = client.layer.meter.snapshot()
    client.sessions.fork(sid, from_agent="ui_selection")
    after = client.layer.meter.snapshot()
    assert after["s3_puts"] > before["s3_puts"]
    assert after["s3_put_bytes"] == before["s3_put_bytes"]


def test_a_fork_of_a_young_run_does_not_look_at_its_objects(retained: tuple[StateClient, FakeClock]) -> None:
    """Objects younger than the child needs are not even read: the fork makes no S3 call."""
    client, _ = retained
    sid = offloaded_run(client)
    before = client.layer.meter.snapshot()
    client.sessions.fork(sid, from_agent="ui_selection")
    after = client.layer.meter.snapshot()
    assert (after["s3_puts"], after["s3_gets"]) == (before["s3_puts"], before["s3_gets"])


def test_a_refused_fork_never_deletes_a_parents_object(offloading: StateClient) -> None:
    """A fork raced by a resume takes back only the objects it created; the parent's stay and read back."""
    sid = offloaded_run(offloading)
    parent_objects = bucket_keys(offloading)
    layer, real = offloading.layer, offloading.layer.query_all

    def resumed_meanwhile(*args: Any, **kwargs: Any) -> Any:
        layer.query_all = real  # type: ignore[method-assign]
        offloading.sessions.update(sid, status="ACTIVE")
        return real(*args, **kwargs)

    layer.query_all = resumed_meanwhile  # type: ignore[method-assign]
    with pytest.raises(ConflictError):  # the merged input is new and offloaded: a PUT to take back
        offloading.sessions.fork(sid, from_agent="ui_selection", overrides={"framework": "vue"})
    assert offloading.layer.payloads.discarded_objects >= 1
    assert bucket_keys(offloading) == parent_objects
    assert offloading.executions.get(sid, "nl_input").output_data == BIG


async def test_the_plans_fork_returns_the_child_as_a_dict(plan: StateClient, parent: str) -> None:
    """fork_pipeline: the plan-style awaitable returns the child's session as a plain dict."""
    child = await fork_pipeline(parent, "generation", {"framework": "vue"})
    assert (child["parent_id"], child["fork_point"], child["replay"]) == (parent, "generation", False)
    assert isinstance(child["created_at"], int | float)


def test_a_run_with_the_most_children_is_not_forked_again(
    client: StateClient, parent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_CHILDREN a fork is InvalidTransitionError and writes nothing: the parent item stays small."""
    monkeypatch.setattr(fork_steps, "MAX_CHILDREN", 2)
    client.sessions.fork(parent, from_agent="parser")
    client.sessions.fork(parent, from_agent="parser")
    refused_without_writing(client, InvalidTransitionError, parent, from_agent="parser")


def test_a_fork_counts_as_a_run_started_in_usage(client: StateClient, parent: str) -> None:
    """The usage bus sees the fork as a run started by the parent's user."""
    seen: list[UsageEvent] = []

    class Sink:
        def usage(self, event: UsageEvent) -> None:
            seen.append(event)

    client.layer.usage.attach(Sink())
    child = client.sessions.fork(parent, from_agent="parser").session_id
    assert [(e.kind, e.session_id, e.user_id) for e in seen if e.kind == "run_started"] == [
        ("run_started", child, "u1")
    ]


def test_sealed_outputs_copied_into_a_fork_still_open(aws: None, clock: FakeClock) -> None:
    """A sealed output is copied as stored and opens in the child (bound to the run that sealed it)."""
    key = boto3.client("kms", region_name="us-east-1").create_key()["KeyMetadata"]["KeyId"]
    client = make_client(clock, kms_key_id=key, encrypt_fields={"output_data", "metadata"})
    parent = completed_run(client, 3, metadata={"variant": "A"})
    child = client.sessions.fork(parent, from_agent="parser", overrides={"framework": "vue"})
    copied = raw_agents(client, child.session_id)["ui_selection"]["output_data"]
    assert copied == raw_agents(client, parent)["ui_selection"]["output_data"]  # not decoded nor resealed
    assert client.executions.get(child.session_id, "ui_selection").output_data == {"out": "ui_selection"}
    assert client.executions.get(child.session_id, "parser").input_data["framework"] == "vue"
    assert client.sessions.get(child.session_id).metadata == {"variant": "A"}


def test_usage_from_the_tables_counts_a_forks_agents_once(client: StateClient, clock: FakeClock) -> None:
    """A completed fork adds its own agents to the day's counts, never its parent's copies again."""
    parent = completed_run(client, 6)  # FAILED after search; generation never ran
    child = client.sessions.fork(parent, from_agent="generation").session_id
    for agent in AGENTS[AGENTS.index("generation") :]:
        client.executions.start(child, agent, input_data={"framework": "react"})
        client.executions.complete(child, agent, output_data={"by": agent})
    count = count_day(client, clock.now.date())
    assert client.sessions.get(child).status is SessionStatus.COMPLETED
    assert count.agent("nl_input")["started"] == 1
    assert count.agent("generation")["completed"] == 1
    assert count.total("started") == 2


async def test_a_fork_started_by_the_worker_is_not_a_recovered_run(
    client: StateClient, clock: FakeClock, parent: str
) -> None:
    """The hand-over that starts a fork counts as a resume, never as a recovery of the fork."""
    child = client.sessions.fork(parent, from_agent="download").session_id
    worker = RecoveryWorker(client, RecordingResumer(), WORKER, clock=clock)
    await worker.resume_now(child)
    await worker.wait_for_inflight()
    seen: list[UsageEvent] = []

    class Sink:
        def usage(self, event: UsageEvent) -> None:
            seen.append(event)

    client.layer.usage.attach(Sink())
    client.executions.start(child, "download")
    client.executions.complete(child, "download", output_data={})
    assert [e.recovered for e in seen if e.kind == "run_completed"] == [False]
    count = count_day(client, clock.now.date())
    assert client.sessions.get(child).resume_count == 1
    assert (count.total("resumes"), count.total("recovered"), count.total("completed")) == (1, 0, 2)
