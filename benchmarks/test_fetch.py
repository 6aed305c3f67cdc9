"""Fetch layer: 2,000 GETs of 8 KiB, objects/s and client CPU per object.

Run:  .venv/bin/pytest benchmarks/test_fetch.py --benchmark-only -q \\
          --benchmark-columns=median,rounds --benchmark-json=/tmp/fetch.json
      (the figures are in each benchmark's extra_info; the table prints them too)

Client CPU is this process's ``time.process_time()`` plus the CPU of the fetch's child
processes (``RUSAGE_CHILDREN``, counted when the fetch reaps them on exit; the servers are
children too but are reaped only at the end of the session). The servers run on the same
two cores, so objects/s is bounded by them; CPU per object is the client's own figure.
SeaweedFS keeps connections alive; moto closes each one (``Connection: close``), so a GET
from moto also pays a TCP connect.

The CPU-bound setup is the cheap in-memory GET server (``benchmarks.cheap_s3``): the client
is the bottleneck there, so ``throughput_ratio_p2_over_p1`` says what a second process
buys, once with a bare consumer and once with a consumer that hashes and compresses
(SHA-256 + zstd level 3 per object, as the archive writer does).
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import resource
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config

from aggregator.base.events import ObjectRef
from aggregator.base.objects import Fetched
from aggregator.fetch import SourceConfig, fetch_objects
from benchmarks import harness
from tests.support.servers import MotoServer, SeaweedS3

# BENCH_QUICK=1 (make bench-quick): fewer objects and only the 16-worker variants.
QUICK = os.environ.get("BENCH_QUICK", "").strip().lower() not in ("", "0", "false", "no")
COUNT = 500 if QUICK else 2000
SIZE = 8 * 1024
ROUNDS = 3
WORKERS = [16] if QUICK else [4, 16, 64]
REGION = "us-east-1"
RATIOS: dict[str, dict[int, float]] = {}


class Corpus:
    def __init__(self, name: str, source: SourceConfig, refs: list[ObjectRef], client: Any) -> None:
        self.name = name
        self.source = source
        self.refs = refs
        self.client = client


def _client(url: str, access_key: str, secret_key: str) -> Any:
    return boto3.client("s3", endpoint_url=url, region_name=REGION, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, aws_session_token=None,
                        config=Config(max_pool_connections=32, s3={"addressing_style": "path"}))


def _seed(name: str, url: str, access_key: str, secret_key: str) -> Corpus:
    client = _client(url, access_key, secret_key)
    bucket = f"fetch-bench-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)

    def put(i: int) -> ObjectRef:
        key = f"logs/{i:06d}.jsonl"
        etag = client.put_object(Bucket=bucket, Key=key, Body=os.urandom(SIZE))["ETag"].strip('"')
        return ObjectRef(bucket, key, SIZE, etag, None, f"{i:016X}")

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        refs = list(pool.map(put, range(COUNT)))
    return Corpus(name, SourceConfig(url, REGION, access_key, secret_key, None), refs, client)


@pytest.fixture(scope="module")
def corpora() -> Iterator[dict[str, Corpus]]:
    with SeaweedS3(access_key="fetch-bench-key", secret_key="fetch-bench-secret-0123456789") as seaweed, \
            MotoServer() as moto:
        yield {
            "seaweedfs": _seed("seaweedfs", seaweed.endpoint_url, seaweed.access_key, seaweed.secret_key),
            "moto": _seed("moto", moto.endpoint_url, "testing", "testing"),
        }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _measure(benchmark: Any, run: Callable[[], int]) -> dict[str, float]:
    """Run ``run`` ROUNDS times under pytest-benchmark; the medians of each figure."""
    samples: list[tuple[float, float, float, int]] = []

    def once() -> None:
        children, parent, wall = _children_cpu(), time.process_time(), time.perf_counter()
        count = run()
        samples.append((time.perf_counter() - wall, time.process_time() - parent, _children_cpu() - children, count))

    benchmark.pedantic(once, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    samples = samples[1:]  # the warm-up round
    count = samples[0][3]
    figures = {
        "objects_per_s": statistics.median(count / wall for wall, _, _, _ in samples),
        "cpu_ms_per_object": statistics.median(1000 * (p + c) / count for _, p, c, _ in samples),
        "parent_cpu_ms_per_object": statistics.median(1000 * p / count for _, p, _, _ in samples),
        "children_cpu_ms_per_object": statistics.median(1000 * c / count for _, _, c, _ in samples),
    }
    benchmark.extra_info.update({k: round(v, 4) for k, v in figures.items()})
    return figures


def _fetch_all(corpus: Corpus, *, workers: int, processes: int) -> int:
    count = 0
    with fetch_objects(corpus.refs, source=corpus.source, workers=workers, processes=processes,
                       queue_depth=64) as results:
        for result in results:
            assert isinstance(result, Fetched) and len(result.body) == SIZE, result
            count += 1
    assert count == COUNT
    return count


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("server", ["seaweedfs", "moto"])
def test_fetch_small_objects(benchmark: Any, corpora: dict[str, Corpus], server: str, workers: int,
                             processes: int) -> None:
    corpus = corpora[server]
    benchmark.group = f"fetch {COUNT:,} x 8 KiB from {server}"
    benchmark.extra_info.update(server=server, workers=workers, processes=processes, objects=COUNT)
    figures = _measure(benchmark, lambda: _fetch_all(corpus, workers=workers, processes=processes))
    RATIOS.setdefault(f"{server}/w{workers}", {})[processes] = figures["objects_per_s"]
    if len(RATIOS[f"{server}/w{workers}"]) == 2:
        pair = RATIOS[f"{server}/w{workers}"]
        benchmark.extra_info["throughput_ratio_p2_over_p1"] = round(pair[2] / pair[1], 3)


CHEAP_COUNT = 2000 if QUICK else 6000


@pytest.fixture(scope="module")
def cheap() -> Iterator[Any]:
    cheap_s3 = pytest.importorskip("benchmarks.cheap_s3")
    with cheap_s3.CheapS3(count=CHEAP_COUNT) as server:
        yield server


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("consumer", ["bare", "sha256+zstd3"])
def test_fetch_cpu_bound(benchmark: Any, cheap: Any, consumer: str, processes: int) -> None:
    import hashlib

    import zstandard

    source = SourceConfig(cheap.server.endpoint_url, REGION, "k", "s", None)
    benchmark.group = f"fetch {CHEAP_COUNT:,} x 8 KiB from the cheap server, consumer {consumer}"
    benchmark.extra_info.update(server="cheap", workers=16, processes=processes, objects=CHEAP_COUNT,
                                consumer=consumer)

    def run() -> int:
        compressor = zstandard.ZstdCompressor(level=3).compressobj()
        count = 0
        with fetch_objects(cheap.refs, source=source, workers=16, processes=processes, queue_depth=64) as results:
            for result in results:
                assert isinstance(result, Fetched) and len(result.body) == SIZE
                if consumer != "bare":
                    hashlib.sha256(result.body).digest()
                    compressor.compress(result.body)
                count += 1
        compressor.flush()
        assert count == CHEAP_COUNT
        return count

    figures = _measure(benchmark, run)
    key = f"cheap/{consumer}"
    RATIOS.setdefault(key, {})[processes] = figures["objects_per_s"]
    if len(RATIOS[key]) == 2:
        benchmark.extra_info["throughput_ratio_p2_over_p1"] = round(RATIOS[key][2] / RATIOS[key][1], 3)


def test_boto3_get_object_baseline(benchmark: Any, corpora: dict[str, Corpus]) -> None:
    """The reference: boto3 ``get_object`` with 16 threads, as a plain pipeline would."""
    corpus = corpora["seaweedfs"]
    client = _client(corpus.source.endpoint_url, corpus.source.access_key, corpus.source.secret_key)
    benchmark.group = f"fetch {COUNT:,} x 8 KiB from seaweedfs"
    benchmark.extra_info.update(server="seaweedfs", workers=16, processes=1, objects=COUNT, client="boto3")

    def run() -> int:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            sizes = list(pool.map(functools.partial(harness.plain_get, client), corpus.refs))
        assert sizes == [SIZE] * COUNT
        return COUNT

    _measure(benchmark, run)
