"""What every benchmark here shares: the corpus, the servers' clients, the engine as the
pipeline composes it, and how CPU and memory are measured.

Measurement rules (the field notes say why):

* client CPU is ``getrusage`` of this process plus its reaped children (the fetch
  processes are reaped before ``fetch_objects`` returns); the servers are separate
  process groups that are never reaped while measuring, so their CPU is never counted;
* peak RSS is ``VmHWM`` from ``/proc/self/status`` read inside the process that did the
  work, never a child's ``ru_maxrss`` (which counts the parent's pages before exec);
* figures are per object or ratios measured side by side in one run, never wall-time
  thresholds.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import random
import resource
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import quote_plus

import boto3
from botocore.config import Config

from aggregator import clients
from aggregator.archive import ArchiveWriter, open_decompressor
from aggregator.archive.spool import ArchiveSpool
from aggregator.archive.tarread import iter_entries
from aggregator.base.codecs import CODECS
from aggregator.base.deadline import Deadline
from aggregator.base.events import ObjectRef
from aggregator.base.names import archive_key, new_archive_id, object_id
from aggregator.base.objects import Fetched, Streamed
from aggregator.base.settings import Settings
from aggregator.claims.store import ClaimStore
from aggregator.delivery.publish import PublishOutcome, publish_archive
from aggregator.delivery.secret import MinioSecret
from aggregator.fetch import SourceConfig, fetch_objects, source_config_from_client
from aggregator.pipeline import archive_size_bound
from aggregator.pipeline.assemble import Recorder, Tally
from tests.support.tables import create_claims_table

if TYPE_CHECKING:
    from aggregator.pipeline import Dependencies

T = TypeVar("T")

QUICK = os.environ.get("BENCH_QUICK", "").strip().lower() not in ("", "0", "false", "no")
KiB = 1024
MiB = 1024 * KiB
SMALL_SIZE = 8 * KiB
SMALL_COUNT = 500 if QUICK else 2000
# The engine-versus-seed ratio is judged on 2,000 objects in both modes: on 500, fixed
# costs per archive (connections, the upload's round trips) blur it.
RATIO_COUNT = 2000
LARGE_SIZE = 64 * MiB
LARGE_COUNT = 8 if QUICK else 16  # 512 MiB or 1 GiB in all
# Objects on the cheap in-memory server: enough for a fetch of one or two cores to run
# for about a second, so that starting the fetch processes is not what is measured.
CHEAP_COUNT = 3000 if QUICK else 6000
REGION = "us-east-1"
ACCESS_KEY = "bench-access-key"
SECRET_KEY = "bench-secret-key-0123456789"
SOURCE_BUCKET = "bench-source"
TARGET_BUCKET = "bench-archives"
PART_BYTES = 16 * MiB  # Settings.multipart_part_bytes default
SPOOL_MAX_MEMORY = 64 * MiB  # Settings.spool_max_memory_bytes default
QUEUE_DEPTH = 64  # Settings.fetch_queue_depth default


# -- corpus ---------------------------------------------------------------------------------

_WORDS = ("request", "served", "user", "cache", "miss", "hit", "upstream", "timeout", "retry", "order",
          "payment", "accepted", "rejected", "session", "token", "refreshed", "queue", "depth")
_LEVELS = ("INFO", "INFO", "INFO", "WARN", "ERROR", "DEBUG")


def log_body(rng: random.Random, size: int) -> bytes:
    """JSON log lines with random values, cut to ``size`` bytes: 3-5x compressible, like
    the application logs this service archives."""
    lines = []
    total = 0
    while total < size:
        line = json.dumps({
            "ts": 1_740_000_000 + rng.randrange(10**6), "level": rng.choice(_LEVELS),
            "msg": " ".join(rng.choices(_WORDS, k=rng.randint(3, 9))), "request_id": rng.randbytes(8).hex(),
            "latency_ms": round(rng.expovariate(1 / 40), 2), "bytes": rng.randrange(100, 10**6),
        }).encode() + b"\n"
        lines.append(line)
        total += len(line)
    return b"".join(lines)[:size]


def small_bodies(count: int, size: int = SMALL_SIZE, *, seed: int = 2025) -> list[bytes]:
    rng = random.Random(seed)
    return [log_body(rng, size) for _ in range(count)]


def large_body_chunks(size: int, *, seed: int, chunk: int = 4 * MiB) -> Iterator[bytes]:
    """``size`` bytes, half random and half log-like per chunk (about 2x compressible),
    generated chunk by chunk so that the seeding process never holds a whole object."""
    rng = random.Random(seed)
    template = log_body(rng, chunk // 2)
    left = size
    while left:
        n = min(chunk, left)
        data = (rng.randbytes(chunk // 2) + template)[:n]
        left -= n
        yield data


# -- clients --------------------------------------------------------------------------------

@dataclass(frozen=True)
class S3Server:
    """An S3-compatible endpoint and the keys it accepts."""

    endpoint_url: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION

    def client(self, *, max_pool: int = 32) -> Any:
        """A plain boto3 client (seeding, checking, the seed reference)."""
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, aws_session_token=None,
            config=Config(max_pool_connections=max_pool, s3={"addressing_style": "path"},
                          retries={"mode": "standard", "total_max_attempts": 3},
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"))

    def minio_client(self, *, max_pool: int = 20) -> Any:
        """The production MinIO client (``aggregator.clients``), as the handler builds it."""
        return clients.minio_client(self.secret(TARGET_BUCKET), max_pool=max_pool)

    def secret(self, bucket: str) -> MinioSecret:
        return MinioSecret(endpoint_url=self.endpoint_url, access_key=self.access_key,
                           secret_key=self.secret_key, bucket=bucket, region=self.region)

    def source_config(self, *, max_pool: int = 20) -> SourceConfig:
        """The fetch's source, built the way ``lambda_app.build_dependencies`` does: from
        the production source client with the SDK's endpoint override."""
        with environment(AWS_ENDPOINT_URL_S3=self.endpoint_url, AWS_ACCESS_KEY_ID=self.access_key,
                         AWS_SECRET_ACCESS_KEY=self.secret_key, AWS_SESSION_TOKEN=None, AWS_REGION=self.region):
            client = clients.source_s3_client(clients.aws_session(), max_pool=max_pool)
            return source_config_from_client(client)


