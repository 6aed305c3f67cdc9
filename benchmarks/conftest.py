"""Servers, corpora and shared measurements for the benchmarks.

Run:  make bench         (full: 2,000 x 8 KiB, 16 x 64 MiB)
      make bench-quick   (CI: 500 x 8 KiB, 8 x 64 MiB; the regression gate included)

Every server is a real process on 127.0.0.1 with free ports, started once per session:
SeaweedFS (the MinIO stand-in, which checks signatures and checksums) as source and target,
or a real MinIO when ``MINIO_TEST_ENDPOINT`` (+ ``MINIO_TEST_ACCESS_KEY``,
``MINIO_TEST_SECRET_KEY``) names one; moto for DynamoDB and Secrets Manager; and the cheap
in-memory GET server (:mod:`benchmarks.cheap_s3`) where the client must be the bottleneck.

The regression gate (``test_gate.py``) always runs last, so that it can reuse the
measurements that the benchmarks before it already made (see :class:`Store`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aggregator.base.events import ObjectRef
from benchmarks import harness
from benchmarks.cheap_s3 import CheapS3
from tests.support.servers import MotoServer, SeaweedS3

# Nothing here may reach real AWS: dummy credentials for any client built from the
# environment (the S3 servers get their keys explicitly, see harness.S3Server).
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_REGION=harness.REGION,
                  AWS_DEFAULT_REGION=harness.REGION)
for _name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
              "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_DYNAMODB",
              "AWS_ENDPOINT_URL_SECRETS_MANAGER"):
    os.environ.pop(_name, None)


# Left out of quick mode (CI) to keep it within its ~4 minutes; ``make bench`` runs them.
# moto closes every connection, so each moto-sourced fetch case takes ~15 s and measures
# TCP connects; the boto3 baseline is the gate's plain-GET yardstick again, threaded; duplicate
# claims cost ~40 s of moto transactions and the handler benchmark covers claims; the
# gate measures the seed design (gzip) itself, in turns with the engine.
QUICK_DESELECT = (
    "test_engine.py::test_seed_reference[",
    "test_fetch.py::test_fetch_small_objects[moto-",
    "test_fetch.py::test_boto3_get_object_baseline",
    "test_claims.py::test_claim_1000_duplicates",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The gate goes last: it reuses what the benchmarks measured (it measures what they did not)."""
    if harness.QUICK:
        dropped = [item for item in items if any(pattern in item.nodeid for pattern in QUICK_DESELECT)]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = [item for item in items if item not in dropped]
    items.sort(key=lambda item: item.nodeid.split("::")[0].endswith("test_gate.py"))


def pytest_report_header(config: pytest.Config) -> str:
    mode = "quick (BENCH_QUICK=1)" if harness.QUICK else "full"
    return (f"benchmarks: {mode} mode, {harness.SMALL_COUNT} x 8 KiB, {harness.LARGE_COUNT} x 64 MiB; "
            f"{harness.machine()}")


class Store(dict[str, Any]):
    """Measurements made once per session and shared between benchmarks and the gate."""


STORE = Store()


@pytest.fixture(scope="session")
def store() -> Store:
    return STORE


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    gate = STORE.get("gate")
    if not gate:
        return
    terminalreporter.section("performance gate")
    for name, row in gate.items():
        verdict = "PASS" if row["passed"] else "FAIL"
        sense = row.get("sense") or (">=" if row["unit"] == "x" else "<=")
        terminalreporter.line(f"{verdict}  {name}: {row['measured']:g} {row['unit']} "
                              f"(target {sense} {row['target']:g} {row['unit']})  {row['detail']}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """BENCH_GATE_JSON=path saves the gate's figures for benchmarks/render.py."""
    path = os.environ.get("BENCH_GATE_JSON")
    if path and STORE.get("gate"):
        document = {"mode": "quick" if harness.QUICK else "full", "machine": harness.machine(),
                    "datetime": datetime.now(UTC).isoformat(timespec="seconds"), "targets": STORE["gate"]}
        if STORE.get("cost"):
            document["cost"] = STORE["cost"]  # benchmarks.cost: the bill, line by line
        if STORE.get("latency"):
            document["latency"] = STORE["latency"].to_json()  # benchmarks.test_latency: the wait, part by part
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(document, indent=2) + "\n")


