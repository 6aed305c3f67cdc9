"""The providers' billing rules, as pure functions, and the bill they add up to.

What the counting proxy (:mod:`benchmarks.cost_proxy`) saw on the wire becomes billed
units here, and units become dollars with the dated price table ``benchmarks/prices.json``.
Nothing here opens a socket: ``tests/unit/test_cost_model.py`` checks every rule.

Rules (each from the service's pricing or developer guide):

* DynamoDB on demand: a write costs one write request unit (WRU) per started 1 KB of the
  item, a read one read request unit (RRU) per started 4 KB; an eventually consistent read
  half of that, a transactional read or write twice. Every item of a batch is rounded on
  its own; a read of an item that does not exist still costs the minimum. A conditional
  write whose condition fails costs what the write would have (at least one unit), and so
  does every item of a cancelled transaction (counted in full here: the conservative
  reading). Throttled requests and server errors cost nothing; items a batch hands back
  unprocessed cost nothing until they are sent again.
* Item size: attribute name bytes plus value bytes; a number ~1 byte per two significant
  digits plus 1; a list or map 3 bytes plus 1 per element plus its elements; booleans and
  nulls 1 byte.
* S3 (the landing bucket only; MinIO is on-premise): GET and HEAD at the GET price; PUT,
  COPY, POST and LIST at the PUT price; DELETE free.
* SQS: each 64 KB chunk of a request's payload is one request. As the event source
  mapping consumes a queue: one SendMessage per event (S3's notification), one
  ReceiveMessage per 10 messages, one DeleteMessageBatch per 10.
* Lambda: one request per invocation; duration rounded up to the next 1 ms, times the
  configured memory in GB (1 GB = 1,024 MB). The duration billed here is the function's
  own CPU time (see :mod:`benchmarks.cost` for why not the local wall time).
* CloudWatch Logs: bytes the function writes to stdout/stderr, per GB; data out to MinIO:
  request bytes (heads and bodies) sent to it, per GB. A GB is 10^9 bytes here, the
  reading of the two that gives the larger bill.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

KB = 1024
WRITE_UNIT_BYTES = 1 * KB
READ_UNIT_BYTES = 4 * KB
SQS_CHUNK_BYTES = 64 * KB
SQS_BATCH = 10
GB = 10**9
MB_PER_GB = 1024
PRICES_PATH = Path(__file__).with_name("prices.json")
LAMBDA_DURATION = "Lambda duration (GB-s, own CPU)"


# -- DynamoDB -----------------------------------------------------------------------------

def number_size(text: str) -> int:
    """Bytes of a DynamoDB number: one per two significant digits, plus one."""
    digits = text.lstrip("+-").replace(".", "")
    if "e" in digits.lower():
        digits = digits.lower().split("e", 1)[0]
    digits = digits.strip("0") or "0"
    return (len(digits) + 1) // 2 + 1


def value_size(value: Mapping[str, Any]) -> int:
    """Bytes of one attribute value in DynamoDB's JSON (``{"S": "..."}`` and so on)."""
    (kind, inner), = value.items()
    if kind == "S":
        return len(str(inner).encode())
    if kind == "N":
        return number_size(str(inner))
    if kind == "B":
        return math.ceil(len(str(inner)) * 3 / 4)  # base64 on the wire
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(str(s).encode()) for s in inner)
    if kind == "NS":
        return sum(number_size(str(n)) for n in inner)
    if kind == "BS":
        return sum(math.ceil(len(str(b)) * 3 / 4) for b in inner)
    if kind == "L":
        return 3 + sum(1 + value_size(v) for v in inner)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + value_size(v) for k, v in inner.items())
    raise ValueError(f"unknown DynamoDB type {kind!r}")


def item_size(item: Mapping[str, Mapping[str, Any]]) -> int:
    """Bytes of an item: each attribute's name plus its value."""
    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


