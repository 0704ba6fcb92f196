"""Bad input, generated: every public call of the three packages and the CLIs gets wrong types, missing keys,
empty or oversized strings, illegal statuses, unknown agents, non-JSON values, NaN, huge payloads and wrong
env names. Each must raise the package's own typed error, naming what was wrong — and a raw boto3 look at
every table and the bucket must show nothing was written.
"""

from __future__ import annotations

import asyncio
import io
import math
import os
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tdev_metrics
import tdev_state
from tdev_metrics import CollectorConfig, MetricsCollector, MetricsReader, MetricValidationError
from tdev_metrics import cli as metrics_cli
from tdev_recovery import RetryPolicy, WorkerConfig
from tdev_recovery import cli as worker_cli
from tdev_recovery.exceptions import RecoveryError, ResumerConfigError
from tdev_recovery.resumers import load_resumer
from tdev_state import (
    AGENTS,
    ConfigurationError,
    PayloadTooLargeError,
    StateClient,
    StateConfig,
    StateError,
    ValidationError,
)
from tdev_state import cli as tdev_cli
from tdev_state.schema import ALL_TABLES
from tdev_state.testing import BUCKET, FakeClock, make_client

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
)

# --- the bad values ---

wrong_types = st.one_of(
    st.integers(),
    st.floats(allow_nan=True),
    st.booleans(),
    st.binary(max_size=8),
    st.lists(st.text(max_size=3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
bad_ids = st.one_of(
    wrong_types,
    st.none(),
    st.just(""),
    st.text(alphabet=" \t\n", min_size=1, max_size=4),
    st.text(alphabet="ab", min_size=257, max_size=300),  # over the 256-byte key limit
    st.text(alphabet="abc", max_size=5).map(lambda s: s + "\x00" + s),  # control character
)
bad_optional_ids = bad_ids.filter(lambda v: v is not None)
#: What a read refuses: a read looks a stored key up, and keys stored before the identifier rule stay
#: readable (`identifier(existing=True)`), so only non-strings, "" and keys longer than any stored one.
bad_lookup_ids = st.one_of(
    wrong_types, st.none(), st.just(""), st.text(alphabet="ab", min_size=2049, max_size=2100)
)
bad_agents = st.one_of(wrong_types, st.none(), st.text(max_size=20).filter(lambda s: s not in AGENTS))
bad_statuses = st.one_of(
    wrong_types,
    st.text(max_size=12).filter(lambda s: s not in {"ACTIVE", "COMPLETED", "FAILED", "ABANDONED"}),
)
bad_text = st.one_of(wrong_types, st.just(""), st.text(alphabet="xy", min_size=4097, max_size=4200))
bad_limits = st.one_of(
    st.integers(max_value=0), st.integers(min_value=1001), st.floats(), st.text(max_size=3), st.booleans()
)
bad_ints = st.one_of(st.integers(max_value=-1), st.floats(), st.text(max_size=3), st.booleans())
bad_numbers = st.one_of(
    st.just(math.nan),
    st.just(math.inf),
    st.just(-math.inf),
    st.floats(max_value=-0.001),
    st.text(max_size=3),
    st.none(),
)


class _Opaque:
    """Not JSON: no attributes to store (FastAPI's encoder refuses it too)."""

    __slots__ = ()


# Plain Python values (datetime, Decimal, sets, Paths, dataclasses, UTF-8 bytes, objects with attributes...)
# have a documented JSON form now (test_codec); these have none.
non_json = st.one_of(
    st.just(math.nan),
    st.just({"x": [1.0, math.inf]}),
    st.just({"price": Decimal("NaN")}),
    st.just({1: "a", "1": "b"}),
    st.just([b"\xff\xfe not UTF-8"]),
    st.builds(_Opaque),
    st.just({"lone": "\ud800"}),
    st.recursive(st.builds(_Opaque), lambda c: st.lists(c, min_size=1, max_size=2), max_leaves=3),
)
bad_env_names = st.one_of(
    st.just(""),
    st.just("Prod"),
    st.just("has space"),
    st.just("-dev"),
    st.just("dev-"),
    st.text(alphabet="abc", min_size=33, max_size=40),
    st.text(alphabet="ABC_/.!", min_size=1, max_size=6),
    wrong_types,
)
#: ~880 KB of incompressible JSON: over any item's budget once no bucket can take it.
HUGE = os.urandom(440_000).hex()


# --- "nothing was written" ---


def snapshot(env: str = "unit") -> tuple[Any, ...]:
    """Every item of every table and every object of the bucket, read with raw boto3."""
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    s3 = boto3.client("s3", region_name="us-east-1")
    tables = []
    for spec in ALL_TABLES:
        items = ddb.scan(TableName=spec.physical_name(env), ConsistentRead=True)["Items"]
        tables.append(sorted(repr(sorted(i.items())) for i in items))
    objects = sorted(o["Key"] + o["ETag"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))
    return (*tables, objects)


@dataclass(frozen=True)
class Case:
    """One public call with one argument replaced by a generated bad value."""

    name: str
    values: st.SearchStrategy[Any]
    call: Callable[[StateClient, str, Any], Any]
    error: type[Exception] = ValidationError
    mentions: str | None = None


def _run(result: Any) -> Any:
    return asyncio.run(result) if asyncio.iscoroutine(result) else result


SID = "s-known"

CASES = [
    Case(
        "sessions.create user_id",
        bad_optional_ids,
        lambda c, s, v: c.sessions.create(user_id=v, project_name="p"),
        mentions="user_id",
    ),
    Case(
        "sessions.create session_id",
        bad_optional_ids,
        lambda c, s, v: c.sessions.create(session_id=v, user_id="u", project_name="p"),
        mentions="session_id",
    ),
    Case(
        "sessions.create project_name",
        bad_text,
        lambda c, s, v: c.sessions.create(user_id="u", project_name=v),
        mentions="project_name",
    ),
    Case(
        "sessions.create pipeline_type",
        bad_statuses,
        lambda c, s, v: c.sessions.create(user_id="u", project_name="p", pipeline_type=v),
        mentions="pipeline_type",
    ),
    Case(
        "sessions.create metadata",
        non_json,
        lambda c, s, v: c.sessions.create(user_id="u", project_name="p", metadata=v),
        mentions="metadata",
    ),
    Case("sessions.get", bad_lookup_ids, lambda c, s, v: c.sessions.get(v), mentions="session_id"),
    Case(
        "sessions.list_for_user user",
        bad_lookup_ids,
        lambda c, s, v: c.sessions.list_for_user(v),
        mentions="user_id",
    ),
    Case(
        "sessions.list_for_user limit",
        bad_limits,
        lambda c, s, v: c.sessions.list_for_user("u", limit=v),
        mentions="limit",
    ),
    Case(
        "sessions.list_for_user cursor",
        st.one_of(st.text(max_size=30), wrong_types),
        lambda c, s, v: c.sessions.list_for_user("u", cursor=v),
        mentions="cursor",
    ),
    Case(
        "sessions.update status",
        bad_statuses,
        lambda c, s, v: c.sessions.update(s, expected_version=1, status=v),
        mentions="status",
    ),
    Case(
        "sessions.update expected_version",
        bad_ints,
        lambda c, s, v: c.sessions.update(s, expected_version=v, progress=1),
        mentions="expected_version",
    ),
    Case(
        "sessions.update progress",
        st.one_of(st.integers(min_value=10), bad_ints),
        lambda c, s, v: c.sessions.update(s, expected_version=1, progress=v),
        mentions="progress",
    ),
    Case(
        "sessions.update current_agent",
        bad_agents.filter(lambda v: v is not None),
        lambda c, s, v: c.sessions.update(s, expected_version=1, current_agent=v),
    ),
    Case(
        "sessions.update metadata",
        non_json,
        lambda c, s, v: c.sessions.update(s, expected_version=1, metadata=v),
        mentions="metadata",
    ),
    Case("sessions.heartbeat", bad_ids, lambda c, s, v: c.sessions.heartbeat(v), mentions="session_id"),
    Case("executions.start agent", bad_agents, lambda c, s, v: c.executions.start(s, v)),
    Case(
        "executions.start session",
        bad_ids,
        lambda c, s, v: c.executions.start(v, "ui_selection"),
        mentions="session_id",
    ),
    Case(
        "executions.start input_data",
        non_json,
        lambda c, s, v: c.executions.start(s, "ui_selection", input_data=v),
        mentions="input_data",
    ),
    Case(
        "executions.start project_id",
        bad_optional_ids,
        lambda c, s, v: c.executions.start(s, "ui_selection", project_id=v),
        mentions="project_id",
    ),
    Case(
        "executions.complete output_data",
        non_json,
        lambda c, s, v: c.executions.complete(s, "nl_input", output_data=v),
        mentions="output_data",
    ),
    Case("executions.complete agent", bad_agents, lambda c, s, v: c.executions.complete(s, v)),
    Case(
        "executions.fail error_message",
        st.one_of(wrong_types, st.none(), st.just(""), st.just("   ")),
        lambda c, s, v: c.executions.fail(s, "nl_input", error_message=v),
        mentions="error_message",
    ),
    Case(
        "executions.fail output_data",
        non_json,
        lambda c, s, v: c.executions.fail(s, "nl_input", error_message="x", output_data=v),
        mentions="output_data",
    ),
    Case(
        "executions.retry", bad_ids, lambda c, s, v: c.executions.retry(v, "nl_input"), mentions="session_id"
    ),
    Case("executions.list", bad_lookup_ids, lambda c, s, v: c.executions.list(v)),
    Case("executions.get agent", bad_agents, lambda c, s, v: c.executions.get(s, v)),
    Case(
        "projects.save user_id",
        bad_ids,
        lambda c, s, v: c.projects.save(user_id=v, project_id="p", project_name="n"),
        mentions="user_id",
    ),
    Case(
        "projects.save project_name",
        bad_text,
        lambda c, s, v: c.projects.save(user_id="u", project_id="p", project_name=v),
        mentions="project_name",
    ),
    Case(
        "projects.save tech_stack",
        st.one_of(
            st.text(min_size=1, max_size=5),
            st.lists(st.integers(), min_size=1, max_size=3),
            st.just(["x"] * 101),
        ),
        lambda c, s, v: c.projects.save(user_id="u", project_id="p", project_name="n", tech_stack=v),
        mentions="tech_stack",
    ),
    Case(
        "projects.save size_mb",
        bad_numbers.filter(lambda v: v is not None),
        lambda c, s, v: c.projects.save(user_id="u", project_id="p", project_name="n", size_mb=v),
        mentions="size_mb",
    ),
    Case(
        "projects.save description",
        st.one_of(wrong_types, st.text(alphabet="z", min_size=4097, max_size=4100)),
        lambda c, s, v: c.projects.save(user_id="u", project_id="p", project_name="n", description=v),
        mentions="description",
    ),
    Case("projects.get", bad_ids, lambda c, s, v: c.projects.get("u", v), mentions="project_id"),
    Case(
        "projects.record_download",
        bad_ids,
        lambda c, s, v: c.projects.record_download(v, "p"),
        mentions="user_id",
    ),
    Case("projects.delete", bad_ids, lambda c, s, v: c.projects.delete("u", v), mentions="project_id"),
    Case(
        "projects.list_for_user limit",
        bad_limits,
        lambda c, s, v: c.projects.list_for_user("u", limit=v),
        mentions="limit",
    ),
    # The plan's dict calls, as awaitables.
    Case(
        "save_pipeline_session not a dict",
        wrong_types.filter(lambda v: not isinstance(v, dict)),
        lambda c, s, v: tdev_state.save_pipeline_session(v),
    ),
    Case(
        "save_pipeline_session keys",
        st.dictionaries(st.sampled_from(["user_id", "bogus", "status"]), st.text(max_size=3), max_size=3),
        lambda c, s, v: tdev_state.save_pipeline_session(v),
    ),
    Case(
        "save_pipeline_session status",
        bad_statuses,
        lambda c, s, v: tdev_state.save_pipeline_session(
            {"session_id": "n1", "user_id": "u", "project_name": "p", "status": v}
        ),
    ),
    Case(
        "update_agent_execution status",
        bad_statuses,
        lambda c, s, v: tdev_state.update_agent_execution(
            {"execution_id": s, "agent_name": "ui_selection", "status": v}
        ),
    ),
    Case(
        "update_agent_execution agent",
        bad_agents,
        lambda c, s, v: tdev_state.update_agent_execution(
            {"execution_id": s, "agent_name": v, "status": "RUNNING"}
        ),
    ),
    Case(
        "update_agent_execution output",
        non_json,
        lambda c, s, v: tdev_state.update_agent_execution(
            {"execution_id": s, "agent_name": "nl_input", "status": "COMPLETED", "output_data": v}
        ),
    ),
    Case(
        "save_user_project",
        st.dictionaries(
            st.sampled_from(["user_id", "project_id", "project_name", "x"]), bad_ids, min_size=1, max_size=4
        ),
        lambda c, s, v: tdev_state.save_user_project(v),
    ),
    Case(
        "get_failed_sessions",
        st.one_of(st.floats(max_value=-0.1), st.text(max_size=3)),
        lambda c, s, v: tdev_state.get_failed_sessions(older_than=v),
    ),
    Case("resume_pipeline", bad_ids, lambda c, s, v: tdev_state.resume_pipeline(v), error=StateError),
    # Huge payloads where no bucket can take them (the case's client has none, see below).
    Case(
        "executions.start huge input",
        st.just({"blob": HUGE}),
        lambda c, s, v: c.executions.start(s, "ui_selection", input_data=v),
        error=PayloadTooLargeError,
        mentions="input_data",
    ),
    Case(
        "sessions.create huge metadata",
        st.just([HUGE]),
        lambda c, s, v: c.sessions.create(user_id="u", project_name="p", metadata=v),
        error=PayloadTooLargeError,
        mentions="metadata",
    ),
]


@pytest.fixture
def scene(aws: None, clock: FakeClock) -> StateClient:
    """A session with nl_input RUNNING and a project, so calls reach validation, not 'not found'."""
    client = make_client(clock)
    client.sessions.create(session_id=SID, user_id="u", project_name="p")
    client.executions.start(SID, "nl_input")
    client.projects.save(user_id="u", project_id="p", project_name="n")
    tdev_state.configure(client)
    yield client
    tdev_state.configure(None)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@SETTINGS
@given(data=st.data())
def test_bad_input_is_refused_and_writes_nothing(scene: StateClient, case: Case, data: st.DataObject) -> None:
    value = data.draw(case.values, label=case.name)
    client = scene
    if case.error is PayloadTooLargeError:
        client = StateClient(StateConfig(env="unit"), clock=scene.executions._clock)  # no payload bucket
    before = snapshot()
    with pytest.raises(case.error) as info:
        _run(case.call(client, SID, value))
    message = str(info.value)
    assert len(message) > 15, message
    if case.mentions:
        assert case.mentions in message, message
    assert snapshot() == before, f"{case.name} wrote something before refusing {value!r:.80}"


# --- metrics collector and recovery worker ---

METRIC_CASES = [
    (
        "metric_name",
        st.one_of(wrong_types, st.just(""), st.text(alphabet="a#", min_size=300, max_size=310)),
        lambda m, v: m.record(v, 1.0, agent_name="parser"),
    ),
    (
        "value",
        bad_numbers.filter(lambda v: not isinstance(v, float) or not math.isfinite(v) or True),
        lambda m, v: m.record("m", v, agent_name="parser"),
    ),
    (
        "agent_name",
        st.one_of(wrong_types, st.just(""), st.text(alphabet="#", min_size=1, max_size=3)),
        lambda m, v: m.record("m", 1.0, agent_name=v),
    ),
    (
        "timestamp",
        st.one_of(st.text(max_size=4), st.just(math.nan), st.lists(st.integers(), max_size=1)),
        lambda m, v: m.record("m", 1.0, agent_name="parser", timestamp=v),
    ),
    (
        "variant",
        st.one_of(wrong_types, st.just(""), st.just("a#b")),
        lambda m, v: m.record("m", 1.0, agent_name="parser", variant=v),
    ),
    (
        "record_metric",
        st.one_of(
            wrong_types,
            st.dictionaries(st.sampled_from(["metric_name", "value", "zzz"]), st.integers(), max_size=2),
        ),
        lambda m, v: asyncio.run(tdev_metrics.record_metric(v)),
    ),
]


@pytest.mark.parametrize(("slot", "values", "call"), METRIC_CASES, ids=[c[0] for c in METRIC_CASES])
@SETTINGS
@given(data=st.data())
def test_metrics_bad_input_is_refused_and_flushes_nothing(
    client: StateClient,
    slot: str,
    values: st.SearchStrategy[Any],
    call: Callable[[MetricsCollector, Any], Any],
    data: st.DataObject,
) -> None:
    value = data.draw(values, label=slot)
    if slot == "value" and isinstance(value, float) and math.isfinite(value):
        value = "x"  # a finite float is a valid observation; test its wrong-type neighbour instead
    collector = MetricsCollector(client, CollectorConfig(), start=False)
    tdev_metrics.configure(collector)
    try:
        before = snapshot()
        with pytest.raises(MetricValidationError) as info:
            call(collector, value)
        assert len(str(info.value)) > 15
        assert collector.buffered_keys() == 0
        collector.flush()
        assert snapshot() == before
    finally:
        tdev_metrics.configure(None)
        collector.close()


@SETTINGS
@given(
    metric=st.one_of(st.just(""), st.just("a#b"), wrong_types),
    days=st.integers(min_value=367, max_value=2000),
)
def test_metrics_reader_refuses_bad_queries(client: StateClient, metric: Any, days: int) -> None:
    reader = MetricsReader(client)
    with pytest.raises(MetricValidationError):
        reader.hourly(metric, start=date(2026, 1, 1))
    with pytest.raises(MetricValidationError, match="366"):
        reader.daily("m", start=date(2026, 1, 1), end=date(2026, 1, 1) + timedelta(days=days))
    with pytest.raises(MetricValidationError, match="before"):
        reader.daily("m", start=date(2026, 1, 2), end=date(2026, 1, 1))


@SETTINGS
@given(
    lease=st.floats(min_value=-1e6, max_value=0.99, allow_nan=False),
    attempts=st.integers(max_value=0),
    concurrency=st.integers(max_value=0),
)
def test_worker_config_refuses_bad_values(lease: float, attempts: int, concurrency: int) -> None:
    with pytest.raises(RecoveryError, match="lease"):
        WorkerConfig(lease=timedelta(seconds=lease))
    with pytest.raises(RecoveryError, match="maximum_attempts"):
        RetryPolicy(maximum_attempts=attempts)
    with pytest.raises(RecoveryError, match="concurrency"):
        WorkerConfig(concurrency=concurrency)


@SETTINGS
@given(
    field=st.sampled_from(
        ["flush_interval", "flush_at_records", "max_keys", "overflow", "agents", "max_backoff"]
    ),
    value=st.one_of(
        st.just(0),
        st.just(-1),
        st.just(math.nan),
        st.just(math.inf),
        st.just("10"),
        st.just(True),
        st.just([1]),
    ),
)
def test_collector_config_refuses_bad_values(field: str, value: Any) -> None:
    if field == "flush_interval" and value is True:
        value = 0  # bool is refused too, but keep the example meaningful for every field
    with pytest.raises(MetricValidationError, match=field):
        CollectorConfig(**{field: value})


@SETTINGS
@given(
    field=st.sampled_from(
        ["poll_interval", "grace_period", "retry_delay", "stall_threshold", "worker_id", "batch_size"]
    ),
    value=st.one_of(
        st.just(0), st.just(-5), st.just(math.nan), st.just("x"), st.just(None), st.just(timedelta(0))
    ),
)
def test_worker_config_refuses_bad_fields(field: str, value: Any) -> None:
    if field == "worker_id" and value == "x":
        value = "   "  # "x" is a fine worker id; a blank one is not
    if field == "stall_threshold" and value is None:
        value = timedelta(seconds=-1)  # None is the default: each run's own window
    with pytest.raises(RecoveryError, match=field):
        WorkerConfig(**{field: value})


@SETTINGS
@given(
    spec=st.one_of(
        st.just(""), st.just("no_colon"), st.just("ftp://x"), st.just("nosuchmodule:fn"), st.just("os:sep")
    )
)
def test_resumer_specs_are_refused_with_a_typed_error(spec: str) -> None:
    with pytest.raises(ResumerConfigError):
        load_resumer(spec)


# --- env names and the CLIs ---


@SETTINGS
@given(env=bad_env_names)
def test_wrong_env_names_are_refused(env: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"environment name|env"):
        StateConfig(env=env)
    if isinstance(env, str):
        with pytest.raises(ConfigurationError):
            StateConfig.from_env({"TDEV_ENV": env})


def _cli(main: Callable[[list[str]], int], argv: list[str]) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
    return code, err.getvalue()


@SETTINGS
@given(
    env=st.one_of(
        st.sampled_from(["Prod", "has space", "dev-", "a_b", "x.y"]),
        st.text(alphabet="q", min_size=33, max_size=40),
    ),
    sid=st.one_of(st.just(""), st.text(alphabet="ab", min_size=2049, max_size=2060)),  # no key at all
    limit=st.integers(max_value=0),
    day=st.text(alphabet="abc9", min_size=1, max_size=8),
)
def test_clis_answer_bad_arguments_with_exit_2_and_write_nothing(
    scene: StateClient, env: str, sid: str, limit: int, day: str
) -> None:
    before = snapshot()
    for main, argv in (
        (tdev_cli.main, ["--env", env, "sessions", "list", "--status", "FAILED"]),
        (tdev_cli.main, ["--env", "unit", "sessions", "show", sid]),
        (tdev_cli.main, ["--env", "unit", "sessions", "list", "--user", "u", "--limit", str(limit)]),
        (tdev_cli.main, ["--env", "unit", "sessions", "list", "--status", "PAUSED"]),
        (metrics_cli.main, ["report", "--env", env]),
        (metrics_cli.main, ["report", "--env", "unit", "--from", day]),
        (worker_cli.main, ["--env", "unit", "--resumer", "x:y", "--lease", "0"]),
    ):
        code, err = _cli(main, argv)
        assert code == 2, (argv, code, err)
        assert err.strip(), argv
        assert "Traceback" not in err
    assert snapshot() == before
