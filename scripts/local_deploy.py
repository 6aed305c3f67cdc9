"""Deploy the whole stack with `serverless deploy --stage local` into a moto server.

    .venv/bin/python scripts/local_deploy.py up                  # start moto, deploy, seed, wait;
                                                                 # Ctrl-C removes the stack, stops moto
    .venv/bin/python scripts/local_deploy.py check               # start, deploy, print, remove, stop
    .venv/bin/python scripts/local_deploy.py deploy --endpoint http://127.0.0.1:5000
    .venv/bin/python scripts/local_deploy.py remove --endpoint http://127.0.0.1:5000

The stack is exactly the one `serverless.yml` describes for the `local` stage. moto's
CloudFormation ignores a few properties (see ``MOTO_SKIPS``); after the deploy,
:func:`fill_moto_gaps` applies the ones the pipeline depends on (landing bucket
versioning, the S3 -> ingest queue notification, the table's TTL) straight from the
deployed template, so that uploads to the landing bucket reach the queue as on AWS.
``--seed`` uploads the objects that ``events/*.json`` name, with the bytes whose MD5 the
events carry as eTag, so `serverless invoke local -p events/...` finds them.

Nothing here talks to AWS: every client and the Serverless CLI get the moto endpoint and
dummy credentials.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file: make `tests.support` and `aggregator` importable
    sys.path.insert(0, str(ROOT))

SERVICE = "s3-minio-aggregator"
REGION = "eu-west-2"
EVENTS_DIR = ROOT / "events"
DEPLOY_TIMEOUT_S = 600
# What moto's CloudFormation accepts but does not apply (measured with moto 5.2).
MOTO_SKIPS = (
    "bucket policies, public access block, lifecycle rules, versioning and notifications",
    "queue policies",
    "DynamoDB TTL, point-in-time recovery and SSE",
    "Lambda architecture, ephemeral storage and tracing (and it cannot invoke without docker)",
    "CloudWatch alarms (accepted, not created)",
)


class DeployError(RuntimeError):
    """`serverless deploy`/`remove` failed; the message carries the CLI's output."""


@dataclass
class Stack:
    """What a deploy created, as CloudFormation reports it."""

    name: str
    status: str
    resources: dict[str, tuple[str, str]] = field(default_factory=dict)  # logical id -> (type, physical id)
    outputs: dict[str, str] = field(default_factory=dict)

    def physical(self, logical_id: str) -> str:
        return self.resources[logical_id][1]


def stack_name(stage: str) -> str:
    return f"{SERVICE}-{stage}"