@contextmanager
def environment(**values: str | None) -> Iterator[None]:
    """Set (or, for None, unset) environment variables for the block."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def ensure_bucket(client: Any, bucket: str) -> None:
    try:
        client.head_bucket(Bucket=bucket)
    except client.exceptions.ClientError:
        client.create_bucket(Bucket=bucket)


def seed_small(client: Any, bucket: str, prefix: str, bodies: Sequence[bytes], *, workers: int = 16
               ) -> list[ObjectRef]:
    """Upload ``bodies`` as ``prefix/NNNNNN.jsonl``; the refs name them as S3 events would
    (eTag pin, no version id)."""
    ensure_bucket(client, bucket)

    def put(i: int) -> ObjectRef:
        key = f"{prefix}/host-{i % 16:02d}/{i:06d}.jsonl"
        answer = client.put_object(Bucket=bucket, Key=key, Body=bodies[i])
        return ObjectRef(bucket=bucket, key=key, size=len(bodies[i]), etag=answer["ETag"].strip('"'),
                         version_id=None, sequencer=f"{i:016X}")

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(put, range(len(bodies))))


def seed_large(client: Any, bucket: str, prefix: str, *, count: int, size: int
               ) -> list[tuple[ObjectRef, str]]:
    """``count`` objects of ``size`` bytes by multipart upload, one part in memory at a
    time; returns each ref with the SHA-256 of its bytes."""
    ensure_bucket(client, bucket)

    def put(i: int) -> tuple[ObjectRef, str]:
        key = f"{prefix}/{i:04d}.bin"
        upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        parts = []
        digest = hashlib.sha256()
        for number, chunk in enumerate(large_body_chunks(size, seed=i, chunk=16 * MiB), start=1):
            digest.update(chunk)
            etag = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=chunk)["ETag"]
            parts.append({"PartNumber": number, "ETag": etag})
        answer = client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                                  MultipartUpload={"Parts": parts})
        ref = ObjectRef(bucket=bucket, key=key, size=size, etag=answer["ETag"].strip('"'), version_id=None,
                        sequencer=f"{i:016X}")
        return ref, digest.hexdigest()

    with ThreadPoolExecutor(2) as pool:  # one generates while the other uploads
        return list(pool.map(put, range(count)))


# -- measuring ------------------------------------------------------------------------------

def cpu_seconds() -> float:
    """User + system CPU of this process and of its reaped children (the fetch processes)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def reset_peak_rss() -> int:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); return that RSS in KiB.

    Lets an in-process benchmark read the peak of its own rounds, not the session's.
    """
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
    except OSError:
        pass  # the peak then includes earlier tests: still an upper bound
    return proc_status_kib("VmRSS")


def machine() -> str:
    """The machine the figures came from, for reports."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({model or 'unknown CPU'}), {memory:.0f} GiB, Python {platform.python_version()}"


