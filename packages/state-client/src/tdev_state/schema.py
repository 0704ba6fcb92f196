"""The one declaration of the four tables: names, keys, indexes, TTL.

Timestamps are Number (epoch seconds, microseconds kept), as the plan types them, so index sort keys on time
are numeric too.

Everything that creates or checks a table is generated from here: `create_tables()` for LocalStack and tests,
the CDKTF stacks in `infra/`, and the contract test between them. Never re-type a key name elsewhere; import
the spec. docs/data-model.md explains each index by the access pattern that needs it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from tdev_state.exceptions import ConfigurationError

AttributeType = Literal["S", "N", "B"]
Projection = Literal["ALL", "KEYS_ONLY", "INCLUDE"]

#: Environment names become part of table names: `t-developer-{env}-pipeline-sessions`.
ENV_NAME_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
TABLE_NAME_PREFIX = "t-developer"

#: The recovery index spreads open sessions over this many partition-key values per status, so heartbeats
#: of many concurrent runs never concentrate on one GSI partition (1,000 WCU/s per partition key).
RECOVERY_INDEX_SHARDS = 4

#: What a table's stream carries. KEYS_ONLY: the one consumer (`tdev_state.events_stream`) only needs to know
#: which run moved — it reads the run's items itself, so a lost record costs a read, never a gap — and an
#: image would put every agent's inline payload (up to 400 KB) into the stream once more.
STREAM_VIEW_TYPE = "KEYS_ONLY"


@dataclass(frozen=True)
class KeyAttribute:
    """One key attribute: its name and DynamoDB scalar type."""

    name: str
    type: AttributeType = "S"


@dataclass(frozen=True)
class IndexSpec:
    """A global or local secondary index."""

    name: str
    partition_key: KeyAttribute
    sort_key: KeyAttribute | None
    projection: Projection
    non_key_attributes: tuple[str, ...] = ()
    local: bool = False


@dataclass(frozen=True)
class TableSpec:
    """A table: logical name (the suffix of its physical name), keys, indexes, TTL attribute and whether it
    has a DynamoDB stream (`STREAM_VIEW_TYPE`)."""

    logical_name: str
    partition_key: KeyAttribute
    sort_key: KeyAttribute | None
    indexes: tuple[IndexSpec, ...] = ()
    ttl_attribute: str | None = "expires_at"
    stream: bool = False
    description: str = ""

    def physical_name(self, env: str) -> str:
        """`t-developer-{env}-{logical_name}`, after checking the env name."""
        return f"{TABLE_NAME_PREFIX}-{validate_env_name(env)}-{self.logical_name}"

    def index(self, name: str) -> IndexSpec:
        """The index called `name` (KeyError if this table has none)."""
        for spec in self.indexes:
            if spec.name == name:
                return spec
        raise KeyError(f"table {self.logical_name} has no index {name!r}")

    @property
    def key_names(self) -> tuple[str, ...]:
        """The primary key's attribute names, partition key first."""
        return (self.partition_key.name,) + ((self.sort_key.name,) if self.sort_key else ())

    def attribute_definitions(self) -> list[dict[str, str]]:
        """Every attribute used in a key of the table or an index, each once."""
        attrs: dict[str, str] = {}
        for key in (self.partition_key, self.sort_key):
            if key:
                attrs[key.name] = key.type
        for index in self.indexes:
            for key in (index.partition_key, index.sort_key):
                if key:
                    attrs[key.name] = key.type
        return [{"AttributeName": n, "AttributeType": t} for n, t in sorted(attrs.items())]

    def create_table_request(self, env: str, *, stream: bool = True) -> dict[str, Any]:
        """The CreateTable request (on-demand) for this table in `env`; infra renders the same fields.

        `stream=False` leaves the stream out even where the spec has one: a test's tables that no stream
        consumer reads (LocalStack spends ~20 ms more per transaction on a table with a stream)."""
        request: dict[str, Any] = {
            "TableName": self.physical_name(env),
            "KeySchema": _key_schema(self.partition_key, self.sort_key),
            "AttributeDefinitions": self.attribute_definitions(),
            "BillingMode": "PAY_PER_REQUEST",
        }
        gsis = [_index_request(i) for i in self.indexes if not i.local]
        lsis = [_index_request(i) for i in self.indexes if i.local]
        if gsis:
            request["GlobalSecondaryIndexes"] = gsis
        if lsis:
            request["LocalSecondaryIndexes"] = lsis
        if self.stream and stream:
            request["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": STREAM_VIEW_TYPE}
        return request


def _key_schema(pk: KeyAttribute, sk: KeyAttribute | None) -> list[dict[str, str]]:
    schema = [{"AttributeName": pk.name, "KeyType": "HASH"}]
    if sk:
        schema.append({"AttributeName": sk.name, "KeyType": "RANGE"})
    return schema


