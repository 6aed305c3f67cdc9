"""The real handler, in process, against real servers: moto (S3 source, DynamoDB, Secrets
Manager) and SeaweedFS as MinIO. One mixed batch in, one archive out, read back whole."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import boto3
import pytest
import zstandard

from aggregator import lambda_app
from aggregator.delivery.publish import SIDECAR_PREFIX
from tests.support.servers import MotoServer
from tests.support.tables import create_claims_table

pytestmark = pytest.mark.servers


@dataclass
class Context:
    aws_request_id: str
    function_name: str = "aggregator"
    invoked_function_arn: str = "arn:aws:lambda:eu-west-2:123456789012:function:aggregator"
    memory_limit_in_mb: str = "1024"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


@pytest.fixture
def world(moto_server: MotoServer, minio_target: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    suffix = uuid.uuid4().hex[:8]
    aws = {"endpoint_url": moto_server.endpoint_url, "region_name": "eu-west-2"}
    s3, dynamodb = boto3.client("s3", **aws), boto3.client("dynamodb", **aws)
    landing, table, secret_name, archives = f"landing-{suffix}", f"claims-{suffix}", f"minio-{suffix}", f"arch-{suffix}"
    s3.create_bucket(Bucket=landing, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    create_claims_table(dynamodb, table)
    minio = boto3.client("s3", endpoint_url=minio_target.endpoint_url, aws_access_key_id=minio_target.access_key,
                         aws_secret_access_key=minio_target.secret_key, region_name="us-east-1")
    minio.create_bucket(Bucket=archives)
    boto3.client("secretsmanager", **aws).create_secret(Name=secret_name, SecretString=json.dumps({
        "endpoint_url": minio_target.endpoint_url, "access_key": minio_target.access_key,
        "secret_key": minio_target.secret_key, "bucket": archives}))
    for name, value in {"AWS_ENDPOINT_URL": moto_server.endpoint_url, "IDEMPOTENCY_TABLE_NAME": table,
                        "MINIO_SECRET_ID": secret_name, "USE_MOTO": "true", "ENVIRONMENT": "dev",
                        "POWERTOOLS_METRICS_NAMESPACE": "AggregatorTest",
                        "POWERTOOLS_SERVICE_NAME": "aggregator"}.items():
        monkeypatch.setenv(name, value)
    lambda_app.warm_dependencies.cache_clear()
    yield {"s3": s3, "minio": minio, "landing": landing, "archives": archives}
    lambda_app.warm_dependencies.cache_clear()


def notification(bucket: str, key: str, head: dict[str, Any]) -> str:
    record = {"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "eu-west-2",
              "eventName": "ObjectCreated:Put",
              "s3": {"bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                     "object": {"key": quote_plus(key, safe="/"), "size": head["ContentLength"],
                                "eTag": head["ETag"].strip('"'), "sequencer": uuid.uuid4().hex[:18].upper()}}}
    return json.dumps({"Records": [record]})


def sqs_event(bodies: dict[str, str]) -> dict[str, Any]:
    return {"Records": [{"messageId": mid, "receiptHandle": f"rh-{mid}", "body": body, "attributes": {},
                         "messageAttributes": {}, "md5OfBody": hashlib.md5(body.encode()).hexdigest(),
                         "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:eu-west-2:123456789012:ingest",
                         "awsRegion": "eu-west-2"} for mid, body in bodies.items()]}


def archives_in(minio: Any, bucket: str) -> dict[str, tuple[bytes, dict[str, str]]]:
    found = {}
    for item in minio.list_objects_v2(Bucket=bucket).get("Contents", []):
        if item["Key"].startswith(SIDECAR_PREFIX):
            continue  # each archive's manifest, also stored beside it
        response = minio.get_object(Bucket=bucket, Key=item["Key"])
        found[item["Key"]] = (response["Body"].read(), response["Metadata"])
    return found


def members_of(data: bytes) -> dict[str, bytes]:
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        assert tar.getmembers()[-1].name == "MANIFEST.json"
        assert all(m.pax_headers is not None for m in tar.getmembers())
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def test_a_mixed_batch_makes_one_archive_of_exactly_the_valid_objects(world: dict[str, Any],
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    s3, landing = world["s3"], world["landing"]
    bodies: dict[str, str] = {}
    sources: dict[str, bytes] = {}
    for index, key in enumerate(["plain.json", "with space/and+plus.csv", "ünïcode/δ.txt", "deep/a/b/c.log"]):
        body = f"object {index} ".encode() * (50 + index)
        s3.put_object(Bucket=landing, Key=key, Body=body)
        sources[key] = body
        bodies[f"valid-{index}"] = notification(landing, key, s3.head_object(Bucket=landing, Key=key))
    s3.put_object(Bucket=landing, Key="deleted.bin", Body=b"soon gone")
    deleted_head = s3.head_object(Bucket=landing, Key="deleted.bin")
    s3.delete_object(Bucket=landing, Key="deleted.bin")
    bodies["deleted"] = notification(landing, "deleted.bin", deleted_head)
    bodies["test-event"] = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": landing})
    bodies["malformed"] = "this is not an S3 event"

    response = lambda_app.handler(sqs_event(bodies), Context(aws_request_id="req-1"))

    assert response == {"batchItemFailures": [{"itemIdentifier": "malformed"}]}
    (key, (data, metadata)), = archives_in(world["minio"], world["archives"]).items()
    assert key.startswith("archives/") and key.endswith(".tar.zst")
    assert metadata["sha256_checksum"] == hashlib.sha256(data).hexdigest()
    members = members_of(data)
    manifest = json.loads(members.pop("MANIFEST.json"))
    assert key.endswith(f"/{manifest['archive_id']}.tar.zst") and manifest["codec"] == "zstd"
    assert sorted(o["key"] for o in manifest["objects"]) == sorted(sources)
    for entry in manifest["objects"]:
        assert members[entry["member"]] == sources[entry["key"]]
        assert entry["sha256"] == hashlib.sha256(sources[entry["key"]]).hexdigest()
        assert entry["bucket"] == landing and entry["size"] == len(sources[entry["key"]])

    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    documents = [json.loads(line) for line in lines]  # every line is one JSON object
    emf = [d for d in documents if "_aws" in d]
    assert emf, "no EMF metrics line"
    metrics = {name: sum(value) if isinstance(value, list) else value for name, value in emf[-1].items()
               if name in {"ObjectsArchived", "ObjectsMissing", "EventsIgnored", "BatchItemFailures", "ArchiveObjects"}}
    assert metrics == {"ObjectsArchived": 4, "ObjectsMissing": 1, "EventsIgnored": 1, "BatchItemFailures": 1,
                       "ArchiveObjects": 4}
    assert not any("rh-valid-0" in line or "not an S3 event" in line for line in lines)

    again = lambda_app.handler(sqs_event(bodies), Context(aws_request_id="req-2"))
    assert again == response
    assert len(archives_in(world["minio"], world["archives"])) == 1  # redelivery: duplicates only
