"""Micro benchmark: 2,000 x 8 KiB objects through ArchiveWriter (tar + codec + hashes).

Run:  .venv/bin/python -m pytest benchmarks/test_archive_writer.py --benchmark-only

The objects are JSON-like log lines with random values (about 3-5x compressible), built
once. Each round writes a whole archive, MANIFEST.json and trailer included, into a
BytesIO. ``extra_info`` records objects/s and MB/s (input bytes, best round's wall time)
and CPU ms per object (``time.process_time`` of the best round, all threads: with
zstd threads the workers' CPU counts too). After timing, the archive is read back and
every member compared.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
import time
from datetime import UTC, datetime

import pytest
import zstandard

from aggregator.archive import ArchiveWriter
from aggregator.base.events import ObjectRef
from aggregator.base.objects import Fetched, ObjectHead

COUNT = 2000
SIZE = 8 * 1024
CREATED_AT = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)


def _body(rng: random.Random) -> bytes:
    levels = ("INFO", "INFO", "INFO", "WARN", "ERROR", "DEBUG")
    words = ("request", "served", "user", "cache", "miss", "hit", "upstream", "timeout", "retry", "order",
             "payment", "accepted", "rejected", "session", "token", "refreshed", "queue", "depth")
    lines = []
    size = 0
    while size < SIZE:
        line = json.dumps({
            "ts": 1_740_000_000 + rng.randrange(10**6),
            "level": rng.choice(levels),
            "msg": " ".join(rng.choices(words, k=rng.randint(3, 9))),
            "request_id": rng.randbytes(8).hex(),
            "latency_ms": round(rng.expovariate(1 / 40), 2),
            "bytes": rng.randrange(100, 10**6),
        }).encode() + b"\n"
        lines.append(line)
        size += len(line)
    return b"".join(lines)[:SIZE]


@pytest.fixture(scope="module")
def objects() -> list[Fetched]:
    rng = random.Random(2025)
    items = []
    for i in range(COUNT):
        body = _body(rng)
        etag = hashlib.md5(body).hexdigest()
        ref = ObjectRef(bucket="source-bucket", key=f"logs/2025/03/04/05/host-{i % 16:02d}/{i:06d}.jsonl",
                        size=SIZE, etag=etag, version_id=None, sequencer=f"{i:016X}")
        head = ObjectHead(SIZE, datetime(2025, 3, 4, 5, i % 60, i % 60, tzinfo=UTC), etag, None)
        items.append(Fetched(ref=ref, head=head, body=body))
    return items


@pytest.mark.parametrize(("codec", "level", "threads"), [
    ("zstd", 1, 0),
    ("zstd", 3, 0),
    ("gzip", 6, 0),
    ("none", None, 0),
    ("zstd", 3, 2),
], ids=["zstd-1", "zstd-3", "gzip-6", "none", "zstd-3-threads2"])
def test_archive_writer(benchmark: pytest.FixtureRequest, objects: list[Fetched], codec: str, level: int | None,
                        threads: int) -> None:
    cpu: list[float] = []
    results: list[tuple[io.BytesIO, object]] = []

    def write_archive() -> None:
        sink = io.BytesIO()
        start = time.process_time()
        with ArchiveWriter(sink, codec=codec, level=level, threads=threads, archive_id="bench",
                           created_at=CREATED_AT) as writer:
            for item in objects:
                writer.add(item)
            summary = writer.finish()
        cpu.append(time.process_time() - start)
        results[:] = [(sink, summary)]

    benchmark.pedantic(write_archive, rounds=7, iterations=1, warmup_rounds=1)  # type: ignore[attr-defined]

    sink, summary = results[0]
    data = sink.getvalue()
    input_bytes = COUNT * SIZE
    stats = benchmark.stats  # type: ignore[attr-defined]
    if stats is not None:  # None under --benchmark-disable
        best_wall = stats.stats.min
        benchmark.extra_info.update({  # type: ignore[attr-defined]
            "objects_per_s": round(COUNT / best_wall),
            "MB_per_s": round(input_bytes / best_wall / 1e6, 1),
            "cpu_ms_per_object": round(min(cpu[1:] or cpu) / COUNT * 1e3, 4),
            "archive_bytes": len(data),
            "ratio": round(input_bytes / len(data), 2),
        })

    # The benchmark's archive must be right too: read back every member.
    assert hashlib.sha256(data).hexdigest() == summary.sha256_hex  # type: ignore[attr-defined]
    if codec == "zstd":
        raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    else:
        raw = gzip.decompress(data) if codec == "gzip" else data
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as archive:
        infos = archive.getmembers()
        assert len(infos) == COUNT + 1 and infos[-1].name == "MANIFEST.json"
        for info, item in zip(infos, objects, strict=False):
            extracted = archive.extractfile(info)
            assert extracted is not None and extracted.read() == item.body
