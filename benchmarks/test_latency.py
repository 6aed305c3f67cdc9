"""How long an object waits from upload to archive, part by part (issue 15, section 3).

Run:  .venv/bin/python -m pytest benchmarks/test_latency.py    (BENCH_QUICK=1: 300 objects)

The whole local shape, on the benchmarks' own servers: a versioned landing bucket in moto
that notifies an SQS queue (moto with our fixes, :mod:`local.moto_server`), the claim
table and the MinIO secret in moto, SeaweedFS as MinIO; the real handler in Lambda-like
sandboxes fed by the event source runner (:mod:`local.runner`) with the trigger exactly
as serverless.yml's ``local`` stage sets it (batch size, batching window, concurrency,
timeout). 8 KiB objects are uploaded at a steady RATE, below what the pipeline archives,
so that the figures are the latency of the path and not the length of a backlog (the
demo, ``make demo``, uploads in a burst and shows the backlog's share too).

The pollers' sandboxes run their init phase before the first poll (``provisioned``) and
one warm-up invocation each, outside the queue: a cold start is a part of its own in
:mod:`local.latency`, each sandbox's first invocation is reported beside the figures, and
the gate's two targets are about the warm path: the invocation's own time (p99 <= 1.5 s for batches of up to 100 x
8 KiB) and queue -> invocation start (p99 <= batching window + 0.5 s). The figures are
percentiles over one run, every instant taken from SQS attributes and the runner's own
stamps (:mod:`local.latency` says which); ``store["latency"]`` hands them to the gate.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aggregator.base.errors import MalformedMessage
from aggregator.base.events import ObjectRef, parse_body
from benchmarks import harness
from local import latency, sqs_event, stack
from local.resources import Names, aws_client, minio_secret, provision_aws
from local.runner import EventSourceRunner, InvocationRecord, MappingConfig, RunSummary, StopPolicy
from local.sandbox import FunctionConfig
from local.serverless_config import StageConfig, load_stage
from tests.support.servers import MotoServer

OBJECTS = 300 if harness.QUICK else 2000
# Uploads per second, steady. moto takes ~100 PutObject/s here at most (each also sends the
# notification): a higher rate only falls behind its schedule and then catches up in bursts.
RATE = 100.0
UPLOAD_THREADS = 8
OWN_SHARE_P99_S = 1.5
OVER_WINDOW_P99_S = 0.5


@dataclass
class LatencyRun:
    stage: StageConfig
    rate: float  # uploads per second asked for
    summary: RunSummary
    stamps: list[latency.Stamps]
    uploaded: int
    upload_s: float
    batch_sizes: list[int]  # the measured invocations'
    first_invocations: list[float]  # each sandbox's first (warm-up) invocation, seconds
    moto_busy: float  # moto's CPU over the measured phase's wall time: 1.0 is one core, all the time
    wall_s: float  # first measured upload to last measured acknowledgement
    moto_cpu_ms: float  # moto's CPU per object: upload, notification, queue, claim, GET, ...
    function_cpu_ms: float  # the sandboxes' CPU per object (the function's own work)

    @property
    def breakdown(self) -> dict[str, latency.Spread]:
        return latency.breakdown(self.stamps)

    @property
    def window_s(self) -> float:
        return float(self.stage.batching_window_s)

    def to_json(self) -> dict[str, Any]:
        return {
            "objects": self.uploaded, "rate_per_s": self.rate, "upload_s": round(self.upload_s, 2),
            "batch_size": self.stage.batch_size, "batching_window_s": self.window_s,
            "concurrency": self.stage.max_concurrency, "batches": len(self.batch_sizes),
            "largest_batch": max(self.batch_sizes, default=0), "wall_s": round(self.wall_s, 2),
            "moto_cpu_share": round(self.moto_busy, 3), "moto_cpu_ms_per_object": round(self.moto_cpu_ms, 3),
            "function_cpu_ms_per_object": round(self.function_cpu_ms, 3),
            "first_invocation_s": [round(d, 3) for d in self.first_invocations],
            "parts": {name: row.to_json() for name, row in self.breakdown.items()},
        }

    def describe(self) -> str:
        rows = self.breakdown
        parts = "; ".join(f"{name} p50 {row.p50:.2f} / p99 {row.p99:.2f} / max {row.max:.2f} s"
                          for name, row in rows.items())
        return (f"{self.uploaded} x 8 KiB at {self.rate:g}/s (took {self.upload_s:.1f} s), batch size "
                f"{self.stage.batch_size}, window "
                f"{self.window_s:g} s, {self.stage.max_concurrency} warm pollers, {len(self.batch_sizes)} "
                f"invocations (largest {max(self.batch_sizes, default=0)}): {parts}; CPU per object: moto "
                f"{self.moto_cpu_ms:.1f} ms, the function {self.function_cpu_ms:.1f} ms; moto busy "
                f"{self.moto_busy:.0%} of a core; each sandbox's first invocation (warm-up, not counted) "
                + ", ".join(f"{d:.2f}" for d in self.first_invocations) + " s")


class _Stamper:
    """Each object's instants at its first acknowledgement (from the poller threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stamps: dict[str, latency.Stamps] = {}
        self.records: list[InvocationRecord] = []
        self.changed = threading.Condition(self.lock)

    def wait_for(self, keys: list[str], timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: all(key in self.stamps for key in keys), timeout=timeout)

    def __call__(self, record: InvocationRecord) -> None:
        acked = set(record.acked)
        with self.changed:
            self.records.append(record)
            self.changed.notify_all()
            for message in record.messages:
                if message.message_id not in acked or message.sent is None:
                    continue
                try:
                    objects = parse_body(message.body).objects
                except MalformedMessage:
                    continue
                for ref in objects:
                    if ref.key not in self.stamps and ref.event_time is not None:
                        self.stamps[ref.key] = latency.Stamps(
                            uploaded=ref.event_time.timestamp(), sent=message.sent, invoked=record.invoked,
                            handler_start=record.handler_start, end=record.ended)


