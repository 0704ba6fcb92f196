"""Create or delete an environment's tables from the schema declaration (LocalStack, tests, demos).

In AWS the tables come from infra (CDKTF), rendered from the same declaration. Usage:
`tdev --env local tables create` (what `make tables` runs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from tdev_state.exceptions import StateError
from tdev_state.log import get_logger
from tdev_state.schema import ALL_TABLES

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.type_defs import TimeToLiveSpecificationTypeDef

    from tdev_state.storage import DynamoDoor

log = get_logger(__name__)


def create_tables(layer: DynamoDoor, *, wait_seconds: float = 120.0, streams: bool = True) -> list[str]:
    """Create every table of `layer`'s env that is missing, wait until ACTIVE, enable TTL. Idempotent.

    `streams=False` creates the tables without their streams (tests whose tables no stream consumer reads:
    a stream makes LocalStack's writes slower); an existing table is left as it is."""
    env = layer.config.env
    names = []
    for spec in ALL_TABLES:
        request = spec.create_table_request(env, stream=streams)
        name = request["TableName"]
        names.append(name)
        if _guarded(layer, "CreateTable", name, partial(layer.dynamodb.create_table, **request)):
            log.info("table.created", table=name)
    for spec in ALL_TABLES:
        name = spec.physical_name(env)
        _wait_active(layer, name, wait_seconds)
        if spec.ttl_attribute:
            ttl: TimeToLiveSpecificationTypeDef = {"Enabled": True, "AttributeName": spec.ttl_attribute}
            _guarded(
                layer,
                "UpdateTimeToLive",
                name,
                partial(layer.dynamodb.update_time_to_live, TableName=name, TimeToLiveSpecification=ttl),
            )
    return names


def delete_tables(layer: DynamoDoor) -> list[str]:
    """Delete every table of `layer`'s env that exists (tests clean up with this)."""
    deleted = []
    for spec in ALL_TABLES:
        name = spec.physical_name(layer.config.env)
        if _guarded(layer, "DeleteTable", name, partial(layer.dynamodb.delete_table, TableName=name)):
            deleted.append(name)
    return deleted


def _wait_active(layer: DynamoDoor, name: str, wait_seconds: float) -> None:
    deadline = time.monotonic() + wait_seconds
    while True:
        table = layer.guarded("DescribeTable", name, lambda: layer.dynamodb.describe_table(TableName=name))[
            "Table"
        ]
        indexes = table.get("GlobalSecondaryIndexes", [])
        if table.get("TableStatus") == "ACTIVE" and all(
            i.get("IndexStatus", "ACTIVE") == "ACTIVE" for i in indexes
        ):
            return
        if time.monotonic() > deadline:
            raise StateError(f"table {name} not ACTIVE after {wait_seconds:.0f}s")
        time.sleep(0.5)


#: Answers that mean "already so": the table exists (create), is gone (delete), TTL is on already.
_ALREADY = ("ResourceInUseException", "ResourceNotFoundException")


def _guarded(layer: DynamoDoor, op: str, table: str, call: Callable[[], object]) -> bool:
    """One table-management call through the layer's error boundary (an unreachable endpoint is one line
    naming it, never a botocore traceback): True if it acted, False if it was already so."""

    def attempt() -> bool:
        try:
            call()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            text = str(exc)
            if code in _ALREADY or "already enabled" in text.lower() or "TimeToLive is already" in text:
                return False
            raise
        return True

    acted: bool = layer.guarded(op, table, attempt)
    return acted
