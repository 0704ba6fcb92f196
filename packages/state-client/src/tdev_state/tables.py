"""Create or delete an environment's tables from the schema declaration (LocalStack, tests, demos).

In AWS the tables come from infra (CDKTF), rendered from the same declaration. Usage:
`tdev --env local tables create` (what `make tables` runs).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from tdev_state._log import get_logger
from tdev_state.exceptions import StateError
from tdev_state.schema import ALL_TABLES

if TYPE_CHECKING:
    from tdev_state.dynamo import DynamoLayer

log = get_logger(__name__)


def create_tables(layer: DynamoLayer, *, wait_seconds: float = 120.0) -> list[str]:
    """Create every table of `layer`'s env that is missing, wait until ACTIVE, enable TTL. Idempotent."""
    env = layer.config.env
    names = []
    for spec in ALL_TABLES:
        request = spec.create_table_request(env)
        name = request["TableName"]
        names.append(name)
        try:
            layer.dynamodb.create_table(**request)
            log.info("table.created", table=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceInUseException":
                raise StateError(f"CreateTable {name} failed: {exc}") from None
    for spec in ALL_TABLES:
        name = spec.physical_name(env)
        _wait_active(layer, name, wait_seconds)
        if spec.ttl_attribute:
            try:
                layer.dynamodb.update_time_to_live(
                    TableName=name,
                    TimeToLiveSpecification={"Enabled": True, "AttributeName": spec.ttl_attribute},
                )
            except ClientError as exc:
                # Already enabled is fine; anything else is not.
                if "already enabled" not in str(exc).lower() and "TimeToLive is already" not in str(exc):
                    raise StateError(f"UpdateTimeToLive {name} failed: {exc}") from None
    return names


def delete_tables(layer: DynamoLayer) -> list[str]:
    """Delete every table of `layer`'s env that exists (tests clean up with this)."""
    deleted = []
    for spec in ALL_TABLES:
        name = spec.physical_name(layer.config.env)
        try:
            layer.dynamodb.delete_table(TableName=name)
            deleted.append(name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise StateError(f"DeleteTable {name} failed: {exc}") from None
    return deleted


def _wait_active(layer: DynamoLayer, name: str, wait_seconds: float) -> None:
    deadline = time.monotonic() + wait_seconds
    while True:
        table = layer.dynamodb.describe_table(TableName=name)["Table"]
        indexes = table.get("GlobalSecondaryIndexes", [])
        if table.get("TableStatus") == "ACTIVE" and all(
            i.get("IndexStatus", "ACTIVE") == "ACTIVE" for i in indexes
        ):
            return
        if time.monotonic() > deadline:
            raise StateError(f"table {name} not ACTIVE after {wait_seconds:.0f}s")
        time.sleep(0.5)
