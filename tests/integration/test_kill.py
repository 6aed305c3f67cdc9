"""Exactly once under SIGKILL (issue 4's acceptance, contract section 6).

The invocation runs the real ``handler.handler`` in a child process (tests/support/invoke.py)
against moto (source S3, claims, secret) and SeaweedFS (the MinIO stand-in), and is killed
with SIGKILL, its whole process group, at a chosen step or after a random delay. Then the
same messages are delivered again from one second after the dead invocation's lease end
(its deadline plus LEASE_GRACE_SECONDS: 1 s in these tests; one keeps the default 30 s and
checks the stored leases and a redelivery inside them instead of sleeping 30 s), and
every one must be acknowledged, with every object in exactly one archive: counted from
the manifests of all archives under the scenario's prefix (never extracted to disk), the
archived bytes equal to the uploaded version's, each claim naming an archive that lists
the object, no archive without its checksum metadata or cut short.

Random kill points: ``KILL_SEED`` (environment) reproduces a run; the seed is printed. A
delay reproduces the kill *time*, not the exact instruction: the machine's load moves the
point a little, so each point also reports the last step its trace shows.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import S3Target
from tests.support.faults import Rule, kill_at, sleep_at
from tests.support.invoke import Function, InvocationResult
from tests.support.report import terminal
from tests.support.s3events import Uploaded, messages, notification, sqs_event, upload
from tests.support.servers import MotoServer
from tests.support.world import Batch, World, new_batch

pytestmark = [pytest.mark.servers, pytest.mark.timeout(300)]

KILLED_TIMEOUT_S = 4.0  # the dead invocation's deadline, counted from its start
REDELIVERY_TIMEOUT_S = 8.0
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def world(moto_server: MotoServer, minio_target: S3Target) -> World:
    return World.create(moto_server, minio_target)


def lease_end(batch: Batch, deadline: float) -> float:
    return deadline + float(batch.env.get("LEASE_GRACE_SECONDS", "30"))


def wait_past(moment: float, *, extra: float = 1.0) -> None:
    """A later delivery from 1 s after the dead invocation's lease end on."""
    time.sleep(max(0.0, moment + extra - time.time()))


def redeliver(batch: Batch, log_dir: Path, *, after: float) -> InvocationResult:
    """A cold start (initialised while waiting), then the same messages once the lease of
    an invocation whose deadline was ``after`` has ended."""
    with Function(batch.env, log_dir=log_dir, name="redelivery") as function:
        wait_past(lease_end(batch, after))
        return function.invoke(batch.event(again=True), timeout_s=REDELIVERY_TIMEOUT_S)


def assert_all_acknowledged(result: InvocationResult) -> None:
    assert result.outcome == "ok", (result.outcome, result.error)
    assert result.failed_ids == [], f"messages not acknowledged: {result.failed_ids}"
    assert not result.leaks.get("threads") and not result.leaks.get("children"), result.leaks


def kill_then_redeliver(batch: Batch, log_dir: Path, plan: list[Rule]) -> tuple[InvocationResult, InvocationResult]:
    with Function(batch.env, log_dir=log_dir, name="killed") as function:
        killed = function.invoke(batch.event(), timeout_s=KILLED_TIMEOUT_S, plan=plan)
    return killed, redeliver(batch, log_dir, after=killed.deadline)


# --- fixed kill points ---------------------------------------------------------------------------

