"""The billing rules of benchmarks/cost_model.py: rounding, multipliers, chunks, GB-s."""

from __future__ import annotations

import math

import pytest

from benchmarks.cost_model import (
    LAMBDA_DURATION,
    Prices,
    Usage,
    billed_ms,
    dynamodb_units,
    gb_seconds,
    item_size,
    number_size,
    read_units,
    s3_operation,
    s3_price_class,
    sqs_chunks,
    sqs_requests_for,
    write_units,
)


def _item(size: int) -> dict[str, dict[str, str]]:
    """An item of exactly ``size`` bytes: ``K`` (1 byte of name) + a string."""
    return {"K": {"S": "x" * (size - 1)}}


# -- DynamoDB ------------------------------------------------------------------------------

@pytest.mark.parametrize(("size", "units"), [(1, 1), (1024, 1), (1025, 2), (4000, 4), (0, 1)])
def test_writes_round_up_to_1_kb(size: int, units: float) -> None:
    assert write_units(size) == units


def test_transactional_writes_cost_twice() -> None:
    assert write_units(100, transactional=True) == 2
    assert write_units(1025, transactional=True) == 4


@pytest.mark.parametrize(("size", "strong", "eventual"), [(1, 1, 0.5), (4096, 1, 0.5), (4097, 2, 1.0),
                                                          (0, 1, 0.5)])
def test_reads_round_up_to_4_kb_and_eventual_costs_half(size: int, strong: float, eventual: float) -> None:
    assert read_units(size, consistent=True) == strong
    assert read_units(size, consistent=False) == eventual


def test_transactional_reads_cost_twice() -> None:
    assert read_units(100, consistent=True, transactional=True) == 2
    assert read_units(5000, consistent=False, transactional=True) == 4


def test_item_size_counts_names_and_values() -> None:
    assert item_size({"ObjectID": {"S": "abc"}}) == 8 + 3
    assert number_size("1296000") == 3  # 4 significant digits: 2 bytes, + 1
    assert number_size("-0.00125") == 3
    assert item_size({"A": {"BOOL": True}, "B": {"NULL": True}}) == 4
    assert item_size({"L": {"L": [{"S": "ab"}, {"S": "c"}]}}) == 1 + 3 + (1 + 2) + (1 + 1)
    assert item_size(_item(1500)) == 1500


def test_put_item_by_size_and_failed_condition_still_billed() -> None:
    request = {"TableName": "t", "Item": _item(2000)}
    assert dynamodb_units("PutItem", request, status=200, response={}).wru == 2
    failed = dynamodb_units("PutItem", {"Item": _item(100)}, status=400,
                            response={"__type": "com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException"})
    assert (failed.wru, failed.failed_conditions) == (1, 1)


@pytest.mark.parametrize("error", ["ThrottlingException", "ProvisionedThroughputExceededException",
                                   "ValidationException"])
def test_throttled_and_invalid_requests_cost_nothing(error: str) -> None:
    units = dynamodb_units("PutItem", {"Item": _item(100)}, status=400,
                           response={"__type": f"com.amazonaws.dynamodb.v20120810#{error}"})
    assert (units.wru, units.rru) == (0, 0)
    assert dynamodb_units("PutItem", {"Item": _item(100)}, status=500, response={}).wru == 0


def test_transact_write_items_twice_per_item_cancelled_or_not() -> None:
    request = {"TransactItems": [{"Put": {"Item": _item(200)}}, {"Put": {"Item": _item(1500)}},
                                 {"ConditionCheck": {"Key": _item(50)}}, {"Delete": {"Key": _item(50)}}]}
    assert dynamodb_units("TransactWriteItems", request, status=200, response={}).wru == 2 + 4 + 2 + 2
    cancelled = dynamodb_units("TransactWriteItems", request, status=400, response={
        "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
        "CancellationReasons": [{"Code": "ConditionalCheckFailed"}, {"Code": "None"}, {"Code": "None"},
                                {"Code": "ConditionalCheckFailed"}]})
    assert (cancelled.wru, cancelled.failed_conditions) == (10, 2)


def test_batch_write_rounds_each_item_and_skips_unprocessed() -> None:
    puts = [{"PutRequest": {"Item": _item(1100)}} for _ in range(25)]
    request = {"RequestItems": {"t": puts}}
    assert dynamodb_units("BatchWriteItem", request, status=200, response={}).wru == 50
    partial = dynamodb_units("BatchWriteItem", request, status=200, response={"UnprocessedItems": {"t": puts[:5]}})
    assert (partial.wru, partial.items) == (40, 20)


