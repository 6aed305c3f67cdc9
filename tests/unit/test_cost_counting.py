"""The counting proxy's classification and the cost report's sums, without sockets."""

from __future__ import annotations

import gzip
import json
import math

from benchmarks.cost import CostReport, Invocation
from benchmarks.cost_model import LAMBDA_DURATION, Prices, item_size
from benchmarks.cost_proxy import Counter
from tests.support.fault_proxy import Request

DYNAMODB = "com.amazonaws.dynamodb.v20120810"


def _json_request(operation: str, prefix: str = "DynamoDB_20120810") -> Request:
    return Request(method="POST", target="/", headers=(("Host", "127.0.0.1:1"),
                                                       ("X-Amz-Target", f"{prefix}.{operation}")))


def test_dynamodb_requests_are_priced_from_their_json_even_gzipped() -> None:
    counter = Counter(minio_buckets=set())
    item = {"ObjectID": {"S": "x" * 1500}}
    body = json.dumps({"TableName": "t", "Item": item, "ConditionExpression": "attribute_not_exists(ObjectID)"})
    failed = gzip.compress(json.dumps({"__type": f"{DYNAMODB}#ConditionalCheckFailedException"}).encode())
    counter.record("json", _json_request("PutItem"), body.encode(), 200, b"{}", 100)
    counter.record("json", _json_request("PutItem"), body.encode(), 400, failed, 100,
                   response_headers=[("Content-Encoding", "gzip")])
    counter.record("json", _json_request("GetSecretValue", "secretsmanager"), b"{}", 200, b"{}", 100)
    row = counter.snapshot()["dynamodb PutItem"]
    assert item_size(item) > 1024
    assert (row["requests"], row["wru"], row["failed_conditions"], row["errors"], row["unparsed"]) == (2, 4, 1, 1, 0)
    assert counter.snapshot()["secretsmanager GetSecretValue"]["requests"] == 1


def test_an_unreadable_dynamodb_request_is_flagged_not_free() -> None:
    counter = Counter(minio_buckets=set())
    counter.record("json", _json_request("PutItem"), b"\x00not json", 200, b"{}", 100)
    assert counter.snapshot()["dynamodb PutItem"]["unparsed"] == 1


def test_s3_requests_split_into_landing_bucket_and_minio() -> None:
    counter = Counter(minio_buckets={"archives"})
    get = Request(method="GET", target="/landing/a%2Fb.jsonl", headers=(("Host", "h"),))
    put = Request(method="PUT", target="/archives/x.tar.zst", headers=(("Host", "h"), ("Content-Length", "5000")))
    counter.record("s3", get, b"", 200, b"x" * 8192, 50)
    counter.record("s3", put, b"y" * 5000, 200, b"", 80)
    counts = counter.snapshot()
    assert counts["s3 GetObject"]["requests"] == 1
    assert counts["minio PutObject"]["request_bytes"] == 5080


def _report() -> CostReport:
    prices = Prices.load()
    project = {"dynamodb TransactWriteItems": {"requests": 1, "wru": 200.0, "rru": 0.0, "request_bytes": 0},
               "dynamodb BatchGetItem": {"requests": 1, "rru": 100.0, "wru": 0.0, "request_bytes": 0},
               "s3 GetObject": {"requests": 100, "wru": 0, "rru": 0, "request_bytes": 0},
               "minio PutObject": {"requests": 1, "wru": 0, "rru": 0, "request_bytes": 200_000}}
    seed = {"dynamodb PutItem": {"requests": 100, "wru": 100.0, "rru": 0.0, "request_bytes": 0},
            "s3 GetObject": {"requests": 100, "wru": 0, "rru": 0, "request_bytes": 0},
            "minio PutObject": {"requests": 1, "wru": 0, "rru": 0, "request_bytes": 180_000},
            "minio CopyObject": {"requests": 1, "wru": 0, "rru": 0, "request_bytes": 500}}
    report = CostReport(objects=100, memory_mb=1024, prices=prices,
                        sqs={"SendMessage": 100, "ReceiveMessage": 10, "DeleteMessageBatch": 10})
    report.cold = Invocation(calls={"secretsmanager GetSecretValue": {"requests": 1}}, duration_s=1, cpu_s=0.5)
    report.runs = {
        "project": {"new": Invocation(calls=project, duration_s=2.0, cpu_s=0.05, log_bytes=4000),
                    "duplicate": Invocation(calls={}, duration_s=0.1, cpu_s=0.01)},
        "seed": {"new": Invocation(calls=seed, duration_s=2.0, cpu_s=0.4),
                 "duplicate": Invocation(calls={}, duration_s=0.1, cpu_s=0.01)},
    }
    return report


def test_report_sums_each_line_per_object() -> None:
    report = _report()
    project = report.usage("project", "new")
    assert (project.wru, project.rru, project.s3_get, project.egress_bytes) == (200, 100, 100, 200_000)
    assert project.sqs_requests == 120
    assert project.secrets_calls == 1  # one per invocation, from the cold invocation's count
    assert project.lambda_billed_ms == 50  # CPU time, not the 2 s of wall time
    assert project.lambda_wall_ms == 2000
    seed = report.usage("seed", "new")
    assert seed.egress_bytes == 180_500
    lines = project.line_items(report.prices)
    assert math.isclose(lines["DynamoDB writes (WRU)"][1], 2 * 0.625)
    assert math.isclose(lines[LAMBDA_DURATION][0], 0.05 / 100)  # GB-s per object at 1,024 MB
    assert report.units("project", "new") == (2.0, 1.0)
    assert math.isclose(report.ratio, report.usd_per_million("project") / report.usd_per_million("seed"))
    assert report.ratio > 1


def test_report_markdown_and_json_agree() -> None:
    report = _report()
    document = report.to_json()
    assert document["ratio"] == round(report.ratio, 4)
    text = report.markdown()
    assert f"**{document['designs']['project']['new']['usd_per_million']:.4f}**" in text
    assert "| duplicate |" in text