@dataclass(frozen=True)
class KillPoint:
    name: str
    plan: tuple[Rule, ...]
    expect_step: str  # the trace's last step before the kill
    objects: int = 12
    big: tuple[int, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    # A killed multipart upload cannot abort itself: its parts wait for the bucket's
    # AbortIncompleteMultipartUpload lifecycle rule (the final key never appears).
    pending_upload: bool = False


KILL_POINTS = [
    KillPoint("during claim", (kill_at("claims.put_item.after", nth=5),), "claims.put_item"),
    KillPoint("during fetch", (kill_at("fetch.item", nth=5),), "fetch.item"),
    KillPoint("during fetch, two fetch processes", (kill_at("fetch.item", nth=3),), "fetch.item",
              objects=16, env=(("FETCH_PROCESSES", "2"),)),
    KillPoint("during upload (spool read, PUT not sent)", (kill_at("publish.read", bytes=1),), "publish.before"),
    KillPoint("during multipart upload, after part 1", (kill_at("publish.read", bytes=5 * MiB + 1),),
              "publish.before", objects=2, big=(int(2.5 * MiB), int(2.5 * MiB), MiB),
              env=(("MULTIPART_PART_BYTES", str(5 * MiB)),), pending_upload=True),
    KillPoint("after the upload", (kill_at("publish.after"),), "publish.after"),
    KillPoint("during the release of objects that do not fit",
              (Rule("spool.free_space", "full", times=0), kill_at("claims.delete_item.after", nth=3)),
              "claims.delete_item", objects=20, env=(("SPOOL_MAX_MEMORY_BYTES", "0"),)),
]


def run_kill_point(world: World, log_dir: Path, point: KillPoint) -> list[str]:
    """Kill at the point, deliver again after the deadline; the problems found."""
    batch = new_batch(world, random.Random(point.name), objects=point.objects, big=point.big, prefix="kill",
                      env=dict(point.env))
    killed, again = kill_then_redeliver(batch, log_dir, list(point.plan))
    problems = []
    if killed.outcome != "killed" or not killed.last_step().startswith(point.expect_step):
        problems.append(f"the kill did not land at {point.expect_step}: {killed.outcome}, steps {killed.points}")
    if again.outcome != "ok" or again.failed_ids:
        problems.append(f"redelivery: {again.outcome}, not acknowledged {again.failed_ids} {again.error or ''}")
    if again.leaks.get("threads") or again.leaks.get("children"):
        problems.append(f"redelivery leaked {again.leaks}")
    problems += batch.problems(pending_uploads_ok=point.pending_upload)
    scanned = batch.scan()
    if scanned.objects != len(batch.objects) or len(scanned.pending_uploads) != point.pending_upload:
        problems.append(f"{scanned.objects} objects archived of {len(batch.objects)}; "
                        f"pending uploads {scanned.pending_uploads}")
    return problems


def test_killed_at_each_step_then_redelivered_archives_every_object_once(world: World, tmp_path: Path) -> None:
    """Every fixed kill point, run side by side (each has its own objects, table and prefix)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda p: (p, run_kill_point(world, tmp_path / p.name.replace(" ", "-"), p)),
                                KILL_POINTS))
    for point, problems in results:
        print(f"  killed {point.name}: {problems or 'ok'}")
    assert {point.name: problems for point, problems in results if problems} == {}


def test_killed_twice_recovery_of_a_recovery(world: World, tmp_path: Path) -> None:
    """A publishes and dies; B, after A's lease, reads A's archive and dies while deciding;
    C, after B's lease, must still find A's archive (not archive anything again)."""
    batch = new_batch(world, random.Random(7), objects=10, prefix="kill")
    with Function(batch.env, log_dir=tmp_path, name="a") as a:
        first = a.invoke(batch.event(), timeout_s=KILLED_TIMEOUT_S, plan=[kill_at("publish.after")])
    assert first.outcome == "killed"
    with Function(batch.env, log_dir=tmp_path, name="b") as b:
        wait_past(lease_end(batch, first.deadline))
        second = b.invoke(batch.event(again=True), timeout_s=KILLED_TIMEOUT_S,
                          plan=[kill_at("target.listing")])
    assert second.outcome == "killed"
    assert "target.listing" in second.points  # B was recovering from A's archive
    third = redeliver(batch, tmp_path, after=second.deadline)
    assert_all_acknowledged(third)
    assert batch.problems() == []
    assert len(batch.scan().archives) == 1  # only A's archive: nothing was archived twice


def test_killed_after_publish_and_redelivered_before_the_deadline_waits(world: World, tmp_path: Path) -> None:
    """Before the dead invocation's lease ends its claims are live: a redelivery then must
    not archive the objects again; it finds them in the published archive (or fails the
    messages, had the archive not appeared yet); after it, all is acknowledged."""
    batch = new_batch(world, random.Random(8), objects=6, prefix="kill")
    with Function(batch.env, log_dir=tmp_path, name="killed") as function:
        killed = function.invoke(batch.event(), timeout_s=5.0, plan=[kill_at("publish.after")])
    with Function(batch.env, log_dir=tmp_path, name="early") as function:
        early = function.invoke(batch.event(again=True), timeout_s=REDELIVERY_TIMEOUT_S)
    assert time.time() < killed.deadline, "the early redelivery came too late to test anything"
    assert early.failed_ids == []  # the live holder's archive lists them: duplicates
    assert len(batch.scan().archives) == 1
    again = redeliver(batch, tmp_path, after=killed.deadline)
    assert_all_acknowledged(again)
    assert batch.problems() == []


def test_killed_before_publish_and_redelivered_before_the_lease_ends_waits(world: World, tmp_path: Path) -> None:
    """The dead holder's archive does not exist yet and its lease is live: the archive may
    still appear, so a redelivery must neither archive the objects nor acknowledge them."""
    batch = new_batch(world, random.Random(9), objects=6, prefix="kill")
    with Function(batch.env, log_dir=tmp_path, name="killed") as function:
        killed = function.invoke(batch.event(), timeout_s=5.0, plan=[kill_at("fetch.item", nth=2)])
    with Function(batch.env, log_dir=tmp_path, name="early") as function:
        early = function.invoke(batch.event(again=True), timeout_s=REDELIVERY_TIMEOUT_S)
    assert time.time() < killed.deadline, "the early redelivery came too late to test anything"
    assert sorted(early.failed_ids) == sorted(m.message_id for m in batch.messages)
    assert batch.scan().archives == []
    again = redeliver(batch, tmp_path, after=killed.deadline)
    assert_all_acknowledged(again)
    assert batch.problems() == []


DEFAULT_GRACE_S = 30  # CONTRACT.md section 2: LEASE_GRACE_SECONDS's default


def test_killed_mid_fetch_with_the_default_grace(world: World, tmp_path: Path) -> None:
    """The other kill tests shorten LEASE_GRACE_SECONDS to 1 s; this one keeps the default:
    the dead invocation's claims hold until its deadline + 30 s, and a redelivery between
    the deadline and that lease end waits (fails every message, archives nothing).

    It does not sleep the 30 s to see the settle after the lease end: whether a claim is
    over is decided by the ``LeaseUntil`` stored in it alone (aggregator/claims/store.py),
    whatever the grace of the invocation that reads it, and the stored value is checked
    here; the settle one second after a stored lease end is what every 1 s-grace test in
    this file proves. The grace's parsing is tests/unit/base/test_settings.py's.
    """
    batch = new_batch(world, random.Random(10), objects=8, prefix="kill")
    del batch.env["LEASE_GRACE_SECONDS"]
    with Function(batch.env, log_dir=tmp_path, name="killed") as function:
        killed = function.invoke(batch.event(), timeout_s=KILLED_TIMEOUT_S, plan=[kill_at("fetch.item", nth=3)])
    assert killed.outcome == "killed"
    # Every object was claimed before the fetch began, each until the deadline + the default
    # grace. (The child's deadline is the context's, truncated to the millisecond.)
    claims = world.claims(batch.table)
    assert len(claims) == len(batch.objects)
    graces = [float(claim["LeaseUntil"]) - killed.deadline for claim in claims.values()]
    assert all(abs(grace - DEFAULT_GRACE_S) < 0.5 for grace in graces), graces
    with Function(batch.env, log_dir=tmp_path, name="in-grace") as function:
        wait_past(killed.deadline)
        in_grace = function.invoke(batch.event(again=True), timeout_s=REDELIVERY_TIMEOUT_S)
    assert time.time() < lease_end(batch, killed.deadline)
    assert sorted(in_grace.failed_ids) == sorted(m.message_id for m in batch.messages)
    assert batch.scan().archives == []
    assert world.claims(batch.table) == claims  # the redelivery took nothing over


def test_killed_after_publish_when_the_event_has_no_version_id(world: World, tmp_path: Path) -> None:
    """A versioned bucket whose events carry no versionId (moto's own S3 notifications do
    this, so the local stack sees exactly these): the claim's identity is the eTag with the
    sequencer, while the GET answers with a version id. The recovery after a kill between
    publish and commit must still recognise the objects in the dead invocation's archive."""
    batch = new_batch(world, random.Random(12), objects=5, prefix="kill")
    bare = [Uploaded(o.bucket, o.key, o.body, o.etag, None, o.sequencer) for o in batch.objects]
    batch.messages = messages([notification(o) for o in bare])
    killed, again = kill_then_redeliver(batch, tmp_path, [kill_at("publish.after")])
    assert killed.outcome == "killed"
    assert_all_acknowledged(again)
    scanned = batch.scan()
    copies = Counter((bucket, key) for (bucket, key, _), n in scanned.copies.items() for _ in range(n))
    assert {k: n for k, n in copies.items() if n != 1} == {}
    assert len(scanned.archives) == 1


# --- random kill points ---------------------------------------------------------------------------

# Each step is stretched a little so that a uniform delay lands in every one of them.
STRETCH = (sleep_at("claims.transact_write_items.after", 0.05), sleep_at("fetch.item", 0.015),
           sleep_at("publish.before", 0.1), sleep_at("publish.after", 0.15),
           sleep_at("claims.batch_write_item.after", 0.05))


@dataclass
class RandomPoint:
    index: int
    delay: float
    codec: str
    processes: str
    objects: int
    killed_outcome: str = ""
    step: str = ""
    problems: list[str] = field(default_factory=list)


def run_random_points(world: World, log_dir: Path, *, count: int, seed: int, workers: int,
                      max_delay: float, say: Callable[[str], None] = print) -> list[RandomPoint]:
    rng = random.Random(seed)
    points = [RandomPoint(index=i, delay=rng.uniform(0, max_delay), codec=rng.choice(("zstd", "gzip", "none")),
                          processes=rng.choice(("1", "1", "2")), objects=rng.randint(6, 30)) for i in range(count)]
    lock = threading.Lock()

    def run(point: RandomPoint) -> RandomPoint:
        batch = new_batch(world, random.Random(seed * 1000 + point.index), objects=point.objects, prefix="random-kill",
                          COMPRESSION=point.codec, FETCH_PROCESSES=point.processes)
        where = log_dir / f"point-{point.index}"
        try:
            with Function(batch.env, log_dir=where, name="killed") as function:
                killed = function.invoke(batch.event(), timeout_s=KILLED_TIMEOUT_S, plan=list(STRETCH),
                                         kill_after=point.delay)
            point.killed_outcome, point.step = killed.outcome, killed.last_step()
            again = redeliver(batch, where, after=killed.deadline or time.time())
            if again.outcome != "ok" or again.failed_ids:
                point.problems.append(f"redelivery: {again.outcome}, failed {again.failed_ids}, {again.error}")
            if again.leaks.get("threads") or again.leaks.get("children"):
                point.problems.append(f"redelivery leaked {again.leaks}")
            point.problems += batch.problems()
        except Exception as e:  # reported with the point, so the seed and delay are shown
            point.problems.append(f"{type(e).__name__}: {e}")
        with lock:
            status = "ok" if not point.problems else "FAILED"
            say(f"  kill point {point.index:2d}: delay {point.delay:.3f} s, {point.codec}, {point.processes} "
                  f"fetch process(es), {point.objects} objects -> {point.killed_outcome} at {point.step}: {status}")
        return point

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, points))


