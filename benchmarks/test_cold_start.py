"""Cold start of the packaged function (issue 13, section 5).

    python -m benchmarks.test_cold_start [--turns N] [--task-root DIR]

Each turn starts fresh interpreters the way a sandbox does (local/worker.py: ``python -S``,
``PYTHONPATH`` = the unzipped twin + the runtime client's packages, bytecode not written,
the template's environment) and times, inside the child:

- **handler**: ``import handler`` plus the first invocation's set-up (settings, clients:
  one call with an empty SQS batch, nothing sent anywhere);
- **baseline**: ``import boto3, aws_lambda_powertools`` from the same task root.

The two alternate turn by turn; the figure is median(handler) / median(baseline). The
script also reports, for information, the handler with tracing on (X-Ray SDK imported,
botocore patched) and without the zip's precompiled .pyc files (``PYTHONPYCACHEPREFIX``
at an empty directory: every module compiled at import, as on a zip without them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from local import artifact, worker

TARGET = 1.2
# The stage the e2e tests package (tests/e2e/conftest.py): one build serves both.
STAGE = "prod"
TURNS = 5 if os.environ.get("BENCH_QUICK") else 9

HANDLER = """
import time
t0 = time.perf_counter()
import handler

class Context:
    aws_request_id = "cold-start"
    function_name = "aggregator"
    invoked_function_arn = "arn:aws:lambda:eu-west-2:123456789012:function:aggregator"
    memory_limit_in_mb = "1024"
    def get_remaining_time_in_millis(self):
        return 60000

# An empty batch: the set-up runs in full, then the answer is no failure, nothing sent.
assert handler.handler({"Records": []}, Context()) == {"batchItemFailures": []}
print(time.perf_counter() - t0)
"""
BASELINE = """
import time
t0 = time.perf_counter()
import boto3, aws_lambda_powertools
print(time.perf_counter() - t0)
"""


def task_root() -> Path:
    """The unzipped twin, stage prod: the e2e tests' build, reused while its inputs are
    unchanged (local/artifact.py), else built now."""
    return artifact.ensure(artifact.HOST_ARCH, stage=STAGE).task_root


def _environment(root: Path, extra: dict[str, str]) -> dict[str, str]:
    template = json.loads(artifact.twin().template_path.read_text()) if artifact.twin().template_path.exists() else {}
    variables = (template.get("Resources", {}).get("AggregatorLambdaFunction", {}).get("Properties", {})
                 .get("Environment", {}).get("Variables", {}))
    env = worker.inherited_environment()
    env.update(variables)
    env.update({
        "IDEMPOTENCY_TABLE_NAME": "claims", "MINIO_SECRET_ID": "minio",
        # Nothing answers there; the set-up sends nothing anyway.
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "eu-west-2", "AWS_DEFAULT_REGION": "eu-west-2",
        "AWS_LAMBDA_FUNCTION_NAME": "aggregator", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST", "LAMBDA_TASK_ROOT": str(root), "_HANDLER": "handler.handler",
        "PYTHONPATH": worker.python_path(root, worker.runtime_packages()), "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    env.update(extra)
    return env


def once(root: Path, code: str, **extra: str) -> float:
    """Seconds the child spent on ``code``'s timed part, in a fresh interpreter."""
    result = subprocess.run([worker.interpreter(), "-S", "-c", code], cwd=root, env=_environment(root, extra),
                            capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"cold start child failed:\n{result.stdout}\n{result.stderr}")
    return float(result.stdout.strip().splitlines()[-1])


def measure(root: Path, *, turns: int = TURNS, extras: bool = False) -> dict[str, Any]:
    runs: dict[str, Any] = {"handler": lambda: once(root, HANDLER), "baseline": lambda: once(root, BASELINE)}
    if extras:
        empty = tempfile.mkdtemp(prefix="no-pyc-")
        runs["handler, tracing on"] = lambda: once(root, HANDLER, POWERTOOLS_TRACE_DISABLED="false")
        runs["handler, no .pyc"] = lambda: once(root, HANDLER, PYTHONPYCACHEPREFIX=empty)
    once(root, BASELINE)  # warm the page cache: every turn then reads the same files from memory
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(turns):
        for name, run in runs.items():
            samples[name].append(run())
    medians = {name: statistics.median(values) for name, values in samples.items()}
    return {"ratio": medians["handler"] / medians["baseline"], "medians_s": medians, "samples_s": samples,
            "turns": turns}


def describe(figures: dict[str, Any]) -> str:
    medians = figures["medians_s"]
    parts = [f"{name} {value:.3f} s" for name, value in medians.items()]
    return (f"handler import + first set-up / import boto3, aws_lambda_powertools = {figures['ratio']:.2f}x "
            f"(target <= {TARGET}x); medians of {figures['turns']} turns: " + ", ".join(parts))


@pytest.fixture(scope="module")
def cold_start(store: dict[str, Any]) -> dict[str, Any]:
    if "cold_start" not in store:
        store["cold_start"] = measure(task_root())
    figures: dict[str, Any] = store["cold_start"]
    return figures


def test_cold_start(cold_start: dict[str, Any]) -> None:
    print(describe(cold_start))
    assert cold_start["medians_s"]["handler"] > 0 and cold_start["medians_s"]["baseline"] > 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.test_cold_start", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=TURNS)
    parser.add_argument("--task-root", type=Path,
                        help="default: build/<host arch>/unzipped, stage prod (made if missing or out of date)")
    args = parser.parse_args(argv)
    figures = measure(args.task_root or task_root(), turns=args.turns, extras=True)
    print(describe(figures))
    return 0 if figures["ratio"] <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
