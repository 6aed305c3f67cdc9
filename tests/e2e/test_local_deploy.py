"""`serverless deploy --stage local` into a fresh moto server, then `serverless remove`.

The stack is deployed once for this module by the same code `scripts/local_deploy.py`
runs; each test reads one part of it back through the AWS APIs. moto ignores some
properties (see ``MOTO_SKIPS``): those are asserted on the template in
test_serverless_config.py instead. The last test removes the stack and checks that
nothing is left behind.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aggregator.base.events import parse_body
from aggregator.base.settings import Settings
from scripts import local_deploy
from scripts.local_deploy import Stack, client
from tests.support.servers import MotoServer

# moto validates the template with cfn-lint, which refuses python3.11 (E2533: Lambda
# deprecated it on 2026-06-30 and blocks creating such functions from 2026-07-31), as AWS
# itself would. The template names python3.11 because the tests run it (issue 13; README,
# "The artifact"); these tests pass again once the runtime and the tests' Python move on.
# Until then they run in `make test-full` only (the refused deploy costs ~45 s of CI);
# test_serverless_config.py::test_the_runtime_can_still_be_deployed records the refusal in
# every `make test`.
pytestmark = [pytest.mark.servers, pytest.mark.slow, pytest.mark.xfail(
    strict=True, raises=local_deploy.DeployError,
    reason="python3.11 is past Lambda's creation block (2026-07-31); moto's cfn-lint refuses the stack")]

ROOT = Path(__file__).resolve().parents[2]
STAGE = "local"
SERVICE = local_deploy.SERVICE


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    # A server of its own: the stack's fixed names must not meet other tests' resources.
    with MotoServer() as server:
        yield server.endpoint_url


@pytest.fixture(scope="module")
def stack(endpoint: str) -> Stack:
    return local_deploy.deploy(endpoint, stage=STAGE)


def local_params() -> dict[str, Any]:
    """The local stage's params from serverless.yml (tags ignored: params have none)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    params = yaml.load((ROOT / "serverless.yml").read_text(), Loader=Loader)["params"]
    return {**params["default"], **params[STAGE]}


PARAMS = local_params()


def test_stack_is_complete(stack: Stack) -> None:
    assert stack.name == f"{SERVICE}-{STAGE}"
    assert stack.status in ("CREATE_COMPLETE", "UPDATE_COMPLETE")
    expected = {
        "LandingBucket": "AWS::S3::Bucket",
        "IngestQueue": "AWS::SQS::Queue",
        "DeadLetterQueue": "AWS::SQS::Queue",
        "IdempotencyTable": "AWS::DynamoDB::Table",
        "AggregatorLambdaFunction": "AWS::Lambda::Function",
        "AggregatorEventSourceMappingSQSIngestQueue": "AWS::Lambda::EventSourceMapping",
        "IamRoleLambdaExecution": "AWS::IAM::Role",
    }
    assert {name: stack.resources[name][0] for name in expected} == expected
    assert stack.physical("IdempotencyTable") == f"{SERVICE}-{STAGE}-claims"


def test_queue_and_dlq(endpoint: str, stack: Stack) -> None:
    sqs = client("sqs", endpoint)
    queue = sqs.get_queue_attributes(QueueUrl=stack.physical("IngestQueue"), AttributeNames=["All"])["Attributes"]
    dlq = sqs.get_queue_attributes(QueueUrl=stack.physical("DeadLetterQueue"), AttributeNames=["All"])["Attributes"]
    assert queue["QueueArn"].endswith(f":{SERVICE}-{STAGE}-ingest")
    assert json.loads(queue["RedrivePolicy"]) == {"deadLetterTargetArn": dlq["QueueArn"], "maxReceiveCount": 5}
    assert int(queue["VisibilityTimeout"]) == PARAMS["queueVisibilityTimeout"]
    assert int(dlq["MessageRetentionPeriod"]) == 1209600
    assert queue["SqsManagedSseEnabled"] == dlq["SqsManagedSseEnabled"] == "true"


