"""The whole handler path against the engine alone: what claims cost per object.

Run:  .venv/bin/python -m pytest benchmarks/test_handler.py    (BENCH_QUICK=1 for 500 objects)

``run_batch`` with the dependencies ``lambda_app.build_dependencies`` builds (the real
ClaimStore on a moto DynamoDB server, the MinIO secret from moto's Secrets Manager,
SeaweedFS as source and target), fed one SQS message per object with the S3 event as S3
sends it: parse, claim, fetch, archive, publish, verify, commit.

As in a warm Lambda container, the dependencies are built once and a small warm-up
invocation runs first (secret read, MinIO client built); each measured invocation then
gets a small fresh claim table (moto's transactions slow down as a table grows; the field
notes say to judge claims by client CPU and calls per object, not by moto's wall time).

``extra_info`` adds ``dynamodb_calls_per_object`` and ``claims_cpu_ms_per_object`` (the
client CPU spent inside claim/commit/release), so the claims' share of the per-object
cost is visible beside the engine's (``test_engine.py::test_engine_codec[zstd-3]``).
"""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import harness
from benchmarks.conftest import Corpus

ROUNDS = 2 if harness.QUICK else 3
WARMUP_OBJECTS = 50


def handler_rounds(benchmark: Any, world: harness.HandlerWorld, small: Corpus, *, rounds: int
                   ) -> list[harness.Sample]:
    """A warm container's invocations, each on a fresh table (dropped afterwards).
    ``benchmark=None`` measures without pytest-benchmark (the gate)."""
    config = harness.EngineConfig()
    deps = world.dependencies(config=config)
    tables: list[str] = []

    def setup() -> None:
        if tables:
            world.drop_table(tables.pop())
        tables.append(world.fresh_table())
        world.use_table(deps, tables[-1])

    def run() -> harness.HandlerResult:
        return harness.run_handler(deps, small.refs)

    try:
        setup()
        harness.run_handler(deps, small.refs[:WARMUP_OBJECTS])  # the warm-up invocation
        if benchmark is None:
            samples = []
            for _ in range(rounds):
                setup()
                samples.append(harness.measure(run))
        else:
            benchmark.extra_info["config"] = f"handler {config.label}"
            samples = harness.bench(benchmark, run, rounds=rounds, setup=setup)
    finally:
        for table in tables:
            world.drop_table(table)
    return samples


@pytest.mark.benchmark(group="handler")
def test_handler_full_path(benchmark: Any, world: harness.HandlerWorld, small: Corpus, s3: harness.S3Server,
                           store: dict[str, Any]) -> None:
    samples = handler_rounds(benchmark, world, small, rounds=ROUNDS)
    store["handler"] = samples
    members = harness.verify_archive(s3.client(), harness.TARGET_BUCKET, samples[-1].outcome.key, codec="zstd",
                                     expected=small.bodies)
    assert members == len(small.refs)
    # A first delivery claims each object with one conditional PutItem, and writes nothing more.
    assert benchmark.extra_info["dynamodb_calls_per_object"] == 1
