"""Load through the local stack: many small objects, several runners, repeated redeliveries.

The local stack (``local`` package: moto with S3 -> SQS notifications, DynamoDB, Secrets
Manager; SeaweedFS as MinIO) comes up on free ports; Lambda's SQS event source mapping is
emulated by ``local.runner`` with several concurrent pollers, each running the real
``handler.handler`` in its own warm sandbox. While the objects are uploaded (S3 notifies
the queue itself), duplicates are added the ways SQS and S3 make them:

* at once: for some objects a second, identical notification is sent right after the
  upload, so two pollers may hold the same object at the same moment;
* later, repeatedly: notifications the function already acknowledged are sent again,
  each of them twice.

When the queue has stayed empty, every archive in the bucket is read in memory (never
extracted) and the members are counted from the manifests across all archives: every
uploaded object exactly once, with its bytes; nothing else; every archive whole with its
checksum metadata. The queue and the DLQ are empty and every line the function wrote is
JSON. The visibility timeout is kept short here (a busy message comes back sooner); the
invocations are far shorter than it.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest

from local import stack
from local.runner import EventSourceRunner, InvocationRecord, MappingConfig, StopPolicy
from local.sandbox import FunctionConfig
from tests.support import archives
from tests.support.report import terminal
from tests.support.s3events import Uploaded, upload

pytestmark = [pytest.mark.servers]


@dataclass(frozen=True)
class Load:
    objects: int
    concurrency: int = 4
    batch_size: int = 100
    batching_window_s: float = 3.0  # moto's SQS answers slowly: a short window means small batches
    immediate_duplicates: int = 0
    resends: int = 0  # acknowledged notifications sent again, each ``resend_times`` times
    resend_times: int = 2
    function_timeout_s: int = 20
    visibility_timeout_s: int = 20
    upload_threads: int = 8
    max_s: float = 600.0
    overlap: bool = True  # the runners start before the uploads (False: after, a full queue)
    # Uploads wait while more messages than this are visible: moto's SQS slows down with
    # every message a queue holds (49 sends/s at 2,000 deep, 17/s at 4,000, measured here).
    max_queue_depth: int | None = None


@dataclass
class Resender:
    """Collects acknowledged bodies (poller threads) and sends them again."""

    wanted: int
    bodies: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    enough: threading.Event = field(default_factory=threading.Event)

    def on_invocation(self, record: InvocationRecord) -> None:
        acked = set(record.acked)
        with self.lock:
            for message in record.messages:
                if (message.message_id in acked and message.receive_count == 1 and "Records" in message.body
                        and len(self.bodies) < self.wanted):
                    self.bodies.append(message.body)
            if len(self.bodies) >= self.wanted:
                self.enough.set()


def moto_style_notification(bucket: str, obj: Uploaded) -> str:
    """The body our moto's S3 sends for this upload, less its sequencer (the versionId, which
    local/moto_server.py adds as S3 does, names the version): a true duplicate."""
    version = {"versionId": obj.version_id} if obj.version_id else {}
    return json.dumps({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "eu-west-2", "eventName": "ObjectCreated:Put",
        # Now: an event older than the claim TTL would be refused as stale, not deduplicated.
        "eventTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "aggregator-ingest",
               "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": quote_plus(obj.key), "size": len(obj.body), "eTag": obj.etag, **version}}}]})


def run_load(load: Load, tmp_path: Path, say: Callable[[str], None] = print) -> None:
    started = time.monotonic()
    state_dir = tmp_path / "stack"
    state = stack.up(stack.StackConfig(function_timeout_s=load.function_timeout_s,
                                       visibility_timeout_s=load.visibility_timeout_s), state_dir=state_dir)
    try:
        _run(load, state, tmp_path, started, say)
    finally:
        stack.down(state_dir=state_dir)


def _run(load: Load, state: stack.StackState, tmp_path: Path, started: float, say: Callable[[str], None]) -> None:
    resources = state.resources
    bucket = resources["landing_bucket"]
    sqs = state.aws_client("sqs", max_pool=load.concurrency + 8)
    s3 = state.aws_client("s3", max_pool=load.upload_threads + 4)
    fn = state.function
    mapping = MappingConfig(queue_url=resources["queue_url"], queue_arn=resources["queue_arn"], region=state.region,
                            batch_size=load.batch_size, batching_window_s=load.batching_window_s,
                            poll_wait_s=1)
    function = FunctionConfig(handler=fn["handler"], name=fn["name"], timeout_s=load.function_timeout_s,
                              memory_mb=fn["memory_mb"], region=state.region, env=state.env)
    resender = Resender(wanted=load.resends)
    runner = EventSourceRunner(sqs, mapping, function, concurrency=load.concurrency,
                               stop=StopPolicy(idle_s=4, max_s=load.max_s), log_path=tmp_path / "function.log",
                               on_invocation=resender.on_invocation)
    rng = random.Random(load.objects)
    immediate = set(rng.sample(range(load.objects), load.immediate_duplicates))
    duplicates_sent = 0
    with runner:
        if load.overlap:
            runner.start(armed=False)

        def put(i: int) -> Uploaded:
            body = rng.randbytes(200 + (i * 7919) % 1800)
            obj = upload(s3, bucket, f"load/{i % 97:02d}/object {i:06d}.json", body)
            if i in immediate:
                sqs.send_message(QueueUrl=resources["queue_url"], MessageBody=moto_style_notification(bucket, obj))
            return obj

        uploaded_at = time.monotonic()
        uploaded = []
        with ThreadPoolExecutor(max_workers=load.upload_threads) as pool:
            for start in range(0, load.objects, 200):
                while load.max_queue_depth and _visible(sqs, resources["queue_url"]) > load.max_queue_depth:
                    time.sleep(0.5)
                uploaded += pool.map(put, range(start, min(start + 200, load.objects)))
        duplicates_sent += len(immediate)
        uploads_done = time.monotonic()
        if not load.overlap:
            runner.start(armed=False)
        if load.resends:
            resender.enough.wait(timeout=load.max_s / 2)
            with resender.lock:
                bodies = list(resender.bodies)
            for _ in range(load.resend_times):
                for body in bodies:
                    sqs.send_message(QueueUrl=resources["queue_url"], MessageBody=body)
                    duplicates_sent += 1
        runner.arm()
        summary = runner.wait()
    ingest = time.monotonic() - uploads_done

    scanned = archives.scan(state.minio_client(), resources["archive_bucket"], state.env.get("ARCHIVE_PREFIX",
                                                                                           "archives"))
    per_key: Counter[tuple[str, str]] = Counter()
    digests: dict[tuple[str, str], set[str]] = {}
    for archive in scanned.archives:
        for (_, data), entry in zip(archive.members, archive.manifest["objects"], strict=True):
            per_key[(entry["bucket"], entry["key"])] += 1
            digests.setdefault((entry["bucket"], entry["key"]), set()).add(hashlib.sha256(data).hexdigest())
    expected = {(o.bucket, o.key): o for o in uploaded}
    lost = [k for k in expected if per_key.get(k, 0) == 0]
    twice = {k: n for k, n in per_key.items() if n > 1}
    unexpected = [k for k in per_key if k not in expected]
    wrong_bytes = [k for k, o in expected.items() if k in digests and digests[k] != {o.sha256}]
    depth = {label: _depth(sqs, resources[url]) for label, url in (("queue", "queue_url"), ("dlq", "dlq_url"))}
    say(f"load: {load.objects} objects, {duplicates_sent} duplicate notifications, {load.concurrency} runners: "
          f"{len(summary.records)} invocations ({dict(summary.outcomes)}), {len(scanned.archives)} archives, "
          f"{summary.messages_acked} messages acknowledged, {summary.messages_failed} failed and redelivered; "
          f"DuplicatesSkipped {summary.metrics.get('DuplicatesSkipped', 0):.0f}; "
          f"uploads {uploads_done - uploaded_at:.1f} s, "
          f"ingest {ingest:.1f} s after the last upload, {time.monotonic() - started:.1f} s in all; "
          f"stop: {summary.stop_reason}")
    assert summary.errors == []
    assert scanned.problems == []
    assert (lost, twice, unexpected, wrong_bytes) == ([], {}, [], [])
    assert sum(per_key.values()) == load.objects
    assert depth == {"queue": 0, "dlq": 0}
    assert summary.non_json_lines == 0, summary.non_json_examples
    assert summary.metrics.get("ObjectsArchived", 0) == load.objects


def _visible(sqs: Any, url: str) -> int:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    return int(attributes["Attributes"]["ApproximateNumberOfMessages"])


def _depth(sqs: Any, url: str) -> int:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed"])["Attributes"]
    return sum(int(v) for v in attributes.values())


@pytest.mark.timeout(300)
def test_load_500_objects_with_duplicates(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    run_load(Load(objects=500, concurrency=3, immediate_duplicates=10, resends=25, function_timeout_s=30,
                  visibility_timeout_s=15), tmp_path, terminal(request))


@pytest.mark.slow
@pytest.mark.timeout(6000)
def test_load_20000_objects_with_duplicates(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # moto serves S3, SQS and DynamoDB from one process: its queues slow down with depth and
    # its TransactWriteItems copies the whole table, so the uploads keep the queue shallow and
    # the batches are large (fewer claim transactions).
    run_load(Load(objects=20_000, concurrency=4, batch_size=500, batching_window_s=5, immediate_duplicates=300,
                  resends=300, resend_times=3, function_timeout_s=180, visibility_timeout_s=240,
                  max_queue_depth=1500, max_s=5400), tmp_path, terminal(request))