def _random_kills(world: World, tmp_path: Path, say: Callable[[str], None], *, count: int, workers: int) -> None:
    seed = int(os.environ.get("KILL_SEED") or random.SystemRandom().randrange(10**6))
    say(f"random kill points: KILL_SEED={seed} ({count} points; set KILL_SEED to run them again)")
    # A whole batch here takes ~0.85 s, so most delays land mid-run; the rest finish first.
    points = run_random_points(world, tmp_path, count=count, seed=seed, workers=workers, max_delay=1.0, say=say)
    steps = Counter(p.step for p in points if p.killed_outcome == "killed")
    say(f"random kill points by last step (KILL_SEED={seed}): {dict(sorted(steps.items()))}; "
          f"not killed (finished first): {sum(p.killed_outcome == 'ok' for p in points)}")
    failures = {f"point {p.index} (delay {p.delay:.3f} s, step {p.step})": p.problems for p in points if p.problems}
    assert failures == {}, f"KILL_SEED={seed}: {failures}"
    # Not vacuous: most points really killed the function, at several different steps. (Two
    # thirds with 20 points failed one run in three on a quick machine: a binomial tail.)
    assert sum(steps.values()) >= count // 2, "too few points were really kills"
    assert len(steps) >= 3, f"kills landed at too few steps: {dict(steps)}"