def write_units(size: int, *, transactional: bool = False) -> float:
    units = max(1, math.ceil(size / WRITE_UNIT_BYTES))
    return float(units * (2 if transactional else 1))


def read_units(size: int, *, consistent: bool, transactional: bool = False) -> float:
    units = max(1, math.ceil(size / READ_UNIT_BYTES))
    if transactional:
        return float(units * 2)
    return float(units) if consistent else units / 2


@dataclass
class Units:
    wru: float = 0.0
    rru: float = 0.0
    items: int = 0
    failed_conditions: int = 0


_NOT_BILLED = ("ThrottlingException", "ProvisionedThroughputExceededException", "RequestLimitExceeded",
               "InternalServerError", "ServiceUnavailable", "ValidationException", "ResourceNotFoundException",
               "UnrecognizedClientException", "AccessDeniedException", "SerializationException")


def _error_type(response: Mapping[str, Any]) -> str:
    return str(response.get("__type", "")).rsplit("#", 1)[-1]


def _update_size(params: Mapping[str, Any]) -> int:
    """An UpdateItem's item as far as the request shows it: key plus the values it sets
    (billing takes the larger of the item before and after; claim items are far below 1 KB)."""
    size = item_size(params.get("Key", {}))
    names = params.get("ExpressionAttributeNames", {})
    size += sum(len(str(n).encode()) for n in names.values())
    size += sum(value_size(v) for v in params.get("ExpressionAttributeValues", {}).values())
    return size


def dynamodb_units(operation: str, request: Mapping[str, Any], *, status: int,
                   response: Mapping[str, Any]) -> Units:
    """What one DynamoDB request costs, from its JSON request and answer."""
    out = Units()
    error = _error_type(response) if status >= 400 else ""
    if status >= 500 or error in _NOT_BILLED:
        return out
    if error and error not in ("ConditionalCheckFailedException", "TransactionCanceledException"):
        return out
    if error == "ConditionalCheckFailedException":
        out.failed_conditions = 1
    if operation == "PutItem":
        out.wru, out.items = write_units(item_size(request.get("Item", {}))), 1
    elif operation == "UpdateItem":
        out.wru, out.items = write_units(_update_size(request)), 1
    elif operation == "DeleteItem":
        size = item_size(response.get("Attributes") or request.get("Key", {}))
        out.wru, out.items = write_units(size), 1
    elif operation == "GetItem":
        size = item_size(response.get("Item") or {})
        out.rru = read_units(size, consistent=bool(request.get("ConsistentRead")))
        out.items = 1
    elif operation == "BatchWriteItem":
        unprocessed = response.get("UnprocessedItems") or {}
        for table, writes in request.get("RequestItems", {}).items():
            left = len(unprocessed.get(table, []))
            billed = writes[:max(0, len(writes) - left)]  # which ones came back does not change the sum much
            for write in billed:
                if "PutRequest" in write:
                    out.wru += write_units(item_size(write["PutRequest"].get("Item", {})))
                else:
                    out.wru += write_units(item_size(write.get("DeleteRequest", {}).get("Key", {})))
                out.items += 1
    elif operation == "BatchGetItem":
        unprocessed = response.get("UnprocessedKeys") or {}
        for table, spec in request.get("RequestItems", {}).items():
            consistent = bool(spec.get("ConsistentRead"))
            found = (response.get("Responses") or {}).get(table, [])
            asked = len(spec.get("Keys", [])) - len((unprocessed.get(table) or {}).get("Keys", []))
            out.rru += sum(read_units(item_size(item), consistent=consistent) for item in found)
            out.rru += max(0, asked - len(found)) * read_units(0, consistent=consistent)  # absent: the minimum
            out.items += asked
    elif operation == "TransactWriteItems":
        for entry in request.get("TransactItems", []):
            (kind, spec), = entry.items()
            if kind == "Put":
                size = item_size(spec.get("Item", {}))
            elif kind == "Update":
                size = _update_size(spec)
            else:  # Delete, ConditionCheck
                size = item_size(spec.get("Key", {}))
            out.wru += write_units(size, transactional=True)
            out.items += 1
        if error:
            reasons = response.get("CancellationReasons") or []
            out.failed_conditions = sum(1 for r in reasons if r.get("Code") == "ConditionalCheckFailed")
    elif operation == "TransactGetItems":
        found = response.get("Responses") or []
        asked = request.get("TransactItems", [])
        for i, _ in enumerate(asked):
            item = (found[i] or {}).get("Item") if i < len(found) else None
            out.rru += read_units(item_size(item or {}), consistent=True, transactional=True)
            out.items += 1
    elif operation in ("Query", "Scan"):
        found = response.get("Items") or []
        size = sum(item_size(item) for item in found)
        out.rru = read_units(size, consistent=bool(request.get("ConsistentRead")))
        out.items = len(found)
    return out


