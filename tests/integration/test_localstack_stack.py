"""The endpoint itself behaves like DynamoDB where this project depends on it."""

from __future__ import annotations

import uuid

import pytest
from botocore.exceptions import ClientError

from tdev_state import StateClient


@pytest.fixture
def scratch_table(client: StateClient) -> object:
    ddb = client.layer.dynamodb
    name = f"t-developer-{client.config.env}-scratch-{uuid.uuid4().hex[:6]}"
    ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    ddb.get_waiter("table_exists").wait(TableName=name)
    yield name
    ddb.delete_table(TableName=name)


def test_transaction_token_makes_a_repeat_a_no_op(client: StateClient, scratch_table: str) -> None:
    """TransactWriteItems sent twice with one ClientRequestToken applies once."""
    ddb = client.layer.dynamodb
    items = [
        {
            "Update": {
                "TableName": scratch_table,
                "Key": {"pk": {"S": "counter"}},
                "UpdateExpression": "ADD n :one",
                "ExpressionAttributeValues": {":one": {"N": "1"}},
            }
        }
    ]
    token = str(uuid.uuid4())
    for _ in range(2):
        ddb.transact_write_items(TransactItems=items, ClientRequestToken=token)  # type: ignore[arg-type]
    item = ddb.get_item(TableName=scratch_table, Key={"pk": {"S": "counter"}}, ConsistentRead=True)
    assert item["Item"]["n"] == {"N": "1"}


def test_consumed_capacity_follows_item_size(client: StateClient, scratch_table: str) -> None:
    """A 5 KB put reports 5 write units (1 per KB) — the basis of every cost figure we publish."""
    response = client.layer.dynamodb.put_item(
        TableName=scratch_table,
        Item={"pk": {"S": "five"}, "blob": {"S": "x" * 5000}},
        ReturnConsumedCapacity="TOTAL",
    )
    assert response["ConsumedCapacity"]["CapacityUnits"] == 5.0


def test_items_over_400_kb_are_rejected(client: StateClient, scratch_table: str) -> None:
    """A 401 KB item is refused with DynamoDB's size error."""
    with pytest.raises(ClientError, match="Item size has exceeded"):
        client.layer.dynamodb.put_item(
            TableName=scratch_table, Item={"pk": {"S": "big"}, "blob": {"S": "x" * 401 * 1024}}
        )