def test_random_kill_points(world: World, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    _random_kills(world, tmp_path, terminal(request), count=20, workers=6)  # CI time; 150 in the long run


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_random_kill_points_long(world: World, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    _random_kills(world, tmp_path, terminal(request), count=150, workers=5)


# --- duplicates, overwrites, concurrency ------------------------------------------------------------

def emf_sum(result: InvocationResult, name: str) -> float:
    total = 0.0
    for line in result.stdout:
        document = json.loads(line)
        if "_aws" in document and name in document:
            value = document[name]
            total += sum(value) if isinstance(value, list) else value
    return total


def test_a_redelivered_event_is_skipped(world: World, tmp_path: Path) -> None:
    batch = new_batch(world, random.Random(9), objects=8, prefix="dup")
    with Function(batch.env, log_dir=tmp_path) as function:
        first = function.invoke(batch.event(), timeout_s=REDELIVERY_TIMEOUT_S)
        assert_all_acknowledged(first)
        archives_after_first = world.archive_keys(batch.prefix)
        # The same messages again (SQS redelivery), and the same bodies as new messages
        # (S3 sending a notification twice).
        again = function.invoke(batch.event(again=True), timeout_s=REDELIVERY_TIMEOUT_S)
        resent = function.invoke(sqs_event(messages([m.body for m in batch.messages])), timeout_s=REDELIVERY_TIMEOUT_S)
    for result in (again, resent):
        assert_all_acknowledged(result)
        assert emf_sum(result, "DuplicatesSkipped") == len(batch.objects)
        assert emf_sum(result, "ObjectsArchived") == 0
    assert world.archive_keys(batch.prefix) == archives_after_first  # no archive without new objects
    assert batch.problems() == []


@pytest.mark.parametrize("versioned", [True, False], ids=["versioned", "unversioned"])
def test_an_overwrite_is_archived_again_with_the_new_bytes(world: World, tmp_path: Path, versioned: bool) -> None:
    batch = new_batch(world, random.Random(10), objects=2, prefix="overwrite", versioned=versioned)
    key = "same/key with spaces+plus.txt"

    def deliver(function: Function, *objects: Uploaded) -> InvocationResult:
        result = function.invoke(sqs_event(messages([notification(o) for o in objects])),
                                 timeout_s=REDELIVERY_TIMEOUT_S)
        assert_all_acknowledged(result)
        return result

    with Function(batch.env, log_dir=tmp_path) as function:
        first = upload(world.s3, batch.bucket, key, b"first version\n")
        deliver(function, first)
        second = upload(world.s3, batch.bucket, key, b"second version, new bytes\n")
        deliver(function, second)
        again_first = deliver(function, first)  # the first event redelivered after the overwrite
        identical = upload(world.s3, batch.bucket, key, b"second version, new bytes\n")  # new upload, same bytes
        deliver(function, identical)
    assert emf_sum(again_first, "DuplicatesSkipped") == 1
    expected = [first, second, identical]
    assert len({o.identity for o in expected}) == 3
    scanned = batch.scan()
    assert scanned.exactly_once(expected) == []
    assert len(scanned.archives) == 3  # one archive per invocation with new objects


def test_a_version_gone_before_the_fetch_is_acknowledged_and_counted(world: World, tmp_path: Path) -> None:
    """Unversioned bucket: an event whose eTag was overwritten before the GET names a
    version that no longer exists (If-Match fails): acknowledged, counted, not archived."""
    batch = new_batch(world, random.Random(11), objects=1, prefix="gone", versioned=False)

    old = upload(world.s3, batch.bucket, "k", b"old bytes")
    new = upload(world.s3, batch.bucket, "k", b"new bytes")
    result = invoke_once_here(batch, tmp_path, sqs_event(messages([notification(old), notification(new)])))
    assert_all_acknowledged(result)
    assert emf_sum(result, "ObjectsMissing") == 1
    assert batch.scan().exactly_once([new]) == []


def invoke_once_here(batch: Batch, log_dir: Path, event: dict[str, object]) -> InvocationResult:
    with Function(batch.env, log_dir=log_dir) as function:
        return function.invoke(event, timeout_s=REDELIVERY_TIMEOUT_S)


def invoke_together(functions: list[Function], events: list[dict[str, object]], *, plans: list[list[Rule]],
                    kill_after: list[float | None]) -> list[InvocationResult]:
    """One invocation on each function, started at the same moment."""
    results: list[InvocationResult] = [InvocationResult("none") for _ in functions]
    barrier = threading.Barrier(len(functions))

    def run(i: int) -> None:
        barrier.wait()
        results[i] = functions[i].invoke(events[i], timeout_s=KILLED_TIMEOUT_S, plan=plans[i],
                                         kill_after=kill_after[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(functions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _concurrent_rounds(world: World, tmp_path: Path, *, rounds: int, kill_one: bool) -> None:
    for round_number in range(rounds):
        rng = random.Random(100 + round_number)
        batch = new_batch(world, rng, objects=24, prefix="concurrent", two_per_message=0.5)
        half = len(batch.messages) // 2
        # A gets every message, B the second half plus a few of the first: they overlap.
        subsets = [batch.messages, batch.messages[half - 2:]]
        kill_after: list[float | None] = [None, None]
        if kill_one:
            kill_after[rng.randrange(2)] = rng.uniform(0.05, 0.6)
        functions = [Function(batch.env, log_dir=tmp_path, name=f"r{round_number}-{i}").start() for i in range(2)]
        try:
            results = invoke_together(functions, [batch.event(subset) for subset in subsets],
                                      plans=[[sleep_at("fetch.item", 0.01)]] * 2, kill_after=kill_after)
        finally:
            for function in functions:
                function.close()
        # Whatever either left (failed messages, or all of a killed one's) is delivered again.
        left: set[str] = set()
        for result, subset in zip(results, subsets, strict=True):
            left |= {m.message_id for m in subset} if result.outcome != "ok" else set(result.failed_ids)
        print(f"  round {round_number}: outcomes {[r.outcome for r in results]}, "
              f"failed {[len(r.failed_ids) for r in results]}, {len(left)} messages left")
        if left:
            again = None
            if all(result.outcome == "ok" for result in results):
                # Both returned: each object is in its holder's committed archive (or was
                # released), which a redelivery finds through the live claims at once.
                again = invoke_once_here(batch, tmp_path, batch.event(again=True))
                print(f"  round {round_number}: redelivered at once: {again.outcome}, failed {again.failed_ids}")
            if again is None or again.outcome != "ok" or again.failed_ids:
                # A holder killed, or its publish outcome unknown: what the contract promises
                # is for a delivery after its lease end.
                again = redeliver(batch, tmp_path, after=max(r.deadline for r in results))
            assert_all_acknowledged(again)
        assert batch.problems() == [], f"round {round_number}"


def test_concurrent_deliveries_never_archive_an_object_twice(world: World, tmp_path: Path) -> None:
    _concurrent_rounds(world, tmp_path, rounds=2, kill_one=False)


@pytest.mark.slow
def test_concurrent_deliveries_with_a_kill_never_archive_an_object_twice(world: World, tmp_path: Path) -> None:
    _concurrent_rounds(world, tmp_path, rounds=8, kill_one=True)