def test_batch_get_rounds_each_item_absent_keys_cost_the_minimum() -> None:
    keys = [{"K": {"S": str(i)}} for i in range(3)]
    found = [_item(100), _item(5000)]
    strong = dynamodb_units("BatchGetItem", {"RequestItems": {"t": {"Keys": keys, "ConsistentRead": True}}},
                            status=200, response={"Responses": {"t": found}})
    assert strong.rru == 1 + 2 + 1
    eventual = dynamodb_units("BatchGetItem", {"RequestItems": {"t": {"Keys": keys}}}, status=200,
                              response={"Responses": {"t": found}})
    assert eventual.rru == 0.5 + 1 + 0.5


def test_get_item_and_query() -> None:
    assert dynamodb_units("GetItem", {"Key": {}, "ConsistentRead": True}, status=200,
                          response={"Item": _item(9000)}).rru == 3
    # A query rounds the sum of its items, not each item.
    assert dynamodb_units("Query", {}, status=200, response={"Items": [_item(1000)] * 5}).rru == 1.0


# -- S3, SQS, Lambda ------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "query", "headers", "operation", "price"), [
    ("GET", "/b/k/x.jsonl", "", {}, "GetObject", "get"),
    ("HEAD", "/b/k", "", {}, "HeadObject", "get"),
    ("GET", "/b", "list-type=2&prefix=a", {}, "ListObjects", "put"),
    ("PUT", "/b/k", "", {}, "PutObject", "put"),
    ("PUT", "/b/k", "", {"x-amz-copy-source": "b/k"}, "CopyObject", "put"),
    ("PUT", "/b/k", "partNumber=1&uploadId=u", {}, "UploadPart", "put"),
    ("POST", "/b/k", "uploads", {}, "CreateMultipartUpload", "put"),
    ("POST", "/b/k", "uploadId=u", {}, "CompleteMultipartUpload", "put"),
    ("DELETE", "/b/k", "uploadId=u", {}, "AbortMultipartUpload", "free"),
])
def test_s3_operations_and_their_price_class(method: str, path: str, query: str, headers: dict[str, str],
                                             operation: str, price: str) -> None:
    assert s3_operation(method, path, query, headers) == operation
    assert s3_price_class(operation) == price


@pytest.mark.parametrize(("size", "chunks"), [(0, 1), (1, 1), (65536, 1), (65537, 2), (256 * 1024, 4)])
def test_sqs_bills_each_64_kb_chunk(size: int, chunks: int) -> None:
    assert sqs_chunks(size) == chunks


def test_sqs_receives_and_deletes_in_tens() -> None:
    assert sqs_requests_for([1000] * 25) == {"SendMessage": 25, "ReceiveMessage": 3, "DeleteMessageBatch": 3}
    # Ten 10 KB messages in one receive: 100 KB of payload, two chunks.
    assert sqs_requests_for([10 * 1024] * 10) == {"SendMessage": 10, "ReceiveMessage": 2, "DeleteMessageBatch": 1}


@pytest.mark.parametrize(("seconds", "ms"), [(0.0001, 1), (1.0, 1000), (1.0001, 1001), (0.0125, 13)])
def test_lambda_bills_each_started_millisecond(seconds: float, ms: int) -> None:
    assert billed_ms(seconds) == ms


def test_gb_seconds() -> None:
    assert gb_seconds(1000, 1024) == 1.0
    assert math.isclose(gb_seconds(1, 1769), 1769 / 1024 / 1000)


def test_bill_per_million_objects() -> None:
    prices = Prices.load()
    usage = Usage(objects=1000, wru=1000, rru=1000, s3_get=1000, lambda_gb_s=gb_seconds(1, 1769) * 1000,
                  log_bytes=10**9 // 1000 * 1000, egress_bytes=0)
    lines = usage.line_items(prices)
    assert math.isclose(lines["DynamoDB writes (WRU)"][1], 0.625)
    assert math.isclose(lines["DynamoDB reads (RRU)"][1], 0.125)
    assert math.isclose(lines["S3 GET/HEAD requests"][1], 0.40)
    # 1 ms at 1,769 MB per object: ~$0.023 per million objects (issue 15's arithmetic).
    assert math.isclose(lines[LAMBDA_DURATION][1], 0.0230, rel_tol=0.01)
    # A GB of logs per thousand objects: $0.50 per thousand, $500 per million.
    assert math.isclose(lines["CloudWatch Logs (bytes)"][1], 500.0)
    assert math.isclose(usage.usd_per_million(prices), sum(usd for _, usd in lines.values()))


def test_price_table_is_dated_and_sourced() -> None:
    prices = Prices.load()
    assert prices.region == "us-east-1"
    assert prices.date
    assert all(page for page in prices.pages.values())
    assert Prices.load(egress_usd_per_gb=0.09).usd["data_out_to_on_premise_gb"] == 0.09
