"""``backfill --report FILE --queue-url URL [--apply] [--rate N]``: archive what was never claimed.

For each ``never_claimed`` line of a reconcile report, one S3 ``ObjectCreated:Put``
notification, shaped exactly as S3 sends it (key URL-encoded with ``+`` for space, eTag,
size, versionId when the object has one; no sequencer: a listing does not show it), is
sent to the ingest queue. The function then handles it like any other: it claims the
object first, so running backfill twice (or a backfill racing a late real notification
of a versioned object) archives nothing twice.

For an unversioned object the claim id is its eTag with the event's sequencer. A
backfilled event has none, so two backfills share one claim id, but a *real* notification
of the same upload arriving later would not: back an unversioned bucket's objects up only
when their notifications are known to be lost.

Without ``--apply`` nothing is sent: each message body is printed, one per line.
``--rate N`` (default 10) protects the function's concurrency: no one-second window, however
placed, holds more than N messages (for N below 1: one message per 1/N seconds). Each
second's share goes out in SendMessageBatch calls of up to 10, spaced evenly (N = 15: 8 and
7 messages, half a second apart), and a sliding window over what was actually sent holds
back a call that would exceed it, so a slow or retried send never leads to a catch-up burst.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import quote_plus

from aggregator.tools.common import EXIT_OK, EXIT_PROBLEM, Environment, Problems, UsageError, error_code

SQS_BATCH = 10
_SEND_ATTEMPTS = 5
CONFIGURATION_ID = "aggregator-backfill"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("backfill", help="enqueue ObjectCreated events for never-claimed objects",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", required=True, help="a reconcile report (JSON lines)")
    parser.add_argument("--queue-url", required=True, help="the function's ingest queue")
    parser.add_argument("--apply", action="store_true", help="send (default: only print what would be sent)")
    parser.add_argument("--rate", type=_rate, default=10.0, help="at most this many messages a second (default 10)")
    parser.set_defaults(run=run)


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 100_000:
        raise argparse.ArgumentTypeError("must be above 0 and at most 100000")
    return value


def read_report(path: str) -> Iterator[dict[str, Any]]:
    """The report's ``never_claimed`` lines; :class:`UsageError` naming the first bad line."""
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror or e}") from e
    with handle:
        try:
            for number, text in enumerate(handle, 1):
                if not text.strip():
                    continue
                try:
                    line = json.loads(text)
                except ValueError:
                    raise UsageError(f"{path}:{number}: not a JSON line") from None
                if not isinstance(line, dict) or not isinstance(line.get("state"), str):
                    raise UsageError(f"{path}:{number}: not a reconcile line (no 'state')")
                if line["state"] != "never_claimed":
                    continue
                if not (isinstance(line.get("bucket"), str) and line["bucket"] and isinstance(line.get("key"), str)
                        and line["key"] and (line.get("version_id") or line.get("etag"))):
                    raise UsageError(f"{path}:{number}: needs bucket, key and a version_id or etag")
                yield line
        except UnicodeDecodeError:
            raise UsageError(f"{path}: not UTF-8 text") from None


def notification(line: dict[str, Any], *, region: str, now: datetime) -> str:
    """The S3 event notification body S3 would have sent for this object version."""
    bucket, key = line["bucket"], line["key"]
    s3_object: dict[str, Any] = {"key": quote_plus(key, safe="/")}
    if isinstance(line.get("size"), int):
        s3_object["size"] = line["size"]
    if line.get("etag"):
        s3_object["eTag"] = str(line["etag"]).strip('"')
    if line.get("version_id"):
        s3_object["versionId"] = line["version_id"]
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": region,
        "eventTime": now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": CONFIGURATION_ID},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": CONFIGURATION_ID, "x-amz-id-2": CONFIGURATION_ID},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": CONFIGURATION_ID,
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": CONFIGURATION_ID},
                       "arn": f"arn:aws:s3:::{bucket}"},
            "object": s3_object,
        },
    }
    return json.dumps({"Records": [record]}, ensure_ascii=False)


