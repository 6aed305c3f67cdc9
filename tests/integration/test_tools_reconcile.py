"""reconcile and backfill against the real servers, with the real handler in process.

moto plays the landing bucket, the claims table, the ingest queue and Secrets Manager;
SeaweedFS (or a real MinIO) holds the archives. Some uploads are notified and archived,
some never are; reconcile finds exactly those, backfill (run twice) sends them through
the queue to the handler, and afterwards every object is in exactly one archive, counted
across archives (never by extracting, which would hide a second copy).
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from aggregator import lambda_app
from aggregator.base.events import ObjectRef
from aggregator.base.names import object_id
from aggregator.tools.__main__ import main
from tests.support.s3events import REGION, Uploaded, messages, notification, sqs_event, upload
from tests.support.servers import MotoServer
from tests.support.world import World

pytestmark = pytest.mark.servers


@dataclass
class Context:
    aws_request_id: str
    function_name: str = "aggregator"
    invoked_function_arn: str = "arn:aws:lambda:eu-west-2:123456789012:function:aggregator"
    memory_limit_in_mb: str = "1024"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


@dataclass
class Landing:
    world: World
    bucket: str
    table: str
    prefix: str
    queue_url: str
    sqs: Any


@pytest.fixture
def landing(request: pytest.FixtureRequest, moto_server: MotoServer, minio_target: Any,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Landing]:
    world = World.create(moto_server, minio_target)
    versioned = getattr(request, "param", True)
    bucket, table, secret = world.bucket(versioned=versioned), world.table(), world.secret()
    prefix = f"tools/{uuid.uuid4().hex[:10]}"
    for name, value in world.env(table=table, secret=secret, prefix=prefix).items():
        monkeypatch.setenv(name, value)
    sqs = boto3.client("sqs", endpoint_url=moto_server.endpoint_url, region_name=REGION)
    queue_url = sqs.create_queue(QueueName=f"ingest-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    lambda_app.warm_dependencies.cache_clear()
    yield Landing(world, bucket, table, prefix, queue_url, sqs)
    lambda_app.warm_dependencies.cache_clear()


def handle(objects: list[Uploaded]) -> None:
    response = lambda_app.handler(sqs_event(messages([notification(obj) for obj in objects])),
                                  Context(aws_request_id=str(uuid.uuid4())))
    assert response == {"batchItemFailures": []}


def drain(land: Landing) -> int:
    """Lambda's SQS trigger, by hand: receive, invoke, delete what was acknowledged."""
    handled = 0
    while True:
        received = land.sqs.receive_message(QueueUrl=land.queue_url, MaxNumberOfMessages=10,
                                            WaitTimeSeconds=0).get("Messages", [])
        if not received:
            return handled
        event = {"Records": [{"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
                              "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
                              "eventSource": "aws:sqs", "awsRegion": "eu-west-2",
                              "eventSourceARN": "arn:aws:sqs:eu-west-2:123456789012:ingest"} for m in received]}
        response = lambda_app.handler(event, Context(aws_request_id=str(uuid.uuid4())))
        failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
        assert not failed, response
        for m in received:
            land.sqs.delete_message(QueueUrl=land.queue_url, ReceiptHandle=m["ReceiptHandle"])
        handled += len(received)


