"""The schema declaration and the configuration: names, keys and refusals."""

from __future__ import annotations

import pytest

from tdev_state import ConfigurationError, StateConfig
from tdev_state.schema import (
    AGENT_EXECUTIONS,
    ALL_TABLES,
    METRICS,
    PIPELINE_SESSIONS,
    USER_PROJECTS,
    TableNames,
)


def test_table_names_follow_the_plan() -> None:
    """Physical names are t-developer-{env}-{table}."""
    names = TableNames("dev")
    assert (names.executions, names.sessions, names.projects, names.metrics) == (
        "t-developer-dev-agent-executions",
        "t-developer-dev-pipeline-sessions",
        "t-developer-dev-user-projects",
        "t-developer-dev-metrics",
    )


def test_keys_are_exactly_the_plans() -> None:
    """Primary keys keep the plan's names and string types; time-sorted index keys are Number, as the plan
    types timestamps."""
    assert AGENT_EXECUTIONS.key_names == ("execution_id", "agent_name")
    assert PIPELINE_SESSIONS.key_names == ("session_id",)
    assert USER_PROJECTS.key_names == ("user_id", "project_id")
    assert METRICS.key_names == ("date", "metric_name")
    for spec in ALL_TABLES:
        request = spec.create_table_request("dev")
        types = {a["AttributeName"]: a["AttributeType"] for a in request["AttributeDefinitions"]}
        for name in spec.key_names:
            assert types[name] == "S"
        for name in {"created_at", "stalled_at", "last_accessed"} & set(types):
            assert types[name] == "N"


def test_recovery_index_is_sparse_on_recovery_shard() -> None:
    """The recovery index is keyed on an attribute only open sessions carry."""
    index = PIPELINE_SESSIONS.index("by-recovery")
    assert index.partition_key.name == "recovery_shard"
    assert index.sort_key is not None
    assert index.sort_key.name == "stalled_at"
    assert index.projection == "KEYS_ONLY"


@pytest.mark.parametrize("env", ["", "Dev", "a_b", "-x", "x-", "a" * 33, "dev prod", "ümlaut"])
def test_bad_env_names_are_refused(env: str) -> None:
    """Env names that cannot be part of a table name raise ConfigurationError with the rule."""
    with pytest.raises(ConfigurationError, match="lowercase letters"):
        StateConfig(env=env)


def test_plain_http_is_refused_outside_local() -> None:
    """A non-loopback plain-HTTP endpoint is refused for non-local envs."""
    with pytest.raises(ConfigurationError, match="TLS"):
        StateConfig(env="prod", endpoint_url="http://dynamo.example.internal:8000")
    StateConfig(env="prod", endpoint_url="https://dynamo.example.internal")
    StateConfig(env="t123", endpoint_url="http://127.0.0.1:4566")


def test_from_env_reads_the_documented_variables() -> None:
    """from_env maps TDEV_ENV, AWS_ENDPOINT_URL, AWS_REGION, TDEV_PAYLOAD_BUCKET, TDEV_RETENTION_DAYS."""
    config = StateConfig.from_env(
        {
            "TDEV_ENV": "dev",
            "AWS_ENDPOINT_URL": "https://ddb.example",
            "AWS_REGION": "eu-west-1",
            "TDEV_PAYLOAD_BUCKET": "tdev-b",
            "TDEV_RETENTION_DAYS": "30",
        }
    )
    assert (config.env, config.region, config.payload_bucket, config.retention_days) == (
        "dev",
        "eu-west-1",
        "tdev-b",
        30,
    )
    with pytest.raises(ConfigurationError, match="whole number"):
        StateConfig.from_env({"TDEV_RETENTION_DAYS": "soon"})


def test_item_budget_cannot_exceed_dynamodb_limit() -> None:
    """max_item_bytes above 400 KB is refused."""
    with pytest.raises(ConfigurationError, match="400"):
        StateConfig(env="dev", max_item_bytes=500 * 1024)
