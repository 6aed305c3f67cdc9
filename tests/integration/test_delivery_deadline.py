"""No request that could publish an archive leaves after the deadline, retries included."""

from __future__ import annotations

import hashlib
import io
import uuid
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from aggregator.base.errors import OutOfTime
from aggregator.delivery.publish import publish_archive

pytestmark = pytest.mark.servers


def test_a_send_after_the_deadline_is_refused_by_the_client_itself(minio_target: Any) -> None:
    client = boto3.client("s3", endpoint_url=minio_target.endpoint_url, aws_access_key_id=minio_target.access_key,
                          aws_secret_access_key=minio_target.secret_key, region_name="us-east-1")
    bucket, key = f"late-{uuid.uuid4().hex[:8]}", "archives/late.tar"
    client.create_bucket(Bucket=bucket)
    data = b"archive bytes" * 100
    times = iter([0.0, 0.0])  # the checks before reading the spool pass; the send comes too late

    def clock() -> float:
        return next(times, 1_000.0)

    with pytest.raises(OutOfTime, match="no request"):
        publish_archive(client, bucket=bucket, key=key, source=io.BytesIO(data), size=len(data),
                        sha256_hex=hashlib.sha256(data).hexdigest(), part_bytes=5 << 20, deadline=100.0,
                        clock=clock)
    with pytest.raises(ClientError):
        client.head_object(Bucket=bucket, Key=key)

    # The guard is per publish: the same client publishes normally with time to spare.
    publish_archive(client, bucket=bucket, key=key, source=io.BytesIO(data), size=len(data),
                    sha256_hex=hashlib.sha256(data).hexdigest(), part_bytes=5 << 20, deadline=None)
    assert client.head_object(Bucket=bucket, Key=key)["Metadata"]["sha256_checksum"] == hashlib.sha256(data).hexdigest()
