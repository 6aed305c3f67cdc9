"""The resources the local stack provisions, in moto and in the MinIO stand-in.

Everything is created with fixed dummy credentials and an explicit endpoint, whatever
the caller's environment holds: nothing here can reach real AWS.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from types_boto3_dynamodb import DynamoDBClient

DUMMY_KEY = "testing"
NOTIFICATION_ID = "aggregator-ingest"
DLQ_RETENTION_S = 14 * 24 * 3600  # SQS's maximum: keep failures as long as possible
QUEUE_RETENTION_S = 4 * 24 * 3600  # SQS's default


@dataclass(frozen=True)
class Names:
    """Resource names: serverless.yml's for the stage, so invoke local finds the same ones."""

    landing_bucket: str
    queue: str
    dlq: str
    table: str
    secret: str
    archive_bucket: str  # in MinIO; serverless.yml does not name it (operators own MinIO)


@dataclass(frozen=True)
class Provisioned:
    landing_bucket: str
    landing_bucket_arn: str
    queue_url: str
    queue_arn: str
    dlq_url: str
    dlq_arn: str
    table: str
    secret_id: str
    secret_arn: str
    archive_bucket: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def aws_client(service: str, *, endpoint_url: str, region: str, max_pool: int = 10) -> Any:
    return boto3.session.Session().client(
        service,  # type: ignore[call-overload]
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=DUMMY_KEY,
        aws_secret_access_key=DUMMY_KEY,
        config=Config(max_pool_connections=max_pool, retries={"max_attempts": 5, "mode": "standard"},
                      s3={"addressing_style": "path"}),
    )


def minio_client(*, endpoint_url: str, access_key: str, secret_key: str) -> Any:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"}),
    )


def minio_secret(*, endpoint_url: str, access_key: str, secret_key: str, bucket: str) -> dict[str, str]:
    """The secret's JSON as CONTRACT.md section 3 describes it."""
    return {
        "endpoint_url": endpoint_url,
        "access_key": access_key,
        "secret_key": secret_key,
        "bucket": bucket,
        "region": "us-east-1",
        "addressing_style": "path",
    }


def provision_aws(*, endpoint_url: str, region: str, names: Names, visibility_timeout_s: int,
                  max_receive_count: int, secret: dict[str, str]) -> Provisioned:
    sqs = aws_client("sqs", endpoint_url=endpoint_url, region=region)
    s3 = aws_client("s3", endpoint_url=endpoint_url, region=region)

    dlq_url = sqs.create_queue(QueueName=names.dlq, Attributes={
        "MessageRetentionPeriod": str(DLQ_RETENTION_S)})["QueueUrl"]
    dlq_arn = _queue_arn(sqs, dlq_url)
    bucket_arn = f"arn:aws:s3:::{names.landing_bucket}"
    # The queue policy lets S3 (and only this bucket) send to it, as in the deployed stack.
    # moto does not enforce it; it is here so the local shape is the real one.
    queue_url = sqs.create_queue(QueueName=names.queue, Attributes={
        "VisibilityTimeout": str(visibility_timeout_s),
        "MessageRetentionPeriod": str(QUEUE_RETENTION_S),
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count}),
    })["QueueUrl"]
    queue_arn = _queue_arn(sqs, queue_url)
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "S3SendsObjectCreated",
            "Effect": "Allow",
            "Principal": {"Service": "s3.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": {"ArnLike": {"aws:SourceArn": bucket_arn}},
        }],
    })})

    create: dict[str, Any] = {"Bucket": names.landing_bucket}
    if region != "us-east-1":
        create["CreateBucketConfiguration"] = {"LocationConstraint": region}
    s3.create_bucket(**create)
    s3.put_bucket_versioning(Bucket=names.landing_bucket, VersioningConfiguration={"Status": "Enabled"})
    # Like S3, moto answers this with an s3:TestEvent message in the queue.
    s3.put_bucket_notification_configuration(Bucket=names.landing_bucket, NotificationConfiguration={
        "QueueConfigurations": [{"Id": NOTIFICATION_ID, "QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"]}],
    })

    create_table(aws_client("dynamodb", endpoint_url=endpoint_url, region=region), names.table)

    secrets = aws_client("secretsmanager", endpoint_url=endpoint_url, region=region)
    secret_arn = secrets.create_secret(Name=names.secret, SecretString=json.dumps(secret))["ARN"]
    return Provisioned(
        landing_bucket=names.landing_bucket, landing_bucket_arn=bucket_arn,
        queue_url=queue_url, queue_arn=queue_arn, dlq_url=dlq_url, dlq_arn=dlq_arn,
        table=names.table, secret_id=names.secret, secret_arn=secret_arn,
        archive_bucket=names.archive_bucket,
    )


def create_table(client: DynamoDBClient, name: str) -> None:
    """The claim table as the stack defines it: the same helper the tests use."""
    from tests.support.tables import create_claims_table

    create_claims_table(client, name)


def provision_minio(*, endpoint_url: str, access_key: str, secret_key: str, bucket: str) -> None:
    minio_client(endpoint_url=endpoint_url, access_key=access_key, secret_key=secret_key).create_bucket(Bucket=bucket)


def _queue_arn(sqs: Any, url: str) -> str:
    return str(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"])