class RateLimiter:
    """No ``window`` (one second, or 1/rate for a rate below 1) holds more than ``capacity``
    messages: the whole part of the rate, at least one.

    :attr:`sizes` splits each window's capacity into near-equal batches of at most
    :data:`SQS_BATCH`, which :meth:`wait_for` spaces evenly over the window; the sliding
    window over the sends is checked as well, and it alone is the guarantee.
    """

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._clock, self._sleep = clock, sleep
        self.capacity = max(1, int(rate))
        self.window = 1.0 if rate >= 1 else 1.0 / rate
        calls = -(-self.capacity // SQS_BATCH)
        quotient, remainder = divmod(self.capacity, calls)
        self.sizes = tuple(quotient + 1 if i < remainder else quotient for i in range(calls))
        self._gap = self.window / calls
        self._sent: deque[tuple[float, int]] = deque()  # (time, messages) of the last window
        self._in_window = 0
        self._next = float("-inf")

    def wait_for(self, n: int) -> None:
        """Wait until ``n`` more messages may go, and count them as sent now."""
        if not 0 < n <= self.capacity:
            raise ValueError(f"a call of {n} messages cannot fit {self.capacity} per {self.window:g} s")
        now = self._clock()
        if now < self._next:
            self._sleep(self._next - now)
            now = self._clock()
        while True:
            # Sends at or before now - window are out of every window that holds now.
            while self._sent and self._sent[0][0] <= now - self.window:
                self._in_window -= self._sent.popleft()[1]
            if self._in_window + n <= self.capacity:
                break
            # A floor on the wait: float rounding may leave `now` a hair short of the edge.
            self._sleep(max(self._sent[0][0] + self.window - now, 1e-6))
            now = self._clock()
        self._sent.append((now, n))
        self._in_window += n
        self._next = now + self._gap


def run(args: argparse.Namespace, env: Environment, *, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    lines = list(read_report(args.report))  # a bad report is refused before anything is sent
    region = env.settings.aws_region or "us-east-1"
    now = datetime.now(UTC)
    bodies = [(line, notification(line, region=region, now=now)) for line in lines]
    if not args.apply:
        for _, body in bodies:
            print(body, file=out)
        out.flush()
        print(f"backfill (dry run): {len(bodies)} never_claimed objects in {args.report} would be sent to "
              f"{args.queue_url}; nothing sent (--apply sends them, at most {args.rate:g}/s)",
              file=sys.stderr, flush=True)
        return EXIT_OK
    sqs = env.sqs()
    limiter = RateLimiter(args.rate)
    problems = Problems()
    sizes = itertools.cycle(limiter.sizes)
    sent = 0
    started = time.monotonic()
    start = 0
    while start < len(bodies):
        chunk = bodies[start:start + next(sizes)]
        start += len(chunk)
        limiter.wait_for(len(chunk))
        failed = _send(sqs, args.queue_url, chunk, limiter=limiter)
        for line, reason in failed:
            problems.add(f"s3://{line['bucket']}/{line['key']}"
                         + (f" (version {line['version_id']})" if line.get("version_id") else "")
                         + f": not sent: {reason}")
        sent += len(chunk) - len(failed)
    elapsed = time.monotonic() - started
    print(f"backfill: sent {sent} of {len(bodies)} ObjectCreated notifications to {args.queue_url} "
          f"in {elapsed:.1f} s (limit {args.rate:g}/s)", file=sys.stderr, flush=True)
    return EXIT_PROBLEM if problems.count else EXIT_OK


def _send(sqs: Any, queue_url: str, chunk: list[tuple[dict[str, Any], str]], *,
          limiter: RateLimiter) -> list[tuple[dict[str, Any], str]]:
    """Send one batch, retrying the entries SQS refused as retryable; the ones never sent.
    A retry is a send like any other: it waits for its room in the rate (the caller counted
    the first attempt)."""
    from botocore.exceptions import BotoCoreError, ClientError

    pending = {str(i): item for i, item in enumerate(chunk)}
    given_up: list[tuple[dict[str, Any], str]] = []
    reasons: dict[str, str] = {}
    for attempt in range(_SEND_ATTEMPTS):
        if attempt:
            time.sleep(min(2.0, 0.1 * 2 ** attempt))
            limiter.wait_for(len(pending))
        try:
            response = sqs.send_message_batch(QueueUrl=queue_url, Entries=[
                {"Id": entry_id, "MessageBody": body} for entry_id, (_, body) in pending.items()])
        except ClientError as e:
            code = error_code(e)
            if code in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "AccessDenied",
                        "InvalidAddress"):
                raise UsageError(f"{queue_url}: {code}") from e
            reasons = dict.fromkeys(pending, code)
            continue
        except BotoCoreError as e:
            reasons = dict.fromkeys(pending, error_code(e))
            continue
        reasons = {}
        for failure in response.get("Failed", []):
            entry_id, code = failure["Id"], str(failure.get("Code", "failed"))
            if failure.get("SenderFault"):  # the message itself is refused: retrying cannot help
                given_up.append((pending[entry_id][0], code))
            else:
                reasons[entry_id] = code
        pending = {i: pending[i] for i in reasons}
        if not pending:
            break
    return given_up + [(pending[i][0], reasons.get(i, "failed")) for i in pending]