# -- S3, SQS, Lambda ----------------------------------------------------------------------

def s3_operation(method: str, path: str, query: str, headers: Mapping[str, str]) -> str:
    """The S3 operation of a path-style request (enough to price it)."""
    names = {part.split("=", 1)[0] for part in query.split("&") if part}
    has_key = "/" in path.lstrip("/")
    if method in ("GET", "HEAD") and not has_key:
        return "ListObjects" if method == "GET" else "HeadBucket"
    if method == "GET":
        return "GetObject"
    if method == "HEAD":
        return "HeadObject"
    if method == "PUT" and "partNumber" in names:
        return "UploadPart"
    if method == "PUT" and any(k.lower() == "x-amz-copy-source" for k in headers):
        return "CopyObject"
    if method == "PUT":
        return "PutObject" if has_key else "CreateBucket"
    if method == "POST" and "uploads" in names:
        return "CreateMultipartUpload"
    if method == "POST" and "uploadId" in names:
        return "CompleteMultipartUpload"
    if method == "POST":
        return "Post"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in names else "DeleteObject"
    return method


S3_PUT_CLASS = frozenset({"ListObjects", "UploadPart", "CopyObject", "PutObject", "CreateBucket",
                          "CreateMultipartUpload", "CompleteMultipartUpload", "Post"})
S3_FREE = frozenset({"DeleteObject", "AbortMultipartUpload"})


def s3_price_class(operation: str) -> str:
    """``put`` (PUT, COPY, POST, LIST), ``get`` (GET, HEAD, all others) or ``free``."""
    if operation in S3_FREE:
        return "free"
    return "put" if operation in S3_PUT_CLASS else "get"


def sqs_chunks(payload_bytes: int) -> int:
    """Requests one SQS call is billed as: one per started 64 KB of payload."""
    return max(1, math.ceil(payload_bytes / SQS_CHUNK_BYTES))


def sqs_requests_for(bodies: Iterable[int]) -> dict[str, int]:
    """SQS requests to carry messages of these sizes through the queue as S3 and the
    event source mapping use it: one send per message, a receive and a delete per 10."""
    sizes = list(bodies)
    send = sum(sqs_chunks(size) for size in sizes)
    receive = sum(sqs_chunks(sum(sizes[i:i + SQS_BATCH])) for i in range(0, len(sizes), SQS_BATCH))
    delete = math.ceil(len(sizes) / SQS_BATCH)
    return {"SendMessage": send, "ReceiveMessage": receive, "DeleteMessageBatch": delete}


def billed_ms(duration_s: float) -> int:
    """Lambda's billed duration: rounded up to the next millisecond."""
    return max(1, math.ceil(round(duration_s * 1000, 6)))


def gb_seconds(duration_ms: int, memory_mb: int) -> float:
    return duration_ms / 1000 * memory_mb / MB_PER_GB


# -- prices and the bill ------------------------------------------------------------------

