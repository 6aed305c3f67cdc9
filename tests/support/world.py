"""The resources one test needs around a real invocation, on the session's servers.

moto plays S3 (the source), DynamoDB (claims) and Secrets Manager (the MinIO secret);
SeaweedFS, or a real MinIO, is the archive target. Every test takes fresh names (bucket,
claim table, secret, archive prefix), so tests never see each other's state and moto's
tables stay small (FIELD-NOTES: its transactions slow down as a table grows)::

    world = World.create(moto_server, minio_target)
    bucket, table = world.bucket(), world.table()
    env = world.env(table=table, secret=world.secret(), prefix="kill/abc")
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

from tests.support import archives
from tests.support.s3events import REGION, Message, Uploaded, messages, notification, redelivered, sqs_event, upload
from tests.support.servers import MotoServer
from tests.support.tables import create_claims_table, scan_claims

ARCHIVE_BUCKET = "aggregator-tests"


def _client(service: str, endpoint_url: str, *, access_key: str = "testing", secret_key: str = "testing",
            region: str = REGION, pool: int = 10, verify: str | None = None) -> Any:
    return boto3.session.Session().client(
        service, endpoint_url=endpoint_url, region_name=region, aws_access_key_id=access_key,  # type: ignore[call-overload]
        aws_secret_access_key=secret_key, aws_session_token=None, verify=verify,
        config=Config(max_pool_connections=pool, retries={"mode": "standard", "total_max_attempts": 5},
                      s3={"addressing_style": "path"}))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class World:
    moto_url: str
    minio_url: str
    minio_access_key: str
    minio_secret_key: str
    s3: Any
    dynamodb: Any
    secrets: Any
    minio: Any
    archive_bucket: str = ARCHIVE_BUCKET

    @classmethod
    def create(cls, moto: MotoServer, minio: Any, *, ca_path: str | None = None) -> World:
        """``minio``: the ``minio_target`` fixture's value (endpoint_url, access_key, secret_key);
        ``ca_path``: the CA that signed its certificate, for an https endpoint."""
        world = cls(
            moto_url=moto.endpoint_url, minio_url=minio.endpoint_url, minio_access_key=minio.access_key,
            minio_secret_key=minio.secret_key,
            s3=_client("s3", moto.endpoint_url, pool=32), dynamodb=_client("dynamodb", moto.endpoint_url),
            secrets=_client("secretsmanager", moto.endpoint_url),
            minio=_client("s3", minio.endpoint_url, access_key=minio.access_key, secret_key=minio.secret_key,
                          region="us-east-1", pool=16, verify=ca_path))
        try:
            world.minio.head_bucket(Bucket=world.archive_bucket)
        except Exception:
            world.minio.create_bucket(Bucket=world.archive_bucket)
        return world

    # -- resources ---------------------------------------------------------------------------
    def bucket(self, *, versioned: bool = True) -> str:
        name = unique("src")
        self.s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
        if versioned:
            self.s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name

    def table(self) -> str:
        name = unique("claims")
        create_claims_table(self.dynamodb, name)
        return name

    def secret_value(self, **overrides: Any) -> dict[str, Any]:
        value = {"endpoint_url": self.minio_url, "access_key": self.minio_access_key,
                 "secret_key": self.minio_secret_key, "bucket": self.archive_bucket, "region": "us-east-1"}
        value.update(overrides)
        return {k: v for k, v in value.items() if v is not None}

    def secret(self, **overrides: Any) -> str:
        name = unique("minio-secret")
        self.secrets.create_secret(Name=name, SecretString=json.dumps(self.secret_value(**overrides)))
        return name

    def set_secret(self, name: str, **overrides: Any) -> None:
        self.secrets.put_secret_value(SecretId=name, SecretString=json.dumps(self.secret_value(**overrides)))

    def env(self, *, table: str, secret: str, prefix: str, **extra: str) -> dict[str, str]:
        env = {
            "AWS_ENDPOINT_URL": self.moto_url,
            "IDEMPOTENCY_TABLE_NAME": table,
            "MINIO_SECRET_ID": secret,
            "ARCHIVE_PREFIX": prefix,
            "USE_MOTO": "true",
            "ENVIRONMENT": "dev",
            "COMPRESSION": "zstd",
            "MAX_FETCH_WORKERS": "4",
            "FETCH_PROCESSES": "1",
            # Short test deadlines: keep back 1.5 s for upload and commit instead of 10 s.
            "DEADLINE_RESERVE_MS": "1500",
            # Leases end 1 s after the deadline, so redeliveries need not wait 30 s; one
            # kill test runs with the default grace.
            "LEASE_GRACE_SECONDS": "1",
            "POWERTOOLS_SERVICE_NAME": "aggregator",
            "POWERTOOLS_METRICS_NAMESPACE": "AggregatorTests",
            "LOG_LEVEL": "INFO",
        }
        env.update(extra)
        return env

    # -- reading back ---------------------------------------------------------------------------
    def scan(self, prefix: str) -> archives.Scan:
        return archives.scan(self.minio, self.archive_bucket, prefix)

    def archive_keys(self, prefix: str) -> list[str]:
        return archives.list_keys(self.minio, self.archive_bucket, prefix)

    def claims(self, table: str) -> dict[str, dict[str, Any]]:
        return scan_claims(self.dynamodb, table)


@dataclass
class Batch:
    """Objects uploaded for one scenario, the messages naming them, and where they go."""

    world: World
    bucket: str
    table: str
    secret: str
    prefix: str
    env: dict[str, str]
    objects: list[Uploaded]
    messages: list[Message]

    def event(self, batch: list[Message] | None = None, *, again: bool = False) -> dict[str, Any]:
        """The SQS event of ``batch`` (default: every message); ``again``: as redelivered."""
        chosen = self.messages if batch is None else batch
        return sqs_event(redelivered(chosen) if again else chosen, receive_count=2 if again else 1)

    def scan(self) -> archives.Scan:
        return self.world.scan(self.prefix)

    def problems(self, *, expected: list[Uploaded] | None = None, pending_uploads_ok: bool = False) -> list[str]:
        """Every object in exactly one archive with its bytes, and every claim naming an
        archive that lists its object; nothing else archived, no upload left behind."""
        scanned = self.scan()
        problems = scanned.exactly_once(self.objects if expected is None else expected,
                                        pending_uploads_ok=pending_uploads_ok)
        holders: dict[str, set[str]] = {}
        for archive in scanned.archives:
            for entry in archive.manifest["objects"]:
                holders.setdefault(archive.key, set()).add(f"{entry['bucket']}/{entry['key']}#")
        for object_id, claim in self.world.claims(self.table).items():
            listed = holders.get(str(claim.get("ArchiveKey")), set())
            if not any(name in object_id for name in listed):
                problems.append(f"claim {object_id} names {claim.get('ArchiveKey')}, which does not list it")
        return problems


def new_batch(world: World, rng: random.Random, *, objects: int = 12, sizes: tuple[int, int] = (200, 6000),
              big: tuple[int, ...] = (), versioned: bool = True, prefix: str = "t", two_per_message: float = 0.3,
              env: dict[str, str] | None = None, **more_env: str) -> Batch:
    """``objects`` random small objects (plus ``big`` ones of these sizes), one or two per message."""
    bucket, table, secret = world.bucket(versioned=versioned), world.table(), world.secret()
    archive_prefix = f"{prefix}/{uuid.uuid4().hex[:10]}"
    bodies = [rng.randbytes(rng.randint(*sizes)) for _ in range(objects)] + [rng.randbytes(size) for size in big]
    uploaded = [upload(world.s3, bucket, f"in/{i:04d}-{rng.randrange(10**6)}.bin", body)
                for i, body in enumerate(bodies)]
    groups: list[list[Uploaded]] = []
    for obj in uploaded:
        if groups and len(groups[-1]) == 1 and rng.random() < two_per_message:
            groups[-1].append(obj)
        else:
            groups.append([obj])
    return Batch(world=world, bucket=bucket, table=table, secret=secret, prefix=archive_prefix,
                 env=world.env(table=table, secret=secret, prefix=archive_prefix, **(env or {}), **more_env),
                 objects=uploaded,
                 messages=messages([notification(*group) for group in groups]))