def _keys(prefix: str, count: int) -> list[str]:
    return [f"{prefix}/host-{i % 16:02d}/{i:06d}.jsonl" for i in range(count)]


def _paced_upload(s3: Any, bucket: str, keys: list[str], bodies: list[bytes], *, rate: float) -> None:
    """PutObject each body at its slot (i / rate seconds from the start), never early."""
    start = time.monotonic() + 0.05

    def put(i: int) -> None:
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        s3.put_object(Bucket=bucket, Key=keys[i], Body=bodies[i])

    with ThreadPoolExecutor(max_workers=UPLOAD_THREADS) as pool:
        list(pool.map(put, range(len(bodies))))


def _warmup_events(s3: Any, bucket: str, stage: StageConfig, *, count: int, queue_arn: str, body: bytes
                   ) -> list[dict[str, Any]]:
    """One SQS event per sandbox naming an object of its own, in a bucket that notifies nobody:
    a sandbox's first invocation builds the function's clients and reads its secret, which
    the measured invocations should not pay for (each sandbox's first duration is reported)."""
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": stage.region})
    events = []
    for n in range(count):
        key = f"warmup/{n}.jsonl"
        etag = s3.put_object(Bucket=bucket, Key=key, Body=body)["ETag"].strip('"')
        ref = ObjectRef(bucket=bucket, key=key, size=len(body), etag=etag, version_id=None, sequencer=f"{n:016X}")
        message = {"MessageId": str(uuid.uuid4()), "ReceiptHandle": f"warmup-{n}", "Body": harness.s3_event_body(ref),
                   "Attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": str(int(time.time() * 1000))}}
        events.append(sqs_event.event([sqs_event.record(message, queue_arn=queue_arn, region=stage.region)]))
    return events


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(s3: harness.S3Server, moto: MotoServer, *, objects: int = OBJECTS, rate: float = RATE) -> LatencyRun:
    """Provision a fresh landing bucket, queue, table and secret; upload; run; the stamps."""
    stage = load_stage(stack.REPO_ROOT / "serverless.yml", stage="local")
    suffix = uuid.uuid4().hex[:8]
    names = Names(landing_bucket=f"latency-landing-{suffix}", queue=f"latency-{suffix}", dlq=f"latency-{suffix}-dlq",
                  table=f"latency-claims-{suffix}", secret=f"latency/{suffix}/minio",
                  archive_bucket=harness.TARGET_BUCKET)
    stage = replace(stage, landing_bucket=names.landing_bucket, queue=names.queue, dlq=names.dlq, table=names.table,
                    secret=names.secret)
    harness.ensure_bucket(s3.client(), harness.TARGET_BUCKET)
    resources = provision_aws(
        endpoint_url=moto.endpoint_url, region=stage.region, names=names,
        visibility_timeout_s=stage.visibility_timeout_s, max_receive_count=stage.max_receive_count,
        secret=minio_secret(endpoint_url=s3.endpoint_url, access_key=s3.access_key, secret_key=s3.secret_key,
                            bucket=harness.TARGET_BUCKET))
    env = stack.function_env(stage, endpoint_url=moto.endpoint_url, extra={})
    env.update(IDEMPOTENCY_TABLE_NAME=names.table, MINIO_SECRET_ID=names.secret,
               ARCHIVE_PREFIX=f"latency-{suffix}", LOG_LEVEL="INFO")
    sqs = aws_client("sqs", endpoint_url=moto.endpoint_url, region=stage.region, max_pool=stage.max_concurrency + 4)
    landing = aws_client("s3", endpoint_url=moto.endpoint_url, region=stage.region, max_pool=UPLOAD_THREADS + 2)
    mapping = MappingConfig(queue_url=resources.queue_url, queue_arn=resources.queue_arn, region=stage.region,
                            batch_size=stage.batch_size, batching_window_s=stage.batching_window_s,
                            report_batch_item_failures=stage.report_batch_item_failures, poll_wait_s=1)
    function = FunctionConfig(handler=stage.handler, name=stage.function_name, timeout_s=stage.timeout_s,
                              memory_mb=stage.memory_mb, region=stage.region, env=env, task_root=stack.REPO_ROOT)
    stamper = _Stamper()
    bodies = harness.small_bodies(objects, seed=15)
    warmups = _warmup_events(landing, f"latency-warmup-{suffix}", stage, count=stage.max_concurrency,
                             queue_arn=resources.queue_arn, body=bodies[0])
    runner = EventSourceRunner(sqs, mapping, function, concurrency=stage.max_concurrency,
                               stop=StopPolicy(idle_s=30, max_s=300), on_invocation=stamper,
                               monitor_interval_s=0.2, provisioned=True, warmup=warmups.__getitem__)
    with runner:
        runner.start(armed=False)
        assert runner.wait_warm(timeout=120), "the pollers' sandboxes did not finish their warm-up"
        first = {p.index: p.warmup for p in runner.pollers if p.warmup is not None}
        assert len(first) == stage.max_concurrency and all(w.ok for w in first.values()), first
        warm_from = len(stamper.records)
        keys = _keys("latency", objects)
        sandboxes = [pid for pid in (p.sandbox.pid for p in runner.pollers) if pid is not None]
        moto_cpu, function_cpu, clock = _cpu_s(moto.pid), sum(map(_cpu_s, sandboxes)), time.monotonic()
        _paced_upload(landing, names.landing_bucket, keys, bodies, rate=rate)
        upload_s = time.monotonic() - clock
        done = stamper.wait_for(keys, timeout=300)
        wall, moto_cpu = time.monotonic() - clock, _cpu_s(moto.pid) - moto_cpu
        function_cpu = sum(map(_cpu_s, sandboxes)) - function_cpu
        runner.stop("measured")
        summary = runner.wait()
    missing = [key for key in keys if key not in stamper.stamps]
    assert done and not missing and not summary.errors, (
        f"{len(missing)} of {len(keys)} objects never acknowledged (e.g. {missing[:3]}); runner errors "
        f"{summary.errors}; outcomes {dict(summary.outcomes)}")
    return LatencyRun(stage=stage, rate=rate, summary=summary, stamps=[stamper.stamps[key] for key in keys],
                      uploaded=objects,
                      upload_s=upload_s, batch_sizes=[len(r.messages) for r in stamper.records[warm_from:]],
                      first_invocations=[w.duration_s for w in first.values()],
                      moto_busy=moto_cpu / wall, wall_s=wall, moto_cpu_ms=moto_cpu * 1000 / objects,
                      function_cpu_ms=function_cpu * 1000 / objects)


def test_latency_from_upload_to_archive(s3: harness.S3Server, moto: MotoServer, store: dict[str, Any]) -> None:
    run = measure(s3, moto)
    store["latency"] = run
    print("\n" + "\n".join(latency.table_lines(run.breakdown)))
    assert not latency.problems(run.stamps), latency.problems(run.stamps)[:5]
    assert max(run.batch_sizes) <= run.stage.batch_size
