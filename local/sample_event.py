"""A real SQS event for ``serverless invoke local``: one upload, its own notification.

The object is uploaded into the landing bucket, S3 (moto) sends its notification, and
that message is taken off the queue and written out in the shape Lambda invokes with.
It is deleted from the queue, as Lambda deletes what it hands over successfully, so the
runner does not archive it a second time; other messages seen on the way are released.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local import sqs_event
from local.stack import StackState
from local.verify import Uploaded


@dataclass(frozen=True)
class SampleEvent:
    path: Path
    upload: Uploaded


def make_sample_event(state: StackState, *, key: str, body: bytes, out: Path, timeout_s: float = 20.0) -> SampleEvent:
    resources = state.resources
    s3, sqs = state.aws_client("s3"), state.aws_client("sqs")
    response = s3.put_object(Bucket=resources["landing_bucket"], Key=key, Body=body)
    etag = response["ETag"].strip('"')
    upload = Uploaded(key=key, size=len(body), sha256=hashlib.sha256(body).hexdigest(), etag=etag,
                      version_id=response.get("VersionId"), uploaded_at=time.time())
    deadline = time.monotonic() + timeout_s
    others: list[dict[str, Any]] = []
    found: dict[str, Any] | None = None
    try:
        while found is None and time.monotonic() < deadline:
            messages = sqs.receive_message(QueueUrl=resources["queue_url"], MaxNumberOfMessages=10,
                                           WaitTimeSeconds=1, MessageSystemAttributeNames=["All"],
                                           MessageAttributeNames=["All"]).get("Messages", [])
            for message in messages:
                if found is None and etag in message.get("Body", "") and _names_key(message["Body"], key):
                    found = message
                else:
                    others.append(message)
    finally:
        for message in others:  # visible again at once, not after the visibility timeout
            sqs.change_message_visibility(QueueUrl=resources["queue_url"], ReceiptHandle=message["ReceiptHandle"],
                                          VisibilityTimeout=0)
    if found is None:
        raise RuntimeError(f"no notification for {key!r} arrived in {timeout_s:.0f} s")
    sqs.delete_message(QueueUrl=resources["queue_url"], ReceiptHandle=found["ReceiptHandle"])
    event = sqs_event.event([sqs_event.record(found, queue_arn=resources["queue_arn"], region=state.region)])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(event, indent=2, ensure_ascii=False) + "\n")
    return SampleEvent(path=out, upload=upload)


def _names_key(body: str, key: str) -> bool:
    from aggregator.base.errors import MalformedMessage
    from aggregator.base.events import parse_body

    try:
        return any(ref.key == key for ref in parse_body(body).objects)
    except MalformedMessage:
        return False
