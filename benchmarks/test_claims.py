"""Claim store cost: DynamoDB calls and client CPU per object, against a moto_server process.

Run:  .venv/bin/python -m pytest benchmarks/test_claims.py --benchmark-only

Each round gets a small fresh table (moto's TransactWriteItems deep-copies the table, so
its time grows with the table; the field notes say judge by client CPU and calls, not by
moto's wall time). The client is the production one (``aggregator.clients``), pointed at
the server with ``AWS_ENDPOINT_URL_DYNAMODB``.

* ``claim``: 1,000 new ids claimed (one conditional PutItem each; there is no commit).
* ``claim duplicates``: 1,000 ids claimed by an earlier invocation whose lease is over
  (a redelivered batch): each PutItem fails its condition and returns the holder.

``extra_info`` holds calls per object and client CPU ms per object
(``time.process_time`` of this process; the server is another process), median of the rounds.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from aggregator.base.events import ObjectRef
from aggregator.base.names import object_id
from aggregator.claims.store import ClaimStore
from aggregator.clients import aws_session, dynamodb_client
from tests.support.servers import MotoServer
from tests.support.tables import create_claims_table

COUNT = 1000
ROUNDS = 2 if os.environ.get("BENCH_QUICK") else 5
TTL = 1_296_000
IDS = [object_id(ObjectRef("source-bucket", f"logs/2025/03/04/{i:06d}.json", 8192, f"{i:032x}", None,
                           f"{i:016X}")) for i in range(COUNT)]


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with pytest.MonkeyPatch.context() as patch, MotoServer() as server:
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_REGION": "eu-west-2", "AWS_DEFAULT_REGION": "eu-west-2",
                            "AWS_ENDPOINT_URL_DYNAMODB": server.endpoint_url}.items():
            patch.setenv(name, value)
        patch.delenv("AWS_SESSION_TOKEN", raising=False)
        yield dynamodb_client(aws_session())


class Tables:
    """A fresh table per round; the previous one is dropped to keep the server small."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.current: str | None = None

    def fresh(self) -> str:
        if self.current:
            self.client.delete_table(TableName=self.current)
        self.current = f"bench-claims-{uuid.uuid4().hex[:8]}"
        create_claims_table(self.client, self.current)
        return self.current


def per_object(samples: list[tuple[int, float]]) -> tuple[float, float]:
    calls = statistics.median(c for c, _ in samples) / COUNT
    cpu_ms = statistics.median(t for _, t in samples) * 1000 / COUNT
    return round(calls, 4), round(cpu_ms, 4)


def test_claim_1000(benchmark: Any, client: Any) -> None:
    tables = Tables(client)
    samples: list[tuple[int, float]] = []

    def setup() -> tuple[tuple[ClaimStore], dict[str, Any]]:
        return (ClaimStore(client, tables.fresh(), ttl_seconds=TTL),), {}

    def run(store: ClaimStore) -> None:
        start = time.process_time()
        outcome = store.claim(IDS, owner="bench", lease_until=time.time() + 900, archive_key="archives/bench.tar")
        samples.append((store.calls, time.process_time() - start))
        assert len(outcome.claimed) == COUNT

    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, iterations=1)
    calls, cpu = per_object(samples)
    benchmark.extra_info.update({"objects": COUNT, "calls_per_object": calls, "cpu_ms_per_object": cpu})


def test_claim_1000_duplicates(benchmark: Any, client: Any) -> None:
    tables = Tables(client)
    samples: list[tuple[int, float]] = []

    def setup() -> tuple[tuple[ClaimStore], dict[str, Any]]:
        store = ClaimStore(client, tables.fresh(), ttl_seconds=TTL)
        store.claim(IDS, owner="earlier", lease_until=time.time() - 1, archive_key="archives/earlier.tar")
        store.calls = 0
        return (store,), {}

    def run(store: ClaimStore) -> None:
        start = time.process_time()
        outcome = store.claim(IDS, owner="bench", lease_until=time.time() + 900, archive_key="archives/bench.tar")
        samples.append((store.calls, time.process_time() - start))
        assert len(outcome.expired) == COUNT

    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, iterations=1)
    calls, cpu = per_object(samples)
    benchmark.extra_info.update({"objects": COUNT, "calls_per_object": calls, "cpu_ms_per_object": cpu})