def proc_status_kib(field_name: str) -> int:
    """A ``kB`` field of /proc/self/status (VmHWM, VmRSS) for this process."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


class Outcome(Protocol):
    """What one measured run produced (an engine, seed, handler or fetch-only run)."""

    @property
    def archived(self) -> int: ...

    @property
    def input_bytes(self) -> int: ...

    @property
    def stored_bytes(self) -> int: ...


@dataclass
class Sample:
    """One measured round."""

    wall: float
    cpu: float
    objects: int
    input_bytes: int
    stored_bytes: int
    extra: dict[str, float] = field(default_factory=dict)
    outcome: Any = None

    @property
    def cpu_ms_per_object(self) -> float:
        return self.cpu / self.objects * 1e3

    @property
    def objects_per_s(self) -> float:
        return self.objects / self.wall


def measure(run: Callable[[], Outcome]) -> Sample:
    """Time one call of ``run``: wall clock and client CPU (see the module docstring)."""
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    outcome = run()
    wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    return Sample(wall=wall, cpu=cpu, objects=outcome.archived, input_bytes=outcome.input_bytes,
                  stored_bytes=outcome.stored_bytes, extra=dict(getattr(outcome, "extra", {})), outcome=outcome)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def summarize(samples: Sequence[Sample]) -> dict[str, float]:
    """extra_info figures: throughput from the best round (least disturbed by the noisy
    neighbours of a shared machine), CPU per object and extras from the median round."""
    best = min(samples, key=lambda s: s.wall)
    info: dict[str, float] = {
        "objects": best.objects,
        "rounds": len(samples),
        "objects_per_s": round(best.objects / best.wall, 1),
        "objects_per_s_median": round(median([s.objects_per_s for s in samples]), 1),
        "MB_per_s": round(best.input_bytes / best.wall / 1e6, 2),
        "cpu_ms_per_object": round(median([s.cpu_ms_per_object for s in samples]), 4),
    }
    if best.stored_bytes:  # nothing is stored by a fetch alone
        info["compression_ratio"] = round(best.input_bytes / best.stored_bytes, 3)
    for name in best.extra:
        info[name] = round(median([s.extra[name] for s in samples]), 4)
    return info


def bench(benchmark: Any, run: Callable[[], Outcome], *, rounds: int, warmup: int = 0,
          setup: Callable[[], None] | None = None) -> list[Sample]:
    """Run ``run`` under pytest-benchmark and record the figures in ``extra_info``.

    ``setup`` (untimed) runs before each round. Peak RSS is this process's high-water mark
    over the rounds (reset first); fetch child processes are not in it (test_memory.py
    measures memory properly, in a fresh process per case).
    """
    for _ in range(warmup):
        if setup:
            setup()
        run()
    samples: list[Sample] = []
    rss_before = reset_peak_rss()

    def one() -> None:
        samples.append(measure(run))

    if setup is None:
        benchmark.pedantic(one, rounds=rounds, iterations=1)
    else:
        benchmark.pedantic(one, setup=setup, rounds=rounds, iterations=1)
    peak = proc_status_kib("VmHWM")
    benchmark.extra_info.update(summarize(samples))
    benchmark.extra_info.update({"peak_rss_MiB": round(peak / 1024, 1),
                                 "rss_growth_MiB": round((peak - rss_before) / 1024, 1)})
    return samples


def interleave(runs: dict[str, Callable[[], Outcome]], *, rounds: int) -> dict[str, list[Sample]]:
    """Measure several runs in turns (A B A B ...), so that a noisy neighbour slows them
    alike: ratios are then taken per turn."""
    samples: dict[str, list[Sample]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            samples[name].append(measure(run))
    return samples


def paired_ratio(slow: Sequence[Sample], fast: Sequence[Sample]) -> float:
    """Median over turns of ``fast``'s throughput over ``slow``'s."""
    return median([s.wall / f.wall * f.objects / s.objects for s, f in zip(slow, fast, strict=True)])


def best_ratio(slow: Sequence[Sample], fast: Sequence[Sample]) -> float:
    """``fast``'s best throughput over ``slow``'s best: each side's least disturbed turn.

    Interference only ever slows a run down, so the fastest turn of each is the closest to
    what the code itself can do; a short run (the engine's) is hit harder by a burst of
    neighbour load than a long one (the seed's), which biases per-turn ratios downwards.
    """
    return max(f.objects_per_s for f in fast) / max(s.objects_per_s for s in slow)


_LOG = logging.getLogger("benchmarks.engine")


# -- the engine, composed exactly as pipeline._archive_and_publish composes it ---------------

@dataclass(frozen=True)
class EngineConfig:
    codec: str = "zstd"
    level: int | None = 3
    workers: int = 16
    processes: int = 1
    queue_depth: int = QUEUE_DEPTH
    spool_max_memory: int = SPOOL_MAX_MEMORY
    zstd_threads: int = 0
    part_bytes: int = PART_BYTES

    @property
    def label(self) -> str:
        level = "" if self.codec == "none" else f"-{self.level or CODECS[self.codec].default_level}"
        return f"{self.codec}{level} w{self.workers} p{self.processes}"


@dataclass(frozen=True)
class EngineResult:
    key: str
    archived: int
    input_bytes: int
    stored_bytes: int
    sha256_hex: str


def run_engine(refs: Sequence[ObjectRef], *, source: SourceConfig, minio: Any, bucket: str,
               config: EngineConfig, prefix: str = "bench") -> EngineResult:
    """fetch_objects -> ArchiveWriter -> ArchiveSpool -> publish_archive, without claims.

    The same calls with the same arguments as ``pipeline._archive_and_publish`` (minus the
    claim bookkeeping and the deadline checks, which cost nothing per object): any
    per-object cost the pipeline adds on top is what the handler benchmark shows.
    """
    created_at = datetime.now(UTC)
    archive_id = new_archive_id(created_at)
    key = archive_key(prefix, created_at, archive_id, {"zstd": ".tar.zst", "gzip": ".tar.gz", "none": ".tar"}
                      [config.codec])
    ids = {ref: object_id(ref) for ref in refs}
    pending = {oid: ref.size or 0 for ref, oid in ids.items()}
    archived = 0
    input_bytes = 0
    cancel = threading.Event()
    with ArchiveSpool(max_memory=config.spool_max_memory, expected_size=archive_size_bound(list(refs)),
                      still_to_write=lambda: sum(pending.values())) as spool:
        spool.ensure_room(sum(pending.values()))
        with ArchiveWriter(spool, codec=config.codec, level=config.level, threads=config.zstd_threads,
                           archive_id=archive_id, created_at=created_at) as writer:
            with fetch_objects(refs, source=source, workers=config.workers, processes=config.processes,
                               queue_depth=config.queue_depth, cancel=cancel) as results:
                tally = Tally()  # large bodies are staged as the pipeline stages them
                recorder = Recorder(writer, spool=spool, tally=tally, log=_LOG, cancel=cancel)
                try:
                    for item in results:
                        pending.pop(ids[item.ref], None)
                        recorder.record(item, oid=ids[item.ref])
                        if isinstance(item, Fetched | Streamed):
                            input_bytes += item.head.size
                    recorder.finish()
                finally:
                    recorder.close()
            if tally.missing or tally.failed:
                raise AssertionError(f"benchmark objects missing {tally.missing} or failed {tally.failed}")
            archived = len(tally.archived)
            summary = writer.finish()
        publication = publish_archive(minio, bucket=bucket, key=key, source=spool.rewind(), size=summary.size,
                                      sha256_hex=summary.sha256_hex, manifest=summary.manifest,
                                      part_bytes=config.part_bytes)
        if publication.outcome is not PublishOutcome.PUBLISHED:
            raise AssertionError(f"benchmark archive not published: {publication.outcome.value} {publication.reason}")
    return EngineResult(key=key, archived=archived, input_bytes=input_bytes, stored_bytes=summary.size,
                        sha256_hex=summary.sha256_hex)


@dataclass(frozen=True)
class FetchOnlyResult:
    archived: int
    input_bytes: int
    stored_bytes: int = 0


def run_fetch_only(refs: Sequence[ObjectRef], *, source: SourceConfig, workers: int, processes: int,
                   queue_depth: int = QUEUE_DEPTH) -> FetchOnlyResult:
    """fetch_objects alone, its results consumed and dropped: what the fetch layer can do."""
    count = 0
    size = 0
    with fetch_objects(refs, source=source, workers=workers, processes=processes, queue_depth=queue_depth) as results:
        for item in results:
            if not isinstance(item, Fetched):
                raise AssertionError(f"benchmark fetch did not return the object: {item}")
            count += 1
            size += len(item.body)
    return FetchOnlyResult(archived=count, input_bytes=size)


def plain_get(client: Any, ref: ObjectRef) -> int:
    """One plain boto3 ``get_object``, version-pinned like ours, its body read whole; its size."""
    return len(client.get_object(Bucket=ref.bucket, Key=ref.key, IfMatch=f'"{ref.etag}"')["Body"].read())


def run_plain_gets(client: Any, refs: Sequence[ObjectRef]) -> FetchOnlyResult:
    """:func:`plain_get` per object, one at a time on one thread: the yardstick issue 5 states
    its CPU targets in ("a plain boto3 GET alone costs ~1.1 ms" on the machine they were set on)."""
    return FetchOnlyResult(archived=len(refs), input_bytes=sum(plain_get(client, ref) for ref in refs))


# -- the whole handler path: run_batch with claims ---------------------------------------------

def s3_event_body(ref: ObjectRef) -> str:
    """One SQS body as S3 sends it: a notification with one ObjectCreated record."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")  # an old one would be refused as stale
    return json.dumps({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": REGION, "eventTime": now,
        "eventName": "ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": ref.bucket, "arn": f"arn:aws:s3:::{ref.bucket}"},
               "object": {"key": quote_plus(ref.key), "size": ref.size, "eTag": ref.etag,
                          "sequencer": ref.sequencer}},
    }]})


