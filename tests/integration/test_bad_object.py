"""One bad large object fails only its own message (issue 14, section 5), through the real handler.

A batch of 99 small objects and one 9 MiB object (over the 8 MiB stream threshold), one
object per message, goes through a real invocation (tests/support/invoke.py) whose source
GETs pass a fault proxy in front of moto's S3; archives go to SeaweedFS (or a real MinIO).
The large body either breaks on every GET, or dribbles so slowly that the deadline cuts it.
Either way the first delivery must:

- return before its deadline with exactly the large object's message in batchItemFailures;
- publish one archive holding the 99 small objects, read back and compared byte for byte;
- leave the large object's claim released (it was in no published archive): the failed
  message delivered again at once, the fault gone, is archived by that very delivery.

At the end every object is in exactly one archive, and every claim names an archive that
lists its object.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.conftest import S3Target
from tests.support.fault_proxy import Fault, FaultProxy
from tests.support.invoke import Function, InvocationResult
from tests.support.servers import MotoServer
from tests.support.world import Batch, World, new_batch

pytestmark = [pytest.mark.servers, pytest.mark.timeout(300)]

MiB = 1024 * 1024
SMALL = 99
TIMEOUT_S = 8.0


@pytest.fixture(scope="module")
def world(moto_server: MotoServer, minio_target: S3Target) -> World:
    return World.create(moto_server, minio_target)


def _handler_end(result: InvocationResult) -> float:
    return float(next(e["t"] for e in result.trace if e["point"] == "handler.end"))


def _first_delivery(world: World, tmp_path: Path, *, fault: list[tuple[Fault, int | None]], seed: str,
                    env: dict[str, str] | None = None) -> None:
    with FaultProxy(world.moto_url, name="s3") as s3:
        batch = new_batch(world, random.Random(seed), objects=SMALL, big=(9 * MiB,), prefix="bad-object",
                          two_per_message=0.0, env=env)
        batch.env.update(AWS_ENDPOINT_URL_S3=s3.url)
        big, big_message = batch.objects[-1], batch.messages[-1]  # one object per message, in order
        for each, times in fault:
            s3.add(lambda r: r.is_object_get and r.key == f"{big.bucket}/{big.key}", each, times=times)
        with Function(batch.env, log_dir=tmp_path).start() as function:
            first = function.invoke(batch.event(), timeout_s=TIMEOUT_S)
            assert first.outcome == "ok", first.error
            assert first.failed_ids == [big_message.message_id]
            assert _handler_end(first) <= first.deadline  # answered in time, not killed at the deadline
            _check_archive_of_the_small_ones(batch)

            s3.clear()  # the fault is gone: the released claim lets a redelivery archive it at once
            retry = function.invoke(batch.event([big_message], again=True), timeout_s=TIMEOUT_S)
            assert retry.outcome == "ok" and retry.failed_ids == [], retry.error
        assert batch.problems() == []
        assert len(batch.scan().archives) == 2


def _check_archive_of_the_small_ones(batch: Batch) -> None:
    scanned = batch.scan()
    assert len(scanned.archives) == 1
    assert scanned.exactly_once(batch.objects[:SMALL]) == []  # bytes and hashes read back


def test_a_large_body_that_breaks_on_every_get_fails_only_its_message(world: World, tmp_path: Path) -> None:
    # Cut mid-way once, then cut before its first byte on every resume: never received whole.
    _first_delivery(world, tmp_path, seed="breaks", fault=[(Fault("truncate", fraction=0.4), 1),
                                                           (Fault("truncate", fraction=0.0), None)])


@pytest.mark.slow  # waits for the deadline (~10 s); the unit test of the pipeline covers it in make test
def test_a_large_body_the_deadline_cuts_fails_only_its_message(world: World, tmp_path: Path) -> None:
    # 64 KiB every 0.1 s: the 9 MiB body needs ~15 s; the fetch stops at 8 - 1.5 s. One GET
    # at a time, so all 99 small objects (fetched before the large one) are in before its
    # head arrives; with more workers the pipeline also fetches small refs first.
    _first_delivery(world, tmp_path, seed="deadline", fault=[(Fault("slow", chunk=64 * 1024, pause=0.1), None)],
                    env={"MAX_FETCH_WORKERS": "1"})