def _index_request(index: IndexSpec) -> dict[str, Any]:
    projection: dict[str, Any] = {"ProjectionType": index.projection}
    if index.projection == "INCLUDE":
        projection["NonKeyAttributes"] = list(index.non_key_attributes)
    return {
        "IndexName": index.name,
        "KeySchema": _key_schema(index.partition_key, index.sort_key),
        "Projection": projection,
    }


def validate_env_name(env: str) -> str:
    """Return `env` if it can be part of a table name, else raise ConfigurationError saying why."""
    if not isinstance(env, str) or not ENV_NAME_PATTERN.fullmatch(env):
        raise ConfigurationError(
            f"environment name {env!r} is not usable in a table name: use 1-32 lowercase letters, digits "
            "or inner hyphens, e.g. 'local', 'dev', 'prod' or a test prefix like 't3f9a1c2e'"
        )
    return env


# --- the four tables ---------------------------------------------------------------------------------------

AGENT_EXECUTIONS = TableSpec(
    logical_name="agent-executions",
    partition_key=KeyAttribute("execution_id"),
    # Stored as "<key>#agent" (the agent's declared key, tdev_state.agents): one Query returns a run in order.
    sort_key=KeyAttribute("agent_name"),
    # For consumers of agent-level changes; the live events read the sessions stream (every agent
    # transition is one transaction with its session, so that stream names every moved run).
    stream=True,
    description="One item per agent of a run; execution_id is the run's session_id.",
)

PIPELINE_SESSIONS = TableSpec(
    logical_name="pipeline-sessions",
    partition_key=KeyAttribute("session_id"),
    sort_key=None,
    indexes=(
        # A user's sessions, newest first. KEYS_ONLY: the index is written only when a session is created
        # (user_id and created_at never change), not on every agent transition.
        # Sparse too: a run without a user (the orchestrator has none) is not in it.
        IndexSpec("by-user", KeyAttribute("user_id"), KeyAttribute("created_at", "N"), "KEYS_ONLY"),
        # Sparse: `recovery_shard` ("ACTIVE#n" / "FAILED#n") exists only while a run is open, so the
        # recovery sweep reads only open runs older than a cutoff, never a Scan of finished ones.
        # Sorted by `stalled_at`, when the run's last writer said it would count as stalled (its current
        # agent's deadline, or the heartbeat timeout: tdev_state.runs.policy), rewritten at most once per
        # liveness interval unless it moves earlier, and KEYS_ONLY: the index entry changes only when it must.
        IndexSpec(
            "by-recovery", KeyAttribute("recovery_shard"), KeyAttribute("stalled_at", "N"), "KEYS_ONLY"
        ),
        # Every run by the UTC day it started, newest first: what operators list when they have no user id
        # (finished runs, runs of any status). KEYS_ONLY and keyed on attributes that never change, so it
        # costs one index write per run, at creation; a day's runs share a partition key, and one write per
        # run keeps that far below a partition's 1,000 writes per second.
        IndexSpec("by-day", KeyAttribute("created_day"), KeyAttribute("created_at", "N"), "KEYS_ONLY"),
    ),
    # Every versioned transition bumps the session: its stream tells the live events which run moved.
    stream=True,
    description="One item per pipeline run.",
)

USER_PROJECTS = TableSpec(
    logical_name="user-projects",
    partition_key=KeyAttribute("user_id"),
    sort_key=KeyAttribute("project_id"),
    indexes=(
        # A user's projects, most recently accessed first; an LSI allows strongly consistent paging.
        IndexSpec(
            "by-last-accessed",
            KeyAttribute("user_id"),
            KeyAttribute("last_accessed", "N"),
            "ALL",
            local=True,
        ),
    ),
    ttl_attribute=None,
    description="One item per generated project of a user.",
)

METRICS = TableSpec(
    logical_name="metrics",
    partition_key=KeyAttribute("date"),
    # Stored as "metric#agent#HH[#variant]": per metric, per agent, per hour in one partition per day.
    sort_key=KeyAttribute("metric_name"),
    description="Aggregated pipeline metrics, one item per (date, metric, agent, hour, variant).",
)

ALL_TABLES: tuple[TableSpec, ...] = (AGENT_EXECUTIONS, PIPELINE_SESSIONS, USER_PROJECTS, METRICS)


@dataclass(frozen=True)
class TableNames:
    """The physical table names of one environment."""

    env: str
    executions: str = field(init=False)
    sessions: str = field(init=False)
    projects: str = field(init=False)
    metrics: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "executions", AGENT_EXECUTIONS.physical_name(self.env))
        object.__setattr__(self, "sessions", PIPELINE_SESSIONS.physical_name(self.env))
        object.__setattr__(self, "projects", USER_PROJECTS.physical_name(self.env))
        object.__setattr__(self, "metrics", METRICS.physical_name(self.env))
