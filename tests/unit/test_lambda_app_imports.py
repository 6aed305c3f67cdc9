"""What importing the handler costs: modules a cold start must not load, and the partial
batch response built without Powertools' batch utility. No sockets: a fresh interpreter
imports the module and lists sys.modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from aggregator import lambda_app

# Powertools' batch utility (asyncio, every event class of data_classes) and the X-Ray SDK
# with tracing off: ~0.04 s and ~0.2 s of a cold start (benchmarks/test_cold_start.py).
NOT_AT_IMPORT = ("asyncio", "aws_lambda_powertools.utilities.batch", "aws_lambda_powertools.utilities.data_classes",
                 "aws_xray_sdk")
ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_handler_loads_neither_the_batch_utility_nor_asyncio() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_", "PYTHON"))}
    env["POWERTOOLS_TRACE_DISABLED"] = "true"
    code = "import json, sys, handler; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                            cwd=ROOT)
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert "aggregator.lambda_app" in loaded
    assert [m for m in loaded if m.split(".")[0] == "asyncio" or m.startswith(NOT_AT_IMPORT)] == []


def test_the_partial_batch_response_lists_failed_records_in_batch_order() -> None:
    records = [{"messageId": m} for m in ("a", "b", "c", "b", "d")]
    assert lambda_app.partial_batch_response(records, failed={"d", "b"}) == {
        "batchItemFailures": [{"itemIdentifier": "b"}, {"itemIdentifier": "b"}, {"itemIdentifier": "d"}]}
    assert lambda_app.partial_batch_response(records, failed=set()) == {"batchItemFailures": []}
    everything = lambda_app.partial_batch_response(records, failed={"a", "b", "c", "d"})
    assert [item["itemIdentifier"] for item in everything["batchItemFailures"]] == ["a", "b", "c", "b", "d"]
