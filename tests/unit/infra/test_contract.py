"""Contract: the tables Terraform would create are the tables the schema declares — and the tables the state
client creates on LocalStack/moto (`create_tables()`), read back with DescribeTable.

Expected values are built from the TableSpec fields directly, not from the request the stack renders, so a
slip in the rendering cannot agree with itself.
"""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from tdev_state import StateClient
from tdev_state.schema import ALL_TABLES, IndexSpec, TableSpec

from .synth import STACKS, Synth


def _expected(spec: TableSpec) -> dict[str, Any]:
    keys = {spec.partition_key.name: spec.partition_key.type}
    if spec.sort_key:
        keys[spec.sort_key.name] = spec.sort_key.type
    for index in spec.indexes:
        keys[index.partition_key.name] = index.partition_key.type
        if index.sort_key:
            keys[index.sort_key.name] = index.sort_key.type

    def index_view(index: IndexSpec) -> tuple[Any, ...]:
        return (
            index.name,
            None if index.local else index.partition_key.name,
            index.sort_key.name if index.sort_key else None,
            index.projection,
            tuple(sorted(index.non_key_attributes)),
        )

    return {
        "hash": spec.partition_key.name,
        "range": spec.sort_key.name if spec.sort_key else None,
        "attributes": keys,
        "gsi": sorted(index_view(i) for i in spec.indexes if not i.local),
        "lsi": sorted(index_view(i) for i in spec.indexes if i.local),
        "ttl": spec.ttl_attribute,
        "stream": spec.stream,
    }


def _synthesized(table: dict[str, Any]) -> dict[str, Any]:
    def view(i: dict[str, Any], local: bool) -> tuple[Any, ...]:
        return (
            i["name"],
            None if local else i["hash_key"],
            i.get("range_key"),
            i["projection_type"],
            tuple(sorted(i.get("non_key_attributes") or ())),
        )

    return {
        "hash": table["hash_key"],
        "range": table.get("range_key"),
        "attributes": {a["name"]: a["type"] for a in table["attribute"]},
        "gsi": sorted(view(i, False) for i in table.get("global_secondary_index", [])),
        "lsi": sorted(view(i, True) for i in table.get("local_secondary_index", [])),
        "ttl": table["ttl"]["attribute_name"] if table.get("ttl", {}).get("enabled") else None,
        "stream": bool(table.get("stream_enabled")),
    }


@pytest.mark.parametrize("env", STACKS)
def test_synthesized_tables_equal_the_schema(synth: Synth, env: str) -> None:
    by_name = {t["name"]: t for t in synth.resources(env, "aws_dynamodb_table").values()}
    for spec in ALL_TABLES:
        assert _synthesized(by_name[spec.physical_name(env)]) == _expected(spec), spec.logical_name


def test_tables_the_client_creates_equal_the_synthesized_ones(synth: Synth, client: StateClient) -> None:
    """What tests run against (create_tables) is what Terraform would create: compared via DescribeTable."""
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    synthesized = {
        t["name"].removeprefix("t-developer-dev-"): _synthesized(t)
        for t in synth.resources("dev", "aws_dynamodb_table").values()
    }
    for spec in ALL_TABLES:
        desc = ddb.describe_table(TableName=spec.physical_name(client.config.env))["Table"]
        ttl = ddb.describe_time_to_live(TableName=spec.physical_name(client.config.env))[
            "TimeToLiveDescription"
        ]

        def key(schema: list[dict[str, str]], kind: str) -> str | None:
            return next((k["AttributeName"] for k in schema if k["KeyType"] == kind), None)

        def view(i: dict[str, Any], local: bool) -> tuple[Any, ...]:
            return (
                i["IndexName"],
                None if local else key(i["KeySchema"], "HASH"),
                key(i["KeySchema"], "RANGE"),
                i["Projection"]["ProjectionType"],
                tuple(sorted(i["Projection"].get("NonKeyAttributes", ()))),
            )

        live = {
            "hash": key(desc["KeySchema"], "HASH"),
            "range": key(desc["KeySchema"], "RANGE"),
            "attributes": {a["AttributeName"]: a["AttributeType"] for a in desc["AttributeDefinitions"]},
            "gsi": sorted(view(i, False) for i in desc.get("GlobalSecondaryIndexes", [])),
            "lsi": sorted(view(i, True) for i in desc.get("LocalSecondaryIndexes", [])),
            "ttl": ttl.get("AttributeName") if ttl.get("TimeToLiveStatus") == "ENABLED" else None,
            "stream": bool(desc.get("StreamSpecification", {}).get("StreamEnabled")),
        }
        assert live == synthesized[spec.logical_name], spec.logical_name