def tool(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out, err


def report_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("landing", [True, False], ids=["versioned", "unversioned"], indirect=True)
def test_unnotified_objects_are_found_then_backfilled_exactly_once(landing: Landing, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    land, rng = landing, random.Random(18)
    s3 = land.world.s3
    notified = [upload(s3, land.bucket, f"in/{i:03d} with space+plus é.bin", rng.randbytes(rng.randint(10, 5000)))
                for i in range(6)]
    handle(notified[:3])
    handle(notified[3:])
    silent = [upload(s3, land.bucket, f"quiet/{i:03d}.json", rng.randbytes(rng.randint(10, 5000)))
              for i in range(5)]
    capsys.readouterr()

    report = tmp_path / "before.jsonl"
    status, out, err = tool(capsys, "reconcile", "--bucket", land.bucket, "--report", str(report))
    assert status == 1 and out == ""
    lines = report_lines(report)
    states = {line["key"]: line["state"] for line in lines}
    assert states == {**{o.key: "archived" for o in notified}, **{o.key: "never_claimed" for o in silent}}
    assert all(set(line) >= {"bucket", "key", "version_id", "etag", "state", "archive"} for line in lines)
    archives = set(land.world.archive_keys(land.prefix))
    assert {line["archive"] for line in lines if line["state"] == "archived"} == archives and len(archives) == 2
    problem_lines = [line for line in err.splitlines() if line.startswith("s3://")]
    assert sorted(problem_lines) == sorted(
        f"s3://{land.bucket}/{o.key} " + (f"(version {o.version_id})" if o.version_id else f"(eTag {o.etag})")
        + ": never_claimed" for o in silent)
    assert f"{len(lines)} object versions: 6 archived, 0 in_progress, 5 never_claimed" in err
    assert "read units" in err and ("1 BatchGetItem" in err) == bool(notified[0].version_id)

    # Dry run: prints, sends nothing.
    status, out, err = tool(capsys, "backfill", "--report", str(report), "--queue-url", land.queue_url)
    assert status == 0 and len(out.splitlines()) == 5 and "nothing sent" in err
    assert "Messages" not in land.sqs.receive_message(QueueUrl=land.queue_url, WaitTimeSeconds=0)
    # Twice, on purpose: the function's claims make the second run a duplicate.
    for _ in range(2):
        status, _, err = tool(capsys, "backfill", "--report", str(report), "--queue-url", land.queue_url,
                              "--apply", "--rate", "1000")
        assert status == 0 and "sent 5 of 5" in err
    assert drain(land) == 10
    capsys.readouterr()

    after = tmp_path / "after.jsonl"
    status, _, err = tool(capsys, "reconcile", "--bucket", land.bucket, "--report", str(after))
    assert status == 0, err
    assert {line["state"] for line in report_lines(after)} == {"archived"}
    scan = land.world.scan(land.prefix)
    silent_as_backfilled = [Uploaded(o.bucket, o.key, o.body, o.etag, o.version_id, sequencer="") for o in silent]
    assert scan.exactly_once(notified + silent_as_backfilled) == []
    assert scan.objects == 11 and len(scan.archives) == 3  # the second backfill archived nothing

    for archive in land.world.archive_keys(land.prefix):
        status, out, err = tool(capsys, "verify", f"s3://{land.world.archive_bucket}/{archive}")
        assert (status, err) == (0, "") and out.startswith("OK ")


def test_a_claim_without_its_archive_is_in_progress(landing: Landing, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    land = landing
    obj = upload(land.world.s3, land.bucket, "stuck.bin", b"stuck")
    oid = object_id(ObjectRef(bucket=land.bucket, key=obj.key, size=5, etag=obj.etag, version_id=obj.version_id,
                              sequencer=None))
    land.world.dynamodb.put_item(TableName=land.table, Item={
        "ObjectID": {"S": oid}, "ArchiveKey": {"S": f"{land.prefix}/2026/12/06/18/gone.tar.zst"},
        "LeaseUntil": {"N": "1000.5"}, "ExpiresAt": {"N": "4000000000"}})
    status, out, err = tool(capsys, "reconcile", "--bucket", land.bucket)
    (line,) = [json.loads(text) for text in out.splitlines()]
    assert status == 1 and line["state"] == "in_progress" and line["lease_expired"] is True
    assert line["archive"] is None and "1 in_progress" in err and "stuck.bin" in err and "1 absent" in err


def test_sidecar_manifests_are_read_instead_of_archives(landing: Landing, capsys: pytest.CaptureFixture[str]) -> None:
    land = landing
    objects = [upload(land.world.s3, land.bucket, f"s/{i}", b"x" * i) for i in range(1, 4)]
    handle(objects)
    (archive,) = land.world.archive_keys(land.prefix)
    manifest = land.world.scan(land.prefix).archives[0].manifest
    land.world.minio.put_object(Bucket=land.world.archive_bucket, Key=f"_manifests/{archive}.json",
                                Body=json.dumps(manifest).encode())
    capsys.readouterr()
    status, out, err = tool(capsys, "reconcile", "--bucket", land.bucket, "--prefix", "s/")
    assert status == 0 and len(out.splitlines()) == 3
    assert "1 manifests read from sidecars, 0 archives streamed" in err


def test_a_tampered_archive_in_minio_fails_verify(landing: Landing, capsys: pytest.CaptureFixture[str]) -> None:
    land = landing
    handle([upload(land.world.s3, land.bucket, f"t/{i}", f"body {i}".encode() * 100) for i in range(3)])
    (archive,) = land.world.archive_keys(land.prefix)
    minio, bucket = land.world.minio, land.world.archive_bucket
    original = minio.get_object(Bucket=bucket, Key=archive)
    data, metadata = original["Body"].read(), original["Metadata"]
    tampered = f"{archive[:-len('.tar.zst')]}-copy.tar.zst"
    minio.put_object(Bucket=bucket, Key=tampered, Body=data[:-1] + bytes([data[-1] ^ 1]), Metadata=metadata)
    capsys.readouterr()
    status, out, err = tool(capsys, "verify", f"s3://{bucket}/{archive}", f"s3://{bucket}/{tampered}")
    assert status == 1 and out.startswith(f"OK s3://{bucket}/{archive}")
    assert all(line.startswith(f"s3://{bucket}/{tampered}: ") for line in err.splitlines())
    assert "sha256_checksum metadata says" in err
    assert tool(capsys, "verify", f"s3://{bucket}/{land.prefix}/absent.tar.zst")[0] == 2


def test_a_versioned_object_notified_without_its_version_id_is_found(landing: Landing,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A notification without a versionId (older moto sent none for a versioned object): the
    claim is keyed by eTag and sequencer, and reconcile still finds it archived."""
    land = landing
    obj = upload(land.world.s3, land.bucket, "moto style.bin", b"no version id in the event")
    assert obj.version_id
    handle([Uploaded(obj.bucket, obj.key, obj.body, obj.etag, None, obj.sequencer)])
    capsys.readouterr()
    status, out, err = tool(capsys, "reconcile", "--bucket", land.bucket)
    assert status == 0 and json.loads(out)["state"] == "archived" and "1 Scan" in err
    # Without the Scan its claim is not found, but its archive's manifest still lists it.
    status, out, err = tool(capsys, "reconcile", "--bucket", land.bucket, "--no-scan")
    line = json.loads(out)
    assert status == 0 and line["state"] == "archived" and line["archive"].startswith(land.prefix + "/")
    assert "Scan" not in err and "1 sidecars read" in err
