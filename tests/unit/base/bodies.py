"""Message bodies in the shapes AWS documents, written out by hand for the parser tests.

Values (ids, hosts, ARNs) are invented; field names and nesting follow the S3 event
notification (eventVersion 2.1), s3:TestEvent, SNS-to-SQS envelope and EventBridge
"Object Created" examples.
"""

from __future__ import annotations

import json
from typing import Any

BUCKET = "example-ingest-bucket"


def s3_record(
    key: str,
    *,
    bucket: str = BUCKET,
    event_name: str = "ObjectCreated:Put",
    size: int | None = 1024,
    etag: str | None = "d41d8cd98f00b204e9800998ecf8427e",
    version_id: str | None = "096fKKXTRTtl3on89fVO.nfljtsv6qko",
    sequencer: str | None = "0055AED6DCD90281E5",
) -> dict[str, Any]:
    """One record of an S3 event notification; ``key`` is given already URL-encoded."""
    obj: dict[str, Any] = {"key": key}
    if size is not None:
        obj["size"] = size
    if etag is not None:
        obj["eTag"] = etag
    if version_id is not None:
        obj["versionId"] = version_id
    if sequencer is not None:
        obj["sequencer"] = sequencer
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "eu-west-2",
        "eventTime": "2024-05-06T07:08:09.123Z",
        "eventName": event_name,
        "userIdentity": {"principalId": "AWS:AIDAEXAMPLEPRINCIPAL"},
        "requestParameters": {"sourceIPAddress": "203.0.113.7"},
        "responseElements": {
            "x-amz-request-id": "C3D13FE58DE4C810",
            "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD",
        },
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "archive-new-objects",
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": "A3NL1KOZZKEXAMPLE"},
                "arn": f"arn:aws:s3:::{bucket}",
            },
            "object": obj,
        },
    }


def removed_record(key: str, *, bucket: str = BUCKET, event_name: str = "ObjectRemoved:Delete") -> dict[str, Any]:
    """A deletion record: S3 sends no size or eTag for these."""
    return s3_record(key, bucket=bucket, event_name=event_name, size=None, etag=None)


def notification(*records: dict[str, Any]) -> str:
    return json.dumps({"Records": list(records)})


TEST_EVENT = json.dumps({
    "Service": "Amazon S3",
    "Event": "s3:TestEvent",
    "Time": "2024-05-06T07:08:09.000Z",
    "Bucket": BUCKET,
    "RequestId": "5582815E1AEA5ADF",
    "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE",
})


def sns_envelope(message: str) -> str:
    """What SQS receives from an SNS subscription without raw message delivery."""
    return json.dumps({
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": "arn:aws:sns:eu-west-2:123456789012:s3-object-events",
        "Subject": "Amazon S3 Notification",
        "Message": message,
        "Timestamp": "2024-05-06T07:08:09.456Z",
        "SignatureVersion": "1",
        "Signature": (
            "EXAMPLEpH+DcEwjAPg8O9mY8dReBSwksfg2S7WKQcikcNKWLQjwu6A4VbeS0QHVCkhRS7fUQvi2egU3N858fiTDN6bkkOx"
            "YDVrY0Ad8L10Hs3zH81mtnPk5uvvolIC1CXGu43obcgFxeL3khZl8IKvO61GWB6jI9b5+gLPoBc1Q="
        ),
        "SigningCertURL": "https://sns.eu-west-2.example.invalid/SimpleNotificationService-example.pem",
        "UnsubscribeURL": "https://sns.eu-west-2.example.invalid/?Action=Unsubscribe&SubscriptionArn=example",
    })


def eventbridge(
    key: str,
    *,
    detail_type: str = "Object Created",
    bucket: str = BUCKET,
    size: int | None = 5,
    etag: str | None = "b1946ac92492d2347c6235b4d2611184",
    version_id: str | None = "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e",
    sequencer: str | None = "617f08299329d189",
) -> dict[str, Any]:
    """An EventBridge event from S3; ``key`` is *not* URL-encoded here."""
    obj: dict[str, Any] = {"key": key}
    if size is not None:
        obj["size"] = size
    if etag is not None:
        obj["etag"] = etag
    if version_id is not None:
        obj["version-id"] = version_id
    if sequencer is not None:
        obj["sequencer"] = sequencer
    detail: dict[str, Any] = {
        "version": "0",
        "bucket": {"name": bucket},
        "object": obj,
        "request-id": "N4N7GDK58NMKJ12R",
        "requester": "123456789012",
        "source-ip-address": "203.0.113.7",
        "reason": "PutObject",
    }
    if detail_type == "Object Deleted":
        detail["reason"] = "DeleteObject"
        detail["deletion-type"] = "Permanently Deleted"
    return {
        "version": "0",
        "id": "17793124-05d4-b198-2fde-7ededc63b103",
        "detail-type": detail_type,
        "source": "aws.s3",
        "account": "123456789012",
        "time": "2024-05-06T07:08:09Z",
        "region": "eu-west-2",
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": detail,
    }
