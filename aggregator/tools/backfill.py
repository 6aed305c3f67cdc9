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
``--rate`` caps the messages sent per second (default 10), protecting the function's
concurrency; messages go out in SendMessageBatch calls of up to 10.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
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
    """At most ``rate`` messages a second, averaged from the first send."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._rate, self._clock, self._sleep = rate, clock, sleep
        self._start: float | None = None
        self._sent = 0

    def wait_for(self, n: int) -> None:
        now = self._clock()
        if self._start is None:
            self._start = now
        due = self._start + self._sent / self._rate
        if due > now:
            self._sleep(due - now)
        self._sent += n


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
    per_call = max(1, min(SQS_BATCH, int(args.rate)))
    sent = 0
    started = time.monotonic()
    for start in range(0, len(bodies), per_call):
        chunk = bodies[start:start + per_call]
        limiter.wait_for(len(chunk))
        failed = _send(sqs, args.queue_url, chunk)
        for line, reason in failed:
            problems.add(f"s3://{line['bucket']}/{line['key']}"
                         + (f" (version {line['version_id']})" if line.get("version_id") else "")
                         + f": not sent: {reason}")
        sent += len(chunk) - len(failed)
    elapsed = time.monotonic() - started
    print(f"backfill: sent {sent} of {len(bodies)} ObjectCreated notifications to {args.queue_url} "
          f"in {elapsed:.1f} s (limit {args.rate:g}/s)", file=sys.stderr, flush=True)
    return EXIT_PROBLEM if problems.count else EXIT_OK


def _send(sqs: Any, queue_url: str, chunk: list[tuple[dict[str, Any], str]]) -> list[tuple[dict[str, Any], str]]:
    """Send one batch, retrying the entries SQS refused as retryable; the ones never sent."""
    from botocore.exceptions import BotoCoreError, ClientError

    pending = {str(i): item for i, item in enumerate(chunk)}
    given_up: list[tuple[dict[str, Any], str]] = []
    reasons: dict[str, str] = {}
    for attempt in range(_SEND_ATTEMPTS):
        if attempt:
            time.sleep(min(2.0, 0.1 * 2 ** attempt))
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
