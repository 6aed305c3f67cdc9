"""The archive engine (fetch + tar + compress + hash + spool + publish, no claims) against
the seed's design, on the same objects, in the same session.

Run:  .venv/bin/python -m pytest benchmarks/test_engine.py     (BENCH_QUICK=1 for 500 objects)

* ``test_seed_reference``: :mod:`benchmarks.reference_seed` (boto3 thread pool, tarfile +
  gzip, put_object then copy_object), and the same design with zstd to separate the
  design's cost from gzip's;
* ``test_engine_codec``: the engine per codec and level, SeaweedFS to SeaweedFS;
* ``test_engine_fetch_scaling``: ``MAX_FETCH_WORKERS`` 4/16/64 and ``FETCH_PROCESSES`` 1/2;
* ``test_cheap_source``: the source is the cheap in-memory server, so the client is the
  bottleneck: the fetch alone and the whole engine, ``FETCH_PROCESSES`` 1 and 2.

Every archive produced is read back from the server and compared member by member.
"""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import harness
from benchmarks.cheap_s3 import CheapS3
from benchmarks.conftest import Corpus
from benchmarks.reference_seed import archive_like_the_seed

ROUNDS = 3 if harness.QUICK else 5
WARMUP = 0 if harness.QUICK else 1


def _check(s3: harness.S3Server, samples: list[harness.Sample], small: Corpus, *, codec: str,
           manifest: bool = True) -> None:
    members = harness.verify_archive(s3.client(), harness.TARGET_BUCKET, samples[-1].outcome.key, codec=codec,
                                     expected=small.bodies, manifest=manifest)
    assert members == len(small.refs)


@pytest.mark.benchmark(group="seed-reference")
@pytest.mark.parametrize(("codec", "level"), [("gzip", 6), ("zstd", 3)], ids=["gzip-6", "zstd-3"])
def test_seed_reference(benchmark: Any, s3: harness.S3Server, small: Corpus, codec: str, level: int) -> None:
    client = s3.client(max_pool=16)

    def run() -> Any:
        return archive_like_the_seed(client, small.refs, bucket=harness.TARGET_BUCKET,
                                     key=f"seed/{harness.unique_prefix(codec)}.tar", workers=16, codec=codec,
                                     level=level)

    samples = harness.bench(benchmark, run, rounds=ROUNDS, warmup=WARMUP)
    _check(s3, samples, small, codec=codec, manifest=False)


def _engine(benchmark: Any, s3: harness.S3Server, small: Corpus, config: harness.EngineConfig) -> None:
    source = s3.source_config(max_pool=config.workers + 4)
    minio = s3.minio_client()
    benchmark.extra_info["config"] = config.label

    def run() -> Any:
        return harness.run_engine(small.refs, source=source, minio=minio, bucket=harness.TARGET_BUCKET, config=config)

    samples = harness.bench(benchmark, run, rounds=ROUNDS, warmup=WARMUP)
    _check(s3, samples, small, codec=config.codec)


@pytest.mark.benchmark(group="engine-codec")
@pytest.mark.parametrize(("codec", "level"), [("zstd", 1), ("zstd", 3), ("gzip", 6), ("none", None)],
                         ids=["zstd-1", "zstd-3", "gzip-6", "none"])
def test_engine_codec(benchmark: Any, s3: harness.S3Server, small: Corpus, codec: str, level: int | None) -> None:
    _engine(benchmark, s3, small, harness.EngineConfig(codec=codec, level=level))


@pytest.mark.benchmark(group="engine-fetch-scaling")
@pytest.mark.parametrize(("workers", "processes"), [(4, 1), (16, 1), (64, 1), (16, 2), (64, 2)],
                         ids=["w4-p1", "w16-p1", "w64-p1", "w16-p2", "w64-p2"])
def test_engine_fetch_scaling(benchmark: Any, s3: harness.S3Server, small: Corpus, workers: int,
                              processes: int) -> None:
    _engine(benchmark, s3, small, harness.EngineConfig(workers=workers, processes=processes))


@pytest.mark.skipif(harness.QUICK, reason="full mode only: test_fetch.py and the gate cover the cheap server in CI")
@pytest.mark.benchmark(group="cheap-source")
@pytest.mark.parametrize("what", ["fetch", "engine"])
@pytest.mark.parametrize("processes", [1, 2], ids=["p1", "p2"])
def test_cheap_source(benchmark: Any, s3: harness.S3Server, cheap: CheapS3, store: dict[str, Any], what: str,
                      processes: int) -> None:
    """The client as the bottleneck: a source that costs the server ~15 us per GET."""
    source = cheap.server.source_config()
    config = harness.EngineConfig(workers=16, processes=processes)
    benchmark.extra_info["config"] = f"{what} {config.label}"
    minio = s3.minio_client()

    def run() -> Any:
        if what == "fetch":
            return harness.run_fetch_only(cheap.refs, source=source, workers=config.workers, processes=processes)
        return harness.run_engine(cheap.refs, source=source, minio=minio, bucket=harness.TARGET_BUCKET,
                                  config=config)

    samples = harness.bench(benchmark, run, rounds=ROUNDS, warmup=WARMUP)
    assert all(s.objects == len(cheap.refs) for s in samples)
    if what == "engine":
        members = harness.verify_archive(s3.client(), harness.TARGET_BUCKET, samples[-1].outcome.key,
                                         codec=config.codec)
        assert members == len(cheap.refs)