@pytest.fixture(scope="session")
def s3() -> Iterator[harness.S3Server]:
    """The MinIO stand-in (SeaweedFS), or a real MinIO when the environment names one."""
    url = os.environ.get("MINIO_TEST_ENDPOINT")
    if url:
        server = harness.S3Server(url, os.environ["MINIO_TEST_ACCESS_KEY"], os.environ["MINIO_TEST_SECRET_KEY"])
        harness.ensure_bucket(server.client(), harness.TARGET_BUCKET)
        yield server
        return
    with SeaweedS3(access_key=harness.ACCESS_KEY, secret_key=harness.SECRET_KEY) as seaweed:
        server = harness.S3Server(seaweed.endpoint_url)
        harness.ensure_bucket(server.client(), harness.TARGET_BUCKET)
        yield server


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="session")
def world(s3: harness.S3Server, moto: MotoServer) -> harness.HandlerWorld:
    """The handler's services: claims in moto DynamoDB, the MinIO secret in moto Secrets Manager."""
    return harness.HandlerWorld.create(s3, moto.endpoint_url)


@dataclass(frozen=True)
class Corpus:
    refs: list[ObjectRef]
    bodies: dict[str, bytes]  # member name -> bytes

    @property
    def input_bytes(self) -> int:
        return sum(len(b) for b in self.bodies.values())


@pytest.fixture(scope="session")
def small_2000(s3: harness.S3Server) -> Corpus:
    """RATIO_COUNT (2,000) x 8 KiB log objects in the source bucket."""
    bodies = harness.small_bodies(max(harness.RATIO_COUNT, harness.SMALL_COUNT))
    refs = harness.seed_small(s3.client(), harness.SOURCE_BUCKET, harness.unique_prefix("small"), bodies)
    return Corpus(refs, {f"{r.bucket}/{r.key}": b for r, b in zip(refs, bodies, strict=True)})


@pytest.fixture(scope="session")
def small(small_2000: Corpus) -> Corpus:
    """The benchmarks' SMALL_COUNT objects: the first of ``small_2000``."""
    refs = small_2000.refs[:harness.SMALL_COUNT]
    return Corpus(refs, {name: small_2000.bodies[name] for name in (f"{r.bucket}/{r.key}" for r in refs)})


@dataclass(frozen=True)
class LargeCorpus:
    refs: list[ObjectRef]
    sha256: dict[str, str]  # member name -> hex digest
    warmup: list[ObjectRef]  # a few small objects for the warm-up archive


@pytest.fixture(scope="session")
def large(s3: harness.S3Server) -> LargeCorpus:
    """LARGE_COUNT x 64 MiB objects (about 1.6x compressible); the cases use the first N."""
    client = s3.client()
    prefix = harness.unique_prefix("large")
    seeded = harness.seed_large(client, harness.SOURCE_BUCKET, prefix, count=harness.LARGE_COUNT,
                                size=harness.LARGE_SIZE)
    refs = [ref for ref, _ in seeded]
    digests = {f"{ref.bucket}/{ref.key}": sha256 for ref, sha256 in seeded}
    warmup = harness.seed_small(client, harness.SOURCE_BUCKET, prefix + "-warmup", harness.small_bodies(8, seed=7))
    return LargeCorpus(refs, digests, warmup)


@pytest.fixture(scope="session")
def cheap() -> Iterator[CheapS3]:
    """The in-memory GET server with CHEAP_COUNT x 8 KiB objects."""
    with CheapS3(count=harness.CHEAP_COUNT) as server:
        yield server