def aws_env(endpoint_url: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for the Serverless CLI and SDKs: moto endpoint, dummy credentials."""
    env = dict(os.environ if base is None else base)
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        env.pop(name, None)
    env.update(
        AWS_ENDPOINT_URL=endpoint_url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION=REGION,
        AWS_DEFAULT_REGION=REGION,
        # Never read a developer's real profile by accident.
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        # The plugin's pip runs in this interpreter's environment (it has pip).
        SLS_PYTHON_BIN=env.get("SLS_PYTHON_BIN", sys.executable),
    )
    return env


def client(service: str, endpoint_url: str) -> Any:
    import boto3

    return boto3.client(service, endpoint_url=endpoint_url, region_name=REGION,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def run_serverless(command: str, endpoint_url: str, *, stage: str = "local",
                   params: Sequence[str] = (), timeout: float = DEPLOY_TIMEOUT_S) -> str:
    """Run `npx serverless <command> --stage <stage>` in the repo; raise DeployError on failure."""
    argv = ["npx", "--no-install", "serverless", command, "--stage", stage, "--region", REGION]
    argv += [f"--param={p}" for p in params]
    result = subprocess.run(argv, cwd=ROOT, env=aws_env(endpoint_url), capture_output=True, text=True,
                            timeout=timeout, check=False)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise DeployError(f"serverless {command} --stage {stage} exited with {result.returncode}:\n{output}")
    return output


def describe(endpoint_url: str, *, stage: str = "local") -> Stack:
    cloudformation = client("cloudformation", endpoint_url)
    found = cloudformation.describe_stacks(StackName=stack_name(stage))["Stacks"][0]
    stack = Stack(name=found["StackName"], status=found["StackStatus"],
                  outputs={o["OutputKey"]: o["OutputValue"] for o in found.get("Outputs", [])})
    paginator = cloudformation.get_paginator("list_stack_resources")
    for page in paginator.paginate(StackName=stack.name):
        for summary in page["StackResourceSummaries"]:
            if summary.get("LogicalResourceId"):  # moto lists resources it does not model without one
                stack.resources[summary["LogicalResourceId"]] = (
                    summary["ResourceType"], summary.get("PhysicalResourceId", ""))
    return stack


def deployed_template(endpoint_url: str, *, stage: str = "local") -> dict[str, Any]:
    body = client("cloudformation", endpoint_url).get_template(StackName=stack_name(stage))["TemplateBody"]
    return body if isinstance(body, dict) else json.loads(body)


def fill_moto_gaps(endpoint_url: str, *, stage: str = "local") -> list[str]:
    """Apply what moto skipped and the pipeline needs, from the deployed template.

    Returns one line per change, for the printout.
    """
    stack = describe(endpoint_url, stage=stage)
    template = deployed_template(endpoint_url, stage=stage)
    resources = template["Resources"]
    found = client("cloudformation", endpoint_url).describe_stacks(StackName=stack.name)["Stacks"][0]
    bucket_name = stack.physical("LandingBucket")
    bucket = resources["LandingBucket"]["Properties"]
    s3 = client("s3", endpoint_url)
    done = []
    status = bucket["VersioningConfiguration"]["Status"]
    s3.put_bucket_versioning(Bucket=bucket_name, VersioningConfiguration={"Status": status})
    done.append(f"versioning {status} on {bucket_name}")
    queue_url = stack.physical("IngestQueue")
    queue_arn = client("sqs", endpoint_url).get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    configurations = []
    for configuration in bucket["NotificationConfiguration"]["QueueConfigurations"]:
        entry: dict[str, Any] = {"QueueArn": queue_arn, "Events": [configuration["Event"]]}
        prefix = _landing_prefix(template, found) if "Filter" in configuration else ""
        if prefix:
            entry["Filter"] = {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}}
        configurations.append(entry)
    s3.put_bucket_notification_configuration(
        Bucket=bucket_name, NotificationConfiguration={"QueueConfigurations": configurations})
    done.append(f"notification {', '.join(c['Events'][0] for c in configurations)} -> {queue_arn}")
    table = resources["IdempotencyTable"]["Properties"]
    ttl = table["TimeToLiveSpecification"]
    client("dynamodb", endpoint_url).update_time_to_live(
        TableName=stack.physical("IdempotencyTable"),
        TimeToLiveSpecification={"Enabled": bool(ttl["Enabled"]), "AttributeName": ttl["AttributeName"]})
    done.append(f"TTL on {ttl['AttributeName']} for {stack.physical('IdempotencyTable')}")
    return done


def _landing_prefix(template: Mapping[str, Any], found: Mapping[str, Any]) -> str:
    """The `LandingPrefix` parameter as deployed (the template's default unless overridden)."""
    deployed = {p["ParameterKey"]: p.get("ParameterValue", "") for p in found.get("Parameters", [])}
    default = template.get("Parameters", {}).get("LandingPrefix", {}).get("Default", "")
    return str(deployed.get("LandingPrefix", default))


def sample_object_body(bucket: str, key: str) -> bytes:
    """The bytes of a sample object; events/*.json carry their MD5 as the eTag."""
    return f"sample object {bucket}/{key}\n".encode()


def sample_objects() -> Iterator[tuple[str, str]]:
    """(bucket, key) of every object the sample events name."""
    from aggregator.base.errors import MalformedMessage
    from aggregator.base.events import parse_body

    for path in sorted(EVENTS_DIR.glob("*.json")):
        for record in json.loads(path.read_text())["Records"]:
            with contextlib.suppress(MalformedMessage):
                for ref in parse_body(record["body"]).objects:
                    yield ref.bucket, ref.key


def seed(endpoint_url: str) -> list[str]:
    """Upload the sample objects; each one's ETag is the MD5 its event carries."""
    s3 = client("s3", endpoint_url)
    done = []
    for bucket, key in sorted(set(sample_objects())):
        body = sample_object_body(bucket, key)
        etag = s3.put_object(Bucket=bucket, Key=key, Body=body)["ETag"].strip('"')
        assert etag == hashlib.md5(body).hexdigest(), f"moto returned ETag {etag} for a simple upload"
        done.append(f"s3://{bucket}/{key} ({len(body)} bytes)")
    return done


def deploy(endpoint_url: str, *, stage: str = "local", params: Sequence[str] = (),
           fill_gaps: bool = True) -> Stack:
    """Deploy the stack; on failure reset moto (a half-created stack blocks the next try)."""
    try:
        run_serverless("deploy", endpoint_url, stage=stage, params=params)
    except (DeployError, subprocess.TimeoutExpired):
        reset_moto(endpoint_url)
        raise
    if fill_gaps:
        fill_moto_gaps(endpoint_url, stage=stage)
    return describe(endpoint_url, stage=stage)


def remove(endpoint_url: str, *, stage: str = "local") -> None:
    """Empty the landing bucket (every version: CloudFormation will not delete a full
    bucket) and `serverless remove` the stack."""
    with contextlib.suppress(Exception):  # no stack, no bucket: nothing to empty
        empty_bucket(endpoint_url, describe(endpoint_url, stage=stage).physical("LandingBucket"))
    run_serverless("remove", endpoint_url, stage=stage)


def empty_bucket(endpoint_url: str, bucket: str) -> None:
    s3 = client("s3", endpoint_url)
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        doomed = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                  for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        if doomed:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": doomed, "Quiet": True})


def reset_moto(endpoint_url: str) -> None:
    request = urllib.request.Request(f"{endpoint_url}/moto-api/reset", method="POST")
    with contextlib.suppress(OSError):
        urllib.request.urlopen(request, timeout=10).close()


def report(endpoint_url: str, *, stage: str = "local") -> str:
    """A readable account of the deployed stack and the values that matter."""
    stack = describe(endpoint_url, stage=stage)
    lines = [f"stack {stack.name}: {stack.status} at {endpoint_url}"]
    width = max(len(logical) for logical in stack.resources)
    for logical, (kind, physical) in sorted(stack.resources.items()):
        lines.append(f"  {logical:<{width}}  {kind:<34} {physical}")
    sqs = client("sqs", endpoint_url)
    for logical in ("IngestQueue", "DeadLetterQueue"):
        attributes = sqs.get_queue_attributes(QueueUrl=stack.physical(logical), AttributeNames=["All"])["Attributes"]
        wanted = ("VisibilityTimeout", "MessageRetentionPeriod", "SqsManagedSseEnabled", "RedrivePolicy")
        lines.append(f"  {logical}: " + ", ".join(f"{k}={attributes[k]}" for k in wanted if k in attributes))
    table = client("dynamodb", endpoint_url).describe_table(TableName=stack.physical("IdempotencyTable"))["Table"]
    lines.append(f"  IdempotencyTable: key {table['KeySchema']}, "
                 f"billing {table.get('BillingModeSummary', {}).get('BillingMode')}")
    lambda_ = client("lambda", endpoint_url)
    function = lambda_.get_function_configuration(FunctionName=stack.physical("AggregatorLambdaFunction"))
    lines.append(f"  aggregator: {function['Runtime']} {function['Handler']} timeout {function['Timeout']} s, "
                 f"{function['MemorySize']} MB")
    for mapping in event_source_mappings(endpoint_url, function["FunctionArn"]):
        window = mapping.get("MaximumBatchingWindowInSeconds")
        lines.append(f"  trigger: batch {mapping['BatchSize']}, window {window} s, "
                     f"{mapping.get('FunctionResponseTypes')}, {mapping.get('ScalingConfig')}")
    lines.append("moto skips: " + "; ".join(MOTO_SKIPS))
    return "\n".join(lines)


def event_source_mappings(endpoint_url: str, function_arn: str) -> list[dict[str, Any]]:
    """The function's triggers (filtered here: moto ignores the FunctionName filter)."""
    found = client("lambda", endpoint_url).list_event_source_mappings()["EventSourceMappings"]
    return [m for m in found if m.get("FunctionArn") == function_arn]


@contextlib.contextmanager
def moto_endpoint(endpoint_url: str | None, port: int | None) -> Iterator[str]:
    """The given endpoint, or a moto server started (and stopped) here."""
    if endpoint_url:
        yield endpoint_url.rstrip("/")
        return
    from tests.support.servers import MotoServer

    with MotoServer(port=port) as server:
        print(f"moto_server pid {server.pid} on {server.endpoint_url}", flush=True)
        yield server.endpoint_url


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("up", "check", "deploy", "remove"))
    parser.add_argument("--endpoint", help="a running moto server (default: start one on a free port)")
    parser.add_argument("--port", type=int, help="port for the moto server started here")
    parser.add_argument("--stage", default="local")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="passed to serverless as --param (repeatable)")
    parser.add_argument("--seed", action="store_true", help="upload the objects events/*.json name")
    args = parser.parse_args(argv)
    if args.command in ("deploy", "remove") and not args.endpoint:
        parser.error(f"{args.command} needs --endpoint (a server started here would vanish on exit)")

    with moto_endpoint(args.endpoint, args.port) as endpoint:
        if args.command == "remove":
            remove(endpoint, stage=args.stage)
            print(f"removed {stack_name(args.stage)} from {endpoint}")
            return 0
        started = time.monotonic()
        deploy(endpoint, stage=args.stage, params=args.param, fill_gaps=False)
        print(f"deployed in {time.monotonic() - started:.1f} s")
        for line in fill_moto_gaps(endpoint, stage=args.stage):
            print(f"applied (moto skips it): {line}")
        if args.seed or args.command == "up":
            for line in seed(endpoint):
                print(f"seeded {line}")
        print(report(endpoint, stage=args.stage), flush=True)
        if args.command == "up":
            print(f"\nexport AWS_ENDPOINT_URL={endpoint} AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing"
                  f" AWS_REGION={REGION}\nCtrl-C removes the stack and stops moto.", flush=True)
            # Explicit: a shell's background job inherits SIGINT ignored.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            with contextlib.suppress(KeyboardInterrupt, SystemExit):
                signal.pause()
        if args.command in ("up", "check"):
            started = time.monotonic()
            remove(endpoint, stage=args.stage)
            print(f"removed in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