def test_claims_table(endpoint: str, stack: Stack) -> None:
    dynamodb = client("dynamodb", endpoint)
    table = dynamodb.describe_table(TableName=stack.physical("IdempotencyTable"))["Table"]
    assert table["KeySchema"] == [{"AttributeName": "ObjectID", "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == [{"AttributeName": "ObjectID", "AttributeType": "S"}]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    # moto skips TTL in CloudFormation; the deploy script applies the template's.
    ttl = dynamodb.describe_time_to_live(TableName=table["TableName"])["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "ExpiresAt")


def test_function(endpoint: str, stack: Stack) -> None:
    function = client("lambda", endpoint).get_function_configuration(
        FunctionName=stack.physical("AggregatorLambdaFunction"))
    assert function["FunctionName"] == f"{SERVICE}-{STAGE}-aggregator"
    assert (function["Runtime"], function["Handler"]) == ("python3.11", "handler.handler")
    assert function["Timeout"] == PARAMS["functionTimeout"]
    assert function["MemorySize"] == PARAMS["memorySize"]
    environment = function["Environment"]["Variables"]
    assert environment["IDEMPOTENCY_TABLE_NAME"] == stack.physical("IdempotencyTable")
    # The deployed environment is one the code accepts, pointed at moto.
    settings = Settings.from_env({**environment, "AWS_ENDPOINT_URL": endpoint})
    assert environment["USE_MOTO"] == "true" and settings.environment == "dev"


def test_event_source_mapping(endpoint: str, stack: Stack) -> None:
    function_arn = client("lambda", endpoint).get_function_configuration(
        FunctionName=stack.physical("AggregatorLambdaFunction"))["FunctionArn"]
    (mapping,) = local_deploy.event_source_mappings(endpoint, function_arn)
    queue_arn = client("sqs", endpoint).get_queue_attributes(
        QueueUrl=stack.physical("IngestQueue"), AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    assert mapping["EventSourceArn"] == queue_arn
    assert mapping["BatchSize"] == PARAMS["batchSize"]
    assert mapping["MaximumBatchingWindowInSeconds"] == PARAMS["maximumBatchingWindow"]
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["ScalingConfig"] == {"MaximumConcurrency": PARAMS["maximumConcurrency"]}
    assert mapping["State"] == "Enabled"


def test_upload_to_landing_bucket_notifies_the_ingest_queue(endpoint: str, stack: Stack) -> None:
    bucket = stack.physical("LandingBucket")
    s3, sqs = client("s3", endpoint), client("sqs", endpoint)
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    key = "incoming/e2e/a file+with spaces.json"
    put = s3.put_object(Bucket=bucket, Key=key, Body=b'{"hello": "world"}\n')
    bodies = []
    deadline = time.monotonic() + 10
    while not bodies and time.monotonic() < deadline:
        messages = sqs.receive_message(QueueUrl=stack.physical("IngestQueue"), MaxNumberOfMessages=10,
                                       WaitTimeSeconds=1).get("Messages", [])
        bodies += [m["Body"] for m in messages]
    (ref,) = [ref for body in bodies for ref in parse_body(body).objects]
    assert (ref.bucket, ref.key, ref.etag) == (bucket, key, put["ETag"].strip('"'))
    assert ref.version_id in (None, put["VersionId"])  # moto's notifications leave versionId out


def test_sample_events_name_this_stack(endpoint: str, stack: Stack) -> None:
    queue_arn = client("sqs", endpoint).get_queue_attributes(
        QueueUrl=stack.physical("IngestQueue"), AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    for path in sorted((ROOT / "events").glob("*.json")):
        for record in json.loads(path.read_text())["Records"]:
            assert record["eventSourceARN"] == queue_arn, path.name
    buckets = {bucket for bucket, _ in local_deploy.sample_objects()}
    assert buckets == {stack.physical("LandingBucket")}
    seeded = local_deploy.seed(endpoint)
    assert len(seeded) == len(set(local_deploy.sample_objects()))


def test_remove_deletes_everything(endpoint: str, stack: Stack) -> None:
    local_deploy.remove(endpoint, stage=STAGE)
    cloudformation = client("cloudformation", endpoint)
    statuses = {s["StackName"]: s["StackStatus"] for s in cloudformation.list_stacks()["StackSummaries"]}
    assert statuses[stack.name] == "DELETE_COMPLETE"
    assert not client("sqs", endpoint).list_queues().get("QueueUrls")
    assert client("dynamodb", endpoint).list_tables()["TableNames"] == []
    assert client("lambda", endpoint).list_functions()["Functions"] == []
    assert client("lambda", endpoint).list_event_source_mappings()["EventSourceMappings"] == []
    assert client("s3", endpoint).list_buckets()["Buckets"] == []
