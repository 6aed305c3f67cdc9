"""Source objects and the events that name them, built the way S3 and SQS build them.

:func:`upload` puts an object into the (moto) source bucket and returns what an event
would say about it; :func:`notification` is the S3 event notification body (keys
URL-encoded with ``+`` for space, exactly as S3 sends them); :func:`sqs_event` wraps bodies
into the event Lambda's SQS trigger hands to the function. Receipt handles and a few
request fields carry random markers, so a test can prove the raw event is never logged.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import secrets
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus

REGION = "eu-west-2"
QUEUE_ARN = f"arn:aws:sqs:{REGION}:123456789012:aggregator-ingest"
_sequence = itertools.count(1)


@dataclass(frozen=True)
class Uploaded:
    """One version of one source object, as an event names it."""

    bucket: str
    key: str
    body: bytes
    etag: str  # without quotes
    version_id: str | None
    sequencer: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()

    @property
    def identity(self) -> tuple[str, str, str]:
        """(bucket, key, version): the versionId, else the eTag with the sequencer (contract 6)."""
        version = f"v:{self.version_id}" if self.version_id else f"e:{self.etag}@{self.sequencer}"
        return self.bucket, self.key, version


def entry_identity(entry: dict[str, Any]) -> tuple[str, str, str]:
    """The same identity, read from a MANIFEST.json entry."""
    version = (f"v:{entry['version_id']}" if entry.get("version_id")
               else f"e:{entry.get('etag')}@{entry.get('sequencer') or ''}")
    return entry["bucket"], entry["key"], version


def sequencer() -> str:
    """Increasing, like S3's (hex, compared as strings of equal length)."""
    return f"{time.time_ns():016X}{next(_sequence):08X}"


def upload(s3: Any, bucket: str, key: str, body: bytes) -> Uploaded:
    answer = s3.put_object(Bucket=bucket, Key=key, Body=body)
    version = answer.get("VersionId")
    return Uploaded(bucket=bucket, key=key, body=body, etag=answer["ETag"].strip('"'),
                    version_id=version if version and version != "null" else None, sequencer=sequencer())


def record(obj: Uploaded, *, event_name: str = "ObjectCreated:Put", raw_key: str | None = None,
           marker: str = "") -> dict[str, Any]:
    """One S3 event record; ``raw_key`` overrides the encoded key (hostile input)."""
    marker = marker or secrets.token_hex(8)
    s3_object: dict[str, Any] = {
        "key": quote_plus(obj.key, safe="/") if raw_key is None else raw_key,
        "size": len(obj.body),
        "eTag": obj.etag,
        "sequencer": obj.sequencer,
    }
    if obj.version_id:
        s3_object["versionId"] = obj.version_id
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": REGION,
        "eventTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "eventName": event_name,
        "userIdentity": {"principalId": f"AWS:PRINCIPAL{marker}"},
        "requestParameters": {"sourceIPAddress": f"198.51.100.7-{marker}"},
        "responseElements": {"x-amz-request-id": f"REQ{marker}", "x-amz-id-2": f"ID2{marker}"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "aggregator-ingest",
            "bucket": {"name": obj.bucket, "ownerIdentity": {"principalId": f"OWNER{marker}"},
                       "arn": f"arn:aws:s3:::{obj.bucket}"},
            "object": s3_object,
        },
    }


def notification(*objects: Uploaded, marker: str = "") -> str:
    return json.dumps({"Records": [record(obj, marker=marker) for obj in objects]})


@dataclass(frozen=True)
class Message:
    message_id: str
    body: str
    receipt_handle: str


def messages(bodies: Iterable[str], *, ids: Sequence[str] | None = None) -> list[Message]:
    bodies = list(bodies)
    ids = list(ids) if ids is not None else [str(uuid.uuid4()) for _ in bodies]
    return [Message(message_id=i, body=b, receipt_handle="RH" + base64.b64encode(secrets.token_bytes(60)).decode())
            for i, b in zip(ids, bodies, strict=True)]


def sqs_event(batch: Sequence[Message], *, receive_count: int = 1) -> dict[str, Any]:
    now_ms = str(int(time.time() * 1000))
    return {"Records": [{
        "messageId": m.message_id,
        "receiptHandle": m.receipt_handle,
        "body": m.body,
        "attributes": {"ApproximateReceiveCount": str(receive_count), "SentTimestamp": now_ms,
                       "SenderId": "AIDAIENQZJOLO23YVJ4VO", "ApproximateFirstReceiveTimestamp": now_ms},
        "messageAttributes": {},
        "md5OfBody": hashlib.md5(m.body.encode()).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": QUEUE_ARN,
        "awsRegion": REGION,
    } for m in batch]}


def redelivered(batch: Sequence[Message]) -> list[Message]:
    """The same messages delivered again: same ids and bodies, new receipt handles."""
    return messages([m.body for m in batch], ids=[m.message_id for m in batch])
