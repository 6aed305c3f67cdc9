"""Publish outcomes against a real store behind a fault proxy (issue 14 §1, §2).

No request that could publish an archive leaves after the write cutoff, SDK retries
included; an answer lost after the store took the request is UNKNOWN unless a HEAD finds
the archive; only a refusal before anything key-creating left is NOT_PUBLISHED.
"""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from aggregator.base.deadline import Deadline
from aggregator.delivery.publish import SIDECAR_PREFIX, Publication, PublishOutcome, publish_archive
from tests.support.fault_proxy import Fault, FaultProxy, Request, s3_error

pytestmark = pytest.mark.servers
MiB = 1024 * 1024


class SteppedClock:
    """Epoch seconds that jump to ``late`` once ``after`` readings were taken."""

    def __init__(self, *, after: int, late: float = 1_000.0) -> None:
        self.readings = 0
        self.after = after
        self.late = late

    def __call__(self) -> float:
        self.readings += 1
        return 0.0 if self.readings <= self.after else self.late


@pytest.fixture
def proxy(minio_target: Any) -> Iterator[FaultProxy]:
    with FaultProxy(minio_target.endpoint_url, name="minio") as running:
        yield running


def client_for(url: str, minio_target: Any) -> Any:
    return boto3.client("s3", endpoint_url=url, aws_access_key_id=minio_target.access_key,
                        aws_secret_access_key=minio_target.secret_key, region_name="us-east-1",
                        config=Config(retries={"mode": "standard", "total_max_attempts": 3},
                                      s3={"addressing_style": "path"}))


def archive_put(key: str, *, query: str = "") -> Callable[[Request], bool]:
    """The request that makes ``key`` appear (not the manifest sidecar)."""
    return lambda r: r.method in ("PUT", "POST") and r.key.endswith("/" + key) and query in r.query


def publish(client: Any, bucket: str, key: str, data: bytes, deadline: Deadline | None,
            part_bytes: int = 5 * MiB) -> Publication:
    return publish_archive(client, bucket=bucket, key=key, source=io.BytesIO(data), size=len(data),
                           sha256_hex=hashlib.sha256(data).hexdigest(), manifest=b'{"objects": []}',
                           part_bytes=part_bytes, deadline=deadline)


def stored(client: Any, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError:
        return False
    return True


def new_bucket(client: Any) -> str:
    bucket = f"late-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    return bucket


def sent(proxy: FaultProxy, key: str) -> list[tuple[str, str, str]]:
    return [entry for entry in proxy.log if entry[1].split("?")[0].endswith("/" + key)
            and entry[0] in ("PUT", "POST")]


def test_a_first_attempt_after_the_cutoff_is_refused_by_the_client_itself(minio_target: Any,
                                                                          proxy: FaultProxy) -> None:
    client = client_for(proxy.url, minio_target)
    bucket, key, data = new_bucket(client), "archives/late.tar", b"archive bytes" * 100
    # The checks before the sidecar, the sidecar's own send and the last check pass; the send comes too late.
    outcome = publish(client, bucket, key, data, Deadline(at=100.0, grace=30, clock=SteppedClock(after=3)))
    assert outcome.outcome is PublishOutcome.NOT_PUBLISHED and "no request" in outcome.reason
    assert sent(proxy, key) == [] and not stored(client, bucket, key)

    # The guard is per publish: the same client publishes normally with time to spare.
    assert publish(client, bucket, key, data, None).outcome is PublishOutcome.PUBLISHED
    head = client.head_object(Bucket=bucket, Key=key)
    assert head["Metadata"]["sha256_checksum"] == hashlib.sha256(data).hexdigest()
    assert client.head_object(Bucket=bucket, Key=SIDECAR_PREFIX + key + ".json")


@pytest.mark.parametrize("stores", [True, False], ids=["store-kept-it", "store-dropped-it"])
def test_a_retry_due_in_the_last_moment_is_never_sent(minio_target: Any, proxy: FaultProxy, stores: bool) -> None:
    """The first PUT's answer is a 500; the SDK's retry would leave after the cutoff: it is
    refused. The store may or may not have kept the first one: a HEAD decides PUBLISHED,
    and a 404 leaves the outcome UNKNOWN (the claims wait for the lease end)."""
    client = client_for(proxy.url, minio_target)
    bucket, key, data = new_bucket(client), "archives/retry.tar", b"x" * 5000
    fault = Fault("answer_lost", status=500, body=s3_error(500, "InternalError").body) if stores \
        else s3_error(500, "InternalError")
    proxy.add(archive_put(key), fault, times=1)
    clock = SteppedClock(after=4)  # start, sidecar send, check before the PUT, the PUT's first send
    outcome = publish(client, bucket, key, data, Deadline(at=100.0, grace=30, clock=clock))
    assert len(sent(proxy, key)) == 1, proxy.log  # the retry never left
    assert outcome.outcome is (PublishOutcome.PUBLISHED if stores else PublishOutcome.UNKNOWN)
    assert stored(client, bucket, key) is stores


@pytest.mark.parametrize("status", [504, 408, 500, 503])
def test_a_gateway_error_after_the_body_was_sent_is_unknown(minio_target: Any, proxy: FaultProxy,
                                                            status: int) -> None:
    """A gateway answers 504 (or a proxy 408) for a PUT it may still pass on: not "no"."""
    client = client_for(proxy.url, minio_target)
    bucket, key, data = new_bucket(client), f"archives/gw-{status}.tar", b"y" * 5000
    proxy.add(archive_put(key), Fault("respond", status=status, body=b"<html>gateway</html>"))
    outcome = publish(client, bucket, key, data, None)
    assert outcome.outcome is PublishOutcome.UNKNOWN
    assert not stored(client, bucket, key)


def test_a_gateway_timeout_whose_put_landed_is_published(minio_target: Any, proxy: FaultProxy) -> None:
    client = client_for(proxy.url, minio_target)
    bucket, key, data = new_bucket(client), "archives/landed.tar", b"z" * 5000
    proxy.add(archive_put(key), Fault("answer_lost", status=504, body=b"<html>gateway</html>"))
    assert publish(client, bucket, key, data, None).outcome is PublishOutcome.PUBLISHED
    assert stored(client, bucket, key)


def test_a_refusal_by_the_store_itself_is_not_published(minio_target: Any, proxy: FaultProxy) -> None:
    client = client_for(proxy.url, minio_target)
    bucket, key, data = new_bucket(client), "archives/refused.tar", b"w" * 5000
    proxy.add(archive_put(key), s3_error(400, "BadDigest"))
    assert publish(client, bucket, key, data, None).outcome is PublishOutcome.NOT_PUBLISHED


def test_a_multipart_complete_whose_answer_is_lost_is_unknown(minio_target: Any, proxy: FaultProxy) -> None:
    client = client_for(proxy.url, minio_target)
    bucket, key = new_bucket(client), "archives/multipart.tar"
    data = os.urandom(6 * MiB)
    # The parts go through; the CompleteMultipartUpload (POST ?uploadId=) gets a gateway's 504.
    proxy.add(lambda r: r.method == "POST" and "uploadId" in r.query, Fault("respond", status=504, body=b"gw"))
    outcome = publish(client, bucket, key, data, None, part_bytes=5 * MiB)
    assert outcome.outcome is PublishOutcome.UNKNOWN  # the Complete left: only the store knows now
    assert [e for e in proxy.log if e[0] == "POST" and "uploadId" in e[1]]
    assert not stored(client, bucket, key)
