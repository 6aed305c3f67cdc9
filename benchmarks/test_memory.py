"""Large objects: peak RSS growth of the engine while it archives 256 MiB to 1 GiB.

Run:  .venv/bin/python -m pytest benchmarks/test_memory.py    (BENCH_QUICK=1: 256 and 512 MiB)

Each case runs the engine (default settings: 16 fetch workers, one process, zstd-3, a
64 MiB in-memory spool, 16 MiB upload parts) on N x 64 MiB objects in a *fresh*
interpreter (:mod:`benchmarks.rss_child`), which reads its own ``VmHWM`` before and after:
growth = peak during the case - resident set just before it, after a small warm-up
archive (as in a warm Lambda container). ``cold_rss_growth_MiB`` is the same peak over the
resident set before the warm-up. The archive is then read back and every member's SHA-256
compared with the source's.

Full mode also runs two diagnostic cases at 1 GiB that show where the memory goes:
``spool-16MiB`` (SPOOL_MAX_MEMORY_BYTES=16 MiB) and ``w4`` (MAX_FETCH_WORKERS=4).
"""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import harness
from benchmarks.conftest import LargeCorpus
from benchmarks.rss_child import run_in_child

# (label, objects, config overrides): the default-settings cases the gate judges.
CASES = [("256MiB", 4, {}), ("512MiB", 8, {})] if harness.QUICK else [("256MiB", 4, {}), ("1GiB", 16, {})]
DIAGNOSTIC = [] if harness.QUICK else [("1GiB-spool-16MiB", 16, {"spool_max_memory": 16 * harness.MiB}),
                                       ("1GiB-w4", 16, {"workers": 4})]


def _ref(ref: Any) -> dict[str, Any]:
    return {"bucket": ref.bucket, "key": ref.key, "size": ref.size, "etag": ref.etag, "sequencer": ref.sequencer}


def memory_case(s3: harness.S3Server, large: LargeCorpus, count: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """Run one case in a fresh interpreter and check its archive; return the child's report."""
    report = run_in_child({
        "endpoint_url": s3.endpoint_url, "access_key": s3.access_key, "secret_key": s3.secret_key,
        "bucket": harness.TARGET_BUCKET, "config": overrides,
        "warmup": [_ref(r) for r in large.warmup], "refs": [_ref(r) for r in large.refs[:count]],
    })
    expected = {f"{r.bucket}/{r.key}": large.sha256[f"{r.bucket}/{r.key}"] for r in large.refs[:count]}
    members = harness.verify_archive(s3.client(), harness.TARGET_BUCKET, report["key"],
                                     codec=overrides.get("codec", "zstd"), expected_hashes=expected)
    assert members == count == report["archived"]
    return report


def cached_case(store: dict[str, Any], s3: harness.S3Server, large: LargeCorpus, label: str, count: int,
                overrides: dict[str, Any]) -> dict[str, Any]:
    """The case's report, measured once per session (the gate reuses it)."""
    key = f"memory:{label}"
    if key not in store:
        store[key] = memory_case(s3, large, count, overrides)
    report: dict[str, Any] = store[key]
    return report


def _record(benchmark: Any, report: dict[str, Any], count: int, overrides: dict[str, Any]) -> None:
    mib = 1024.0
    benchmark.extra_info.update({
        "config": harness.EngineConfig(**overrides).label,
        "objects": count,
        "input_MiB": report["input_bytes"] / harness.MiB,
        "objects_per_s": round(count / report["wall"], 2),
        "MB_per_s": round(report["input_bytes"] / report["wall"] / 1e6, 1),
        "cpu_ms_per_object": round(report["cpu"] / count * 1e3, 1),
        "cpu_ms_per_MiB": round(report["cpu"] / (report["input_bytes"] / harness.MiB) * 1e3, 2),
        "peak_rss_MiB": round(report["hwm_after_kib"] / mib, 1),
        "rss_growth_MiB": round(report["growth_kib"] / mib, 1),
        "cold_rss_growth_MiB": round(report["cold_growth_kib"] / mib, 1),
        "compression_ratio": round(report["input_bytes"] / report["stored_bytes"], 3),
    })


@pytest.mark.benchmark(group="memory")
@pytest.mark.parametrize(("label", "count", "overrides"), CASES + DIAGNOSTIC, ids=[c[0] for c in CASES + DIAGNOSTIC])
def test_large_objects_rss(benchmark: Any, s3: harness.S3Server, large: LargeCorpus, store: dict[str, Any],
                           label: str, count: int, overrides: dict[str, Any]) -> None:
    reports: list[dict[str, Any]] = []

    def run() -> None:
        reports.append(cached_case(store, s3, large, label, count, overrides))

    # One round: the case takes seconds and its figures come from inside the child.
    benchmark.pedantic(run, rounds=1, iterations=1)
    _record(benchmark, reports[0], count, overrides)