class CountingClaims:
    """The real ClaimStore, with the client CPU spent in its calls counted."""

    def __init__(self, store: ClaimStore) -> None:
        self._store = store
        self.cpu = 0.0

    @property
    def calls(self) -> int:
        return self._store.calls

    def _timed(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        start = time.process_time()
        try:
            return method(*args, **kwargs)
        finally:
            self.cpu += time.process_time() - start

    def claim(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed(self._store.claim, *args, **kwargs)

    def take_over(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed(self._store.take_over, *args, **kwargs)

    def release(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed(self._store.release, *args, **kwargs)


@dataclass(frozen=True)
class HandlerWorld:
    """moto (DynamoDB, Secrets Manager) + the S3 server, wired as the Lambda wires itself."""

    s3: S3Server
    moto_url: str
    secret_id: str

    @classmethod
    def create(cls, s3: S3Server, moto_url: str) -> HandlerWorld:
        secret_id = f"bench/minio-{uuid.uuid4().hex[:8]}"
        secrets = boto3.session.Session().client("secretsmanager", endpoint_url=moto_url, region_name=REGION,
                                                 aws_access_key_id="testing", aws_secret_access_key="testing")
        secrets.create_secret(Name=secret_id, SecretString=json.dumps({
            "endpoint_url": s3.endpoint_url, "access_key": s3.access_key, "secret_key": s3.secret_key,
            "bucket": TARGET_BUCKET, "region": s3.region}))
        return cls(s3=s3, moto_url=moto_url, secret_id=secret_id)

    def _environment(self) -> AbstractContextManager[None]:
        return environment(AWS_ENDPOINT_URL_DYNAMODB=self.moto_url, AWS_ENDPOINT_URL_SECRETS_MANAGER=self.moto_url,
                           AWS_ENDPOINT_URL_S3=self.s3.endpoint_url, AWS_ACCESS_KEY_ID=self.s3.access_key,
                           AWS_SECRET_ACCESS_KEY=self.s3.secret_key, AWS_SESSION_TOKEN=None, AWS_REGION=self.s3.region)

    def fresh_table(self) -> str:
        """A new, empty claim table (moto's transactions slow down as a table grows)."""
        name = f"bench-claims-{uuid.uuid4().hex[:8]}"
        with self._environment():
            create_claims_table(clients.dynamodb_client(clients.aws_session()), name)
        return name

    def drop_table(self, name: str) -> None:
        with self._environment():
            clients.dynamodb_client(clients.aws_session()).delete_table(TableName=name)

    def dependencies(self, *, config: EngineConfig) -> Dependencies:
        """``lambda_app.build_dependencies`` from the settings a deployment would have:
        one warm container's clients, reused by every invocation."""
        from aggregator.lambda_app import build_dependencies  # Powertools: only where needed

        env = {
            "IDEMPOTENCY_TABLE_NAME": "set-per-round", "MINIO_SECRET_ID": self.secret_id,
            "ARCHIVE_PREFIX": "bench-handler", "COMPRESSION": config.codec, "MAX_FETCH_WORKERS": str(config.workers),
            "FETCH_PROCESSES": str(config.processes), "SPOOL_MAX_MEMORY_BYTES": str(config.spool_max_memory),
            "FETCH_QUEUE_DEPTH": str(config.queue_depth), "ZSTD_THREADS": str(config.zstd_threads),
        }
        if config.level is not None:
            env["COMPRESSION_LEVEL"] = str(config.level)
        with self._environment():
            return build_dependencies(Settings.from_env(env))

    def use_table(self, deps: Dependencies, table: str) -> None:
        """Point the container's claim store at ``table``: a ClaimStore built as
        ``build_dependencies`` builds it, wrapped to count its client CPU."""
        settings = deps.settings
        with self._environment():
            client = clients.claims_client(clients.aws_session(), max_pool=settings.max_fetch_workers + 4)
        store = ClaimStore(client, table, ttl_seconds=settings.idempotency_ttl_seconds)
        deps.claims = CountingClaims(store)  # type: ignore[assignment]


@dataclass(frozen=True)
class HandlerResult:
    archived: int
    input_bytes: int
    stored_bytes: int
    key: str
    extra: dict[str, float]


def run_handler(deps: Dependencies, refs: Sequence[ObjectRef]) -> HandlerResult:
    """One invocation: an SQS batch with one S3 event per object through ``run_batch``."""
    from aggregator.pipeline import Message, new_owner, run_batch

    messages = [Message(f"m-{i}", s3_event_body(ref)) for i, ref in enumerate(refs)]
    claims: CountingClaims = deps.claims  # type: ignore[assignment]
    calls0, claims_cpu0 = claims.calls, claims.cpu
    deadline = Deadline.after(900, grace=deps.settings.lease_grace_seconds)
    outcome = run_batch(messages, deps=deps, deadline=deadline, owner=new_owner("bench"))
    if outcome.failed_message_ids or outcome.archive_key is None:
        raise AssertionError(f"handler run failed {len(outcome.failed_message_ids)} messages: {dict(outcome.counts)}")
    objects = outcome.archive_objects
    return HandlerResult(
        archived=objects, input_bytes=sum(ref.size or 0 for ref in refs), stored_bytes=outcome.archive_bytes,
        key=outcome.archive_key,
        extra={"dynamodb_calls_per_object": (claims.calls - calls0) / objects,
               "claims_cpu_ms_per_object": (claims.cpu - claims_cpu0) / objects * 1e3})


# -- checking what a benchmark produced ------------------------------------------------------

class _HashingReader(io.RawIOBase):
    """A response body as a raw stream, hashed as it is read."""

    def __init__(self, body: Any) -> None:
        self._body = body
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._body.read(len(buffer))
        self.digest.update(data)
        buffer[: len(data)] = data
        return len(data)


def verify_archive(client: Any, bucket: str, key: str, *, codec: str, expected: dict[str, bytes] | None = None,
                   expected_hashes: dict[str, str] | None = None, manifest: bool = True) -> int:
    """Read an archive back from the server, streaming: every member's bytes (or SHA-256,
    for large members) against the sources, the manifest last (``manifest=False`` for the
    seed's archives, which have none), and the stored ``sha256_checksum`` against the
    bytes. Returns the number of object members."""
    answer = client.get_object(Bucket=bucket, Key=key)
    raw = _HashingReader(answer["Body"])
    stream = io.BufferedReader(raw, buffer_size=1 << 20)
    members = 0
    listed: list[dict[str, Any]] | None = None
    for entry in iter_entries(open_decompressor(codec, stream)):
        assert listed is None, "MANIFEST.json must be the last member"
        body = entry.read()
        if manifest and entry.name == "MANIFEST.json":
            listed = json.loads(body)["objects"]
            continue
        members += 1
        if expected is not None:
            assert body == expected[entry.name], f"{entry.name}: bytes differ from the source"
        if expected_hashes is not None:
            assert hashlib.sha256(body).hexdigest() == expected_hashes[entry.name], f"{entry.name}: hash differs"
    while stream.read(1 << 20):  # the codec may end before the stored bytes do
        pass
    assert answer.get("Metadata", {}).get("sha256_checksum") == raw.digest.hexdigest(), (
        f"{key}: sha256_checksum metadata does not match the stored bytes")
    if manifest:
        assert listed is not None, "MANIFEST.json missing"
        assert len(listed) == members, "the manifest does not list every member"
        if expected_hashes is not None:
            assert {e["member"]: e["sha256"] for e in listed} == expected_hashes
    return members


def unique_prefix(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"
