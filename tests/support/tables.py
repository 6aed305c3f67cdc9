"""The claim table as the stack defines it, for tests and the local stack.

Partition key ``ObjectID`` (string), on-demand capacity, TTL on ``ExpiresAt``: the same
attribute :mod:`aggregator.claims.store` writes, so that completed claims really expire.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types_boto3_dynamodb import DynamoDBClient

TTL_ATTRIBUTE = "ExpiresAt"


def create_claims_table(client: DynamoDBClient, name: str) -> None:
    """Create the table, wait until it is active and turn TTL on."""
    client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "ObjectID", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "ObjectID", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    client.update_time_to_live(
        TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE}
    )


def scan_claims(client: DynamoDBClient, name: str) -> dict[str, dict[str, Any]]:
    """Every item of the table, as ``ObjectID -> {attribute: plain value}``.

    Numbers become floats, strings stay strings, lists become lists of plain values.
    """
    items: dict[str, dict[str, Any]] = {}
    kwargs: dict[str, Any] = {"TableName": name, "ConsistentRead": True}
    while True:
        page = client.scan(**kwargs)
        for item in page["Items"]:
            plain = {name: _plain(value) for name, value in item.items()}
            items[str(plain["ObjectID"])] = plain
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _plain(value: Any) -> Any:
    if "N" in value:
        return float(value["N"])
    if "L" in value:
        return [_plain(v) for v in value["L"]]
    return value.get("S")
