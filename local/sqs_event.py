"""ReceiveMessage output -> the event Lambda's SQS event source mapping hands a function.

The shape follows the event Lambda builds: camelCase record fields, system attributes
as strings, message attributes re-keyed (``StringValue`` -> ``stringValue``, binary
values base64-encoded, empty list fields present), ``md5OfMessageAttributes`` only when
there are message attributes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from typing import Any

# What Lambda asks SQS for; ReceiveMessage returns nothing it is not asked for.
SYSTEM_ATTRIBUTES = ["All"]
MESSAGE_ATTRIBUTES = ["All"]


def record(message: Mapping[str, Any], *, queue_arn: str, region: str) -> dict[str, Any]:
    """One ``Records`` entry from one ReceiveMessage message."""
    entry: dict[str, Any] = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message.get("Body", ""),
        "attributes": {name: str(value) for name, value in message.get("Attributes", {}).items()},
        "messageAttributes": {name: _message_attribute(value)
                              for name, value in message.get("MessageAttributes", {}).items()},
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }
    if message.get("MD5OfMessageAttributes"):
        entry["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    return entry


def event(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    return {"Records": list(records)}


def event_size(entries: Iterable[Mapping[str, Any]]) -> int:
    """Bytes of the JSON payload Lambda would send (its 6 MB invoke limit applies to this)."""
    return len(json.dumps(event(entries)).encode())


def _message_attribute(value: Mapping[str, Any]) -> dict[str, Any]:
    converted: dict[str, Any] = {
        "stringListValues": list(value.get("StringListValues", [])),
        "binaryListValues": [_b64(v) for v in value.get("BinaryListValues", [])],
        "dataType": value.get("DataType", "String"),
    }
    if "StringValue" in value:
        converted["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        converted["binaryValue"] = _b64(value["BinaryValue"])
    return converted


def _b64(raw: bytes | str) -> str:
    return base64.b64encode(raw if isinstance(raw, bytes) else raw.encode()).decode()
