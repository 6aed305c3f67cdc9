"""The ``local`` stage as serverless.yml defines it: names, sizing, trigger, environment.

The local stack provisions what serverless.yml would deploy for ``--stage local`` (same
resource names, same function environment, same trigger settings), so ``serverless
invoke local --stage local`` and the runner see one and the same stack. Only the
variables serverless.yml uses are resolved (``${self:service}``, ``${sls:stage}``,
``${param:...}``, ``${self:custom...}``, ``${opt:region, ...}`` and the CloudFormation
pseudo parameters ``${AWS::AccountId}`` / ``${AWS::Region}``); an unexpected one raises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ACCOUNT_ID = "123456789012"  # moto's default account
_VARIABLE = re.compile(r"\$\{([^{}]+)\}")


class ServerlessConfigError(ValueError):
    """serverless.yml uses something this reader does not resolve."""


@dataclass(frozen=True)
class StageConfig:
    service: str
    stage: str
    region: str
    landing_bucket: str
    queue: str
    dlq: str
    table: str
    secret: str
    function_name: str
    handler: str
    timeout_s: int
    memory_mb: int
    visibility_timeout_s: int
    max_receive_count: int
    batch_size: int
    batching_window_s: int
    max_concurrency: int
    report_batch_item_failures: bool
    environment: dict[str, str]


class _TolerantLoader(yaml.SafeLoader):  # type: ignore[misc]
    """Keeps CloudFormation tags (``!Ref``, ``!GetAtt``...) as ``{"!Tag": value}``."""


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        return {f"!{suffix}": loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {f"!{suffix}": loader.construct_sequence(node, deep=True)}
    return {f"!{suffix}": loader.construct_mapping(node, deep=True)}


_TolerantLoader.add_multi_constructor("!", _tagged)


def load_stage(path: Path, *, stage: str = "local", function: str = "aggregator") -> StageConfig:
    document = yaml.load(path.read_text(), Loader=_TolerantLoader)
    params = {**document.get("params", {}).get("default", {}), **document.get("params", {}).get(stage, {})}
    service = document["service"]
    region = _region(document.get("provider", {}).get("region", "us-east-1"))

    def resolve(value: Any, depth: int = 0) -> Any:
        if not isinstance(value, str):
            return value
        if depth > 10:
            raise ServerlessConfigError(f"variables nest too deep in {value!r}")
        whole = _VARIABLE.fullmatch(value)
        if whole:  # a value that is one variable keeps its type (numbers stay numbers)
            return resolve(lookup(whole.group(1).strip()), depth + 1)
        resolved = _VARIABLE.sub(lambda m: str(resolve(lookup(m.group(1).strip()), depth + 1)), value)
        # A nested variable (``${self:custom.map.${param:key}}``): the inner one first, then the outer.
        return resolve(resolved, depth + 1) if resolved != value and "${" in resolved else resolved

    def lookup(name: str) -> Any:
        if name == "self:service":
            return service
        if name == "sls:stage":
            return stage
        if name == "AWS::AccountId":
            return ACCOUNT_ID
        if name == "AWS::Region":
            return region
        if name.startswith("opt:region"):
            return region
        if name.startswith("param:") and name[6:] in params:
            return params[name[6:]]
        if name.startswith("self:custom."):
            value: Any = document.get("custom", {})
            for part in name[len("self:custom."):].split("."):
                value = value[part]
            return value
        raise ServerlessConfigError(f"serverless.yml variable ${{{name}}} is not resolved here")

    fn = document["functions"][function]
    sqs = next(event["sqs"] for event in fn.get("events", []) if "sqs" in event)
    resources = document.get("resources", {}).get("Resources", {})
    redrive = resources.get("IngestQueue", {}).get("Properties", {}).get("RedrivePolicy", {})
    custom = document.get("custom", {})
    return StageConfig(
        service=service,
        stage=stage,
        region=region,
        landing_bucket=resolve(custom["landingBucketName"]),
        queue=resolve(custom["ingestQueueName"]),
        dlq=resolve(custom["deadLetterQueueName"]),
        table=resolve(custom["idempotencyTableName"]),
        secret=str(resolve("${param:minioSecretName}")),
        function_name=function,
        handler=fn["handler"],
        timeout_s=int(resolve(fn.get("timeout", 6))),
        memory_mb=int(resolve(fn.get("memorySize", 1024))),
        visibility_timeout_s=int(resolve(resources["IngestQueue"]["Properties"]["VisibilityTimeout"])),
        max_receive_count=int(resolve(redrive.get("maxReceiveCount", 5))),
        batch_size=int(resolve(sqs.get("batchSize", 10))),
        batching_window_s=int(resolve(sqs.get("maximumBatchingWindow", 0))),
        max_concurrency=int(resolve(sqs.get("maximumConcurrency", 2))),
        report_batch_item_failures=sqs.get("functionResponseType") == "ReportBatchItemFailures",
        environment={name: str(resolve(value)) for name, value in fn.get("environment", {}).items()},
    )


def _region(raw: str) -> str:
    match = re.fullmatch(r"\$\{opt:region,\s*'([^']+)'\}", raw)
    return match.group(1) if match else raw
