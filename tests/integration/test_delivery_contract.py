"""The real handler, in process, against moto (S3, DynamoDB, Secrets Manager) and
SeaweedFS as MinIO, on sentences of CONTRACT.md sections 2 and 5-7 found wanting by a
review: the claim's expiry, redelivery after the consumer took an archive, the archive
prefix, the stale-event runbook, one log line per stale message, a MINIO_SECRET_ID that
names no secret."""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from aggregator import lambda_app
from tests.conftest import S3Target
from tests.support.s3events import messages, notification, sqs_event, upload
from tests.support.servers import MotoServer
from tests.support.world import World

pytestmark = pytest.mark.servers

TTL = 1296000  # IDEMPOTENCY_TTL_SECONDS' default


@dataclass
class Context:
    remaining_ms: int
    aws_request_id: str = ""
    function_name: str = "aggregator"
    invoked_function_arn: str = "arn:aws:lambda:eu-west-2:123456789012:function:aggregator"
    memory_limit_in_mb: int | str = "1024"

    def __post_init__(self) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self._deadline = time.time() + self.remaining_ms / 1000

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.time()) * 1000))


@dataclass
class Scene:
    world: World
    bucket: str
    table: str
    prefix: str


@pytest.fixture
def scene(moto_server: MotoServer, minio_target: S3Target, monkeypatch: pytest.MonkeyPatch) -> Iterator[Scene]:
    world = World.create(moto_server, minio_target)
    bucket, table, secret = world.bucket(), world.table(), world.secret()
    prefix = f"review/{uuid.uuid4().hex[:10]}"
    for name, value in world.env(table=table, secret=secret, prefix=prefix).items():
        monkeypatch.setenv(name, value)
    lambda_app.warm_dependencies.cache_clear()
    yield Scene(world, bucket, table, prefix)
    lambda_app.warm_dependencies.cache_clear()