@dataclass(frozen=True)
class Prices:
    region: str
    date: str
    usd: dict[str, float]
    pages: dict[str, str]

    @classmethod
    def load(cls, path: Path = PRICES_PATH, *, egress_usd_per_gb: float | None = None) -> Prices:
        document = json.loads(path.read_text())
        usd = {name: float(Decimal(str(row["usd"]))) for name, row in document["prices"].items()}
        if egress_usd_per_gb is not None:
            usd["data_out_to_on_premise_gb"] = egress_usd_per_gb
        return cls(region=document["region"], date=document["date"], usd=usd,
                   pages={name: row["page"] for name, row in document["prices"].items()})


@dataclass
class Usage:
    """Billed quantities for ``objects`` objects (what one design used in one phase)."""

    objects: int
    wru: float = 0.0
    rru: float = 0.0
    s3_get: int = 0
    s3_put: int = 0
    sqs_requests: int = 0
    lambda_requests: int = 0
    lambda_gb_s: float = 0.0
    lambda_billed_ms: int = 0
    lambda_wall_ms: int = 0  # for information: the invocation's wall time against the local servers
    secrets_calls: int = 0
    log_bytes: int = 0
    egress_bytes: int = 0
    calls: dict[str, int] = field(default_factory=dict)  # "service operation" -> requests

    def line_items(self, prices: Prices) -> dict[str, tuple[float, float]]:
        """line -> (quantity per object, $ per million objects)."""
        per = 1 / self.objects if self.objects else 0.0
        p = prices.usd
        rows = {
            "DynamoDB writes (WRU)": (self.wru * per, self.wru * per * p["dynamodb_write_request_unit"]),
            "DynamoDB reads (RRU)": (self.rru * per, self.rru * per * p["dynamodb_read_request_unit"]),
            "S3 GET/HEAD requests": (self.s3_get * per, self.s3_get * per * p["s3_get_request"]),
            "S3 PUT/COPY/POST/LIST requests": (self.s3_put * per, self.s3_put * per * p["s3_put_request"]),
            "SQS requests (64 KB chunks)": (self.sqs_requests * per, self.sqs_requests * per * p["sqs_request"]),
            "Lambda requests": (self.lambda_requests * per, self.lambda_requests * per * p["lambda_request"]),
            LAMBDA_DURATION: (self.lambda_gb_s * per, self.lambda_gb_s * per * p["lambda_gb_second_arm64"]),
            "Secrets Manager calls": (self.secrets_calls * per,
                                      self.secrets_calls * per * p["secretsmanager_api_call"]),
            "CloudWatch Logs (bytes)": (self.log_bytes * per, self.log_bytes * per / GB
                                        * p["cloudwatch_logs_ingestion_gb"]),
            "Data out to MinIO (bytes)": (self.egress_bytes * per, self.egress_bytes * per / GB
                                          * p["data_out_to_on_premise_gb"]),
        }
        return {name: (quantity, usd * 1e6) for name, (quantity, usd) in rows.items()}

    def usd_per_million(self, prices: Prices) -> float:
        return sum(usd for _, usd in self.line_items(prices).values())

    def to_json(self, prices: Prices) -> dict[str, Any]:
        return {"objects": self.objects, "wru": self.wru, "rru": self.rru, "s3_get": self.s3_get,
                "s3_put": self.s3_put, "sqs_requests": self.sqs_requests, "lambda_requests": self.lambda_requests,
                "lambda_billed_ms": self.lambda_billed_ms,
                "lambda_wall_ms": self.lambda_wall_ms, "lambda_gb_s": round(self.lambda_gb_s, 6),
                "secrets_calls": self.secrets_calls, "log_bytes": self.log_bytes, "egress_bytes": self.egress_bytes,
                "calls": dict(sorted(self.calls.items())),
                "lines": {name: {"per_object": round(q, 6), "usd_per_million": round(usd, 6)}
                          for name, (q, usd) in self.line_items(prices).items()},
                "usd_per_million": round(self.usd_per_million(prices), 6)}