def _bucket_keys(scene: Scene, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in scene.world.minio.get_paginator("list_objects_v2").paginate(Bucket=scene.world.archive_bucket,
                                                                           Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return keys


def _invoke(event: dict[str, Any], remaining_ms: int) -> dict[str, Any]:
    response: dict[str, Any] = lambda_app.handler(event, Context(remaining_ms))
    return response


def test_a_completed_claims_expiry_is_the_commit_time_plus_the_ttl(scene: Scene) -> None:
    obj = upload(scene.world.s3, scene.bucket, "in/one.bin", b"one" * 100)
    # A Lambda with a 5-minute timeout: the claim is committed within seconds of the start.
    response = _invoke(sqs_event(messages([notification(obj)])), remaining_ms=300_000)
    committed = time.time()
    assert response == {"batchItemFailures": []}
    assert len(_bucket_keys(scene, scene.prefix + "/")) == 1
    (claim,) = scene.world.claims(scene.table).values()
    expires_at = int(claim["ExpiresAt"])
    off = expires_at - TTL - committed
    assert -30 <= off <= 5, f"ExpiresAt - TTL is {off:+.0f} s from the commit"


def test_a_redelivery_is_a_duplicate_even_after_the_consumer_took_the_archive(scene: Scene) -> None:
    obj = upload(scene.world.s3, scene.bucket, "in/two.bin", b"two" * 100)
    batch = messages([notification(obj)])
    assert _invoke(sqs_event(batch), remaining_ms=3_000) == {"batchItemFailures": []}
    (archive,) = _bucket_keys(scene, scene.prefix + "/")
    # The on-premise consumer downloads the archive and removes it from the bucket.
    scene.world.minio.delete_object(Bucket=scene.world.archive_bucket, Key=archive)
    (claim,) = scene.world.claims(scene.table).values()
    time.sleep(max(0.0, float(claim["LeaseUntil"]) + 1.5 - time.time()))  # past the first lease
    redelivery = sqs_event(messages([m.body for m in batch], ids=[m.message_id for m in batch]), receive_count=2)
    assert _invoke(redelivery, remaining_ms=3_000) == {"batchItemFailures": []}
    assert _bucket_keys(scene, scene.prefix + "/") == [], "the redelivered object was archived a second time"


def test_the_archive_prefix_holds_archives_only(scene: Scene) -> None:
    # The manifest sidecar (issue 14: recovery reads it instead of the archive) lives under
    # _manifests/, outside ARCHIVE_PREFIX, so a consumer listing the prefix sees archives only.
    obj = upload(scene.world.s3, scene.bucket, "in/three.bin", b"three" * 100)
    assert _invoke(sqs_event(messages([notification(obj)])), remaining_ms=60_000) == {"batchItemFailures": []}
    (archive,) = _bucket_keys(scene, scene.prefix + "/")
    assert archive.endswith(".tar.zst")
    assert _bucket_keys(scene, f"_manifests/{archive}") == [f"_manifests/{archive}.json",
                                                           f"_manifests/{archive}.published"]


def test_the_stale_event_runbook_does_not_archive_an_archived_object_again(
        scene: Scene, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import boto3

    from aggregator.tools.__main__ import main
    from tests.support.s3events import REGION

    obj = upload(scene.world.s3, scene.bucket, "in/old.bin", b"old" * 100)
    assert _invoke(sqs_event(messages([notification(obj)])), remaining_ms=60_000) == {"batchItemFailures": []}
    assert len(_bucket_keys(scene, scene.prefix + "/")) == 1
    # Fifteen days later DynamoDB's TTL has deleted the claim; the event sits in the DLQ.
    for object_id in scene.world.claims(scene.table):
        scene.world.dynamodb.delete_item(TableName=scene.table, Key={"ObjectID": {"S": object_id}})
    # The README's runbook: reconcile the keys, backfill what is never_claimed.
    report = tmp_path / "r.jsonl"
    reconciled = main(["reconcile", "--bucket", scene.bucket, "--prefix", "in/", "--report", str(report)])
    sqs = boto3.client("sqs", endpoint_url=scene.world.moto_url, region_name=REGION)
    queue_url = sqs.create_queue(QueueName=f"ingest-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    assert main(["backfill", "--report", str(report), "--queue-url", queue_url, "--apply"]) == 0
    received = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
    if received:
        batch = messages([m["Body"] for m in received], ids=[m["MessageId"] for m in received])
        assert _invoke(sqs_event(batch), remaining_ms=60_000) == {"batchItemFailures": []}
    capsys.readouterr()
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert len(_bucket_keys(scene, scene.prefix + "/")) == 1, "the object is now in two archives"
    assert [line["state"] for line in lines] == ["archived"] and reconciled == 0


def test_a_stale_message_with_two_records_fails_with_one_log_line(scene: Scene, capfd: pytest.CaptureFixture[str]
                                                                   ) -> None:
    objs = [upload(scene.world.s3, scene.bucket, f"in/stale-{i}.bin", b"stale" * 10) for i in range(2)]
    body = json.loads(notification(*objs))
    for record in body["Records"]:
        record["eventTime"] = "2020-01-01T00:00:00.000Z"  # older than the 15-day claim TTL
    batch = messages([json.dumps(body)])
    capfd.readouterr()
    log = io.StringIO()  # the service logger's stream was bound when it was built, at import
    handler = lambda_app.logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    old = handler.setStream(log)
    try:
        response = _invoke(sqs_event(batch), remaining_ms=60_000)
    finally:
        handler.setStream(old)
    assert response == {"batchItemFailures": [{"itemIdentifier": batch[0].message_id}]}
    captured = capfd.readouterr()
    lines = [json.loads(line) for line in (captured.out + log.getvalue()).splitlines() if line.startswith("{")]
    metrics = [line for line in lines if "_aws" in line]
    assert metrics and all(line.get("StaleEvents") for line in metrics), metrics
    why = [line for line in lines if "older than the claim TTL" in str(line.get("message", ""))]
    assert len(why) == 1, why


def test_a_minio_secret_id_naming_no_secret_fails_the_first_invocation_naming_the_variable(
        scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIO_SECRET_ID", f"absent-{uuid.uuid4().hex[:8]}")
    lambda_app.warm_dependencies.cache_clear()
    obj = upload(scene.world.s3, scene.bucket, "in/secretless.bin", b"s" * 100)
    writes_before = scene.world.claims(scene.table)
    with pytest.raises(Exception, match="MINIO_SECRET_ID"):
        _invoke(sqs_event(messages([notification(obj)])), remaining_ms=60_000)
    assert writes_before == scene.world.claims(scene.table) == {}
