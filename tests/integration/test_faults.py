"""The fault matrix: each dependency failing at each step, through the real handler.

Every cell runs a real invocation (tests/support/invoke.py) whose traffic goes through
loopback fault proxies (tests/support/fault_proxy.py): one in front of moto for DynamoDB
and Secrets Manager, one in front of moto's S3 for the source GETs, one in front of
SeaweedFS named by the MinIO secret. Faults inside the process (a DynamoDB client that
throttles past every retry, ``/tmp`` full, a slow step, SIGKILL) come from a test-side plan
(tests/support/faults.py). Then, for every cell:

1. the first delivery's batch response must be what the fault allows: every message
   acknowledged, none, exactly the messages naming the broken object, or some (the
   deadline arrived mid-archive);
2. right after it, no archive under a final key may be partial, lack its checksum
   metadata or hold an object twice;
3. the failed messages are delivered again at once, the fault repaired: the matrix
   shows whether the claims were released (acknowledged at once) or left to expire
   (the publish state was unknown, or the process died); in the latter case they are
   delivered again from 1 s after the first invocation's deadline on, and then every
   message must be acknowledged;
4. at the end every object is in exactly one archive with its bytes and a completed
   claim naming that archive, nothing else is archived, no multipart upload is left, and
   no invocation that returned left a thread or child process running.

The matrix (fault x step -> outcome) and its counts are printed. ``make test`` runs a
representative subset (every dependency; the kills are tests/integration/test_kill.py's);
``make test-full`` runs every cell.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote_plus

import pytest

from aggregator.base.events import ObjectRef
from aggregator.base.names import object_id
from tests.conftest import S3Target
from tests.support.fault_proxy import Fault, FaultProxy, Request, json_error, s3_error, slow_down
from tests.support.faults import Rule, kill_at, raise_at, sleep_at
from tests.support.invoke import Function, InvocationResult
from tests.support.report import terminal
from tests.support.s3events import Uploaded
from tests.support.servers import MotoServer
from tests.support.world import Batch, World, new_batch

pytestmark = [pytest.mark.servers, pytest.mark.timeout(900)]

MiB = 1024 * 1024
SECRETS = "secretsmanager"


@pytest.fixture(scope="module")
def world(moto_server: MotoServer, minio_target: S3Target) -> World:
    if not minio_target.endpoint_url.startswith("http://"):
        pytest.skip("the MinIO fault proxy forwards plain http only")
    return World.create(moto_server, minio_target)


# --- one cell ------------------------------------------------------------------------------------

@dataclass
class Live:
    """A cell while it runs: its batch, proxies and plan, and what the fault touches."""

    world: World
    batch: Batch
    aws: FaultProxy  # DynamoDB and Secrets Manager
    s3: FaultProxy  # the source GETs
    minio: FaultProxy
    plan: list[Rule] = field(default_factory=list)
    faulty: list[Uploaded] = field(default_factory=list)  # their messages fail the first delivery
    missing: list[Uploaded] = field(default_factory=list)  # acknowledged, never archived
    lease_until: float = 0.0  # a foreign claim's lease the retries must wait out

    @property
    def first(self) -> Uploaded:
        return self.batch.objects[0]

    def gets(self, *objects: Uploaded) -> Callable[[Request], bool]:
        """GETs of these objects (every object GET when none are named)."""
        names = {f"{o.bucket}/{o.key}" for o in objects}
        return lambda r: r.is_object_get and (not names or r.key in names)

    def claim_for_someone_else(self, objects: list[Uploaded], *, lease_until: float) -> None:
        for obj in objects:
            ref = ObjectRef(obj.bucket, obj.key, len(obj.body), obj.etag, obj.version_id, obj.sequencer)
            self.world.dynamodb.put_item(TableName=self.batch.table, Item={
                "ObjectID": {"S": object_id(ref)}, "Owner": {"S": "someone-else"},
                "LeaseUntil": {"N": f"{lease_until:.3f}"}, "ExpiresAt": {"N": str(int(time.time()) + 3600)},
                "ArchiveKey": {"S": f"{self.batch.prefix}/2020/01/01/00/never-published.tar.zst"}})


def per_key(request: Request) -> str:
    return request.key


def operation(name: str) -> Callable[[Request], bool]:
    return lambda r: r.operation == name


def method(name: str, *, query: str = "") -> Callable[[Request], bool]:
    return lambda r: r.method == name and query in r.query


@dataclass(frozen=True)
class Cell:
    dependency: str
    fault: str
    step: str
    arrange: Callable[[Live], None]
    first: str  # all | none | faulty | partial | killed | timeout | refused (raised, nothing written)
    at_once: str  # all | busy: what an immediate redelivery of the failed messages gets
    objects: int = 8
    big: tuple[int, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    timeout_s: float = 6.0
    repair: Callable[[Live], None] | None = None
    ci: bool = False

    @property
    def name(self) -> str:
        return f"{self.dependency}: {self.fault} @ {self.step}"


@dataclass
class Row:
    cell: Cell
    first: str = ""
    at_once: str = "-"
    after_deadline: str = "-"
    archives: int = 0
    lost: int = 0
    duplicated: int = 0
    partial: int = 0
    leaks: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        return "ok" if not self.problems else "FAIL"


def _acked(result: InvocationResult, ids: list[str]) -> str:
    if result.outcome != "ok":
        return result.outcome
    return f"{len(ids) - len(result.failed_ids)}/{len(ids)} acked"


def run_cell(world: World, cell: Cell, log_dir: Path) -> Row:
    row = Row(cell)
    started = time.monotonic()
    rng = random.Random(cell.name)
    with FaultProxy(world.moto_url, name="aws") as aws, FaultProxy(world.moto_url, name="s3") as s3, \
            FaultProxy(world.minio_url, name="minio") as minio:
        batch = new_batch(world, rng, objects=cell.objects, big=cell.big, prefix="faults", env=dict(cell.env))
        batch.env.update(AWS_ENDPOINT_URL=aws.url, AWS_ENDPOINT_URL_S3=s3.url)
        world.set_secret(batch.secret, endpoint_url=minio.url)
        live = Live(world=world, batch=batch, aws=aws, s3=s3, minio=minio)
        cell.arrange(live)
        ids = [m.message_id for m in batch.messages]
        function = Function(batch.env, log_dir=log_dir).start()
        try:
            first = function.invoke(batch.event(), timeout_s=cell.timeout_s, plan=live.plan)
            row.first = _acked(first, ids)
            _check_first(cell, live, first, ids, row)
            scanned = batch.scan()
            row.partial = len(scanned.problems)
            row.duplicated = len(scanned.duplicates())
            row.problems += [f"after the faulty delivery: {p}" for p in scanned.problems]
            if scanned.duplicates():
                row.problems.append(f"archived twice: {scanned.duplicates()}")
            # Repair, then deliver what failed again at once.
            for proxy in (aws, s3, minio):
                proxy.clear()
                if proxy._server is None:
                    proxy.up()
            if cell.repair:
                cell.repair(live)
            left = ids if first.outcome != "ok" else first.failed_ids
            results = [first]
            if left:
                if not function.alive:
                    function.close()
                    function = Function(batch.env, log_dir=log_dir).start()
                pending = [m for m in batch.messages if m.message_id in left]
                retry = function.invoke(batch.event(pending, again=True), timeout_s=cell.timeout_s)
                results.append(retry)
                row.at_once = _acked(retry, left)
                busy = retry.outcome != "ok" or bool(retry.failed_ids)
                if (cell.at_once == "busy") != busy:
                    row.problems.append(f"retry at once: expected {cell.at_once}, got {row.at_once}")
                left = retry.failed_ids if retry.outcome == "ok" else left
                if left:
                    time.sleep(max(0.0, max(first.deadline, live.lease_until) + 1 - time.time()))
                    pending = [m for m in batch.messages if m.message_id in left]
                    late = function.invoke(batch.event(pending, again=True), timeout_s=cell.timeout_s)
                    results.append(late)
                    row.after_deadline = _acked(late, left)
                    if late.outcome != "ok" or late.failed_ids:
                        row.problems.append(f"after the deadline: {row.after_deadline} {late.error or ''}")
        finally:
            function.close()
        for result in results:
            if result.outcome == "ok" and (result.leaks.get("threads") or result.leaks.get("children")):
                row.leaks += 1
                row.problems.append(f"leaked: {result.leaks}")
        expected = [o for o in batch.objects if o not in live.missing]
        final = batch.scan()
        row.archives = len(final.archives)
        row.lost = sum(1 for o in expected if final.copies.get(o.identity, 0) == 0)
        row.duplicated = max(row.duplicated, len(final.duplicates()))
        row.problems += batch.problems(expected=expected)
    row.seconds = time.monotonic() - started
    return row


def _check_first(cell: Cell, live: Live, first: InvocationResult, ids: list[str], row: Row) -> None:
    failed = set(first.failed_ids)
    faulty_keys = {(o.bucket, o.key) for o in live.faulty}
    faulty_messages = {m.message_id for m in live.batch.messages
                       if any((b, k) in faulty_keys for b, k in _named(m.body))}
    if cell.first in ("killed", "timeout"):
        ok = first.outcome == cell.first
    elif cell.first == "refused":  # the invocation raised before anything was written
        ok = first.outcome == "error" and not live.batch.scan().archives
    elif first.outcome != "ok":
        ok = False
    elif cell.first == "all":
        ok = not failed
    elif cell.first == "none":
        ok = failed == set(ids)
    elif cell.first == "faulty":
        ok = bool(faulty_messages) and failed == faulty_messages
    elif cell.first == "partial":
        ok = 0 < len(failed) < len(ids)
    else:
        raise ValueError(cell.first)
    if not ok:
        row.problems.append(f"first delivery: expected {cell.first}, got {row.first} "
                            f"(failed {len(failed)}: {first.error or ''})")


def _named(body: str) -> list[tuple[str, str]]:
    return [(r["s3"]["bucket"]["name"], unquote_plus(r["s3"]["object"]["key"])) for r in json.loads(body)["Records"]]


# --- the cells -------------------------------------------------------------------------------------

def _get_always(fault: Fault) -> Callable[[Live], None]:
    def arrange(live: Live) -> None:
        live.faulty = [live.first]
        live.s3.add(live.gets(live.first), fault)
    return arrange


def _streamed_cut(always: bool) -> Callable[[Live], None]:
    def arrange(live: Live) -> None:
        big = live.batch.objects[-1]
        live.s3.add(live.gets(big), Fault("truncate", fraction=0.3), times=1)
        if always:
            live.faulty = [big]  # staged whole before its member: only its message fails
            live.s3.add(live.gets(big), Fault("truncate", fraction=0.0))
    return arrange


def _streamed_slow(live: Live) -> None:
    big = live.batch.objects[-1]
    live.faulty = [big]
    live.s3.add(live.gets(big), Fault("slow", chunk=64 * 1024, pause=0.1))  # ~15 s for 9 MiB


def _missing(live: Live) -> None:
    live.missing = [live.first]
    live.s3.add(live.gets(live.first), s3_error(404, "NoSuchKey"))


def _release_throttled(live: Live) -> None:
    live.faulty = [live.first]
    live.s3.add(live.gets(live.first), s3_error(500, "InternalError"))
    live.plan = [raise_at("claims.delete_item.before", "ddb_throttle", times=0)]


def _live_claim(live: Live) -> None:
    live.faulty = live.batch.objects[:2]
    live.lease_until = time.time() + 5
    live.claim_for_someone_else(live.faulty, lease_until=live.lease_until)


def _expired_claim(live: Live) -> None:
    live.claim_for_someone_else(live.batch.objects[:3], lease_until=time.time() - 60)


def _wrong_key(live: Live) -> None:
    live.world.set_secret(live.batch.secret, endpoint_url=live.minio.url, secret_key="not-the-right-secret-key")


def _right_key(live: Live) -> None:
    # Rotated in Secrets Manager only: the warm container must pick it up by itself.
    live.world.set_secret(live.batch.secret, endpoint_url=live.minio.url)


def _plan(*rules: Rule) -> Callable[[Live], None]:
    def arrange(live: Live) -> None:
        live.plan = list(rules)
    return arrange


def _proxy(which: str, match: Callable[[Request], bool], fault: Fault, *, times: int | None = None,
           per: Callable[[Request], str] | None = None) -> Callable[[Live], None]:
    def arrange(live: Live) -> None:
        proxy: FaultProxy = getattr(live, which)
        target = match if which != "s3" else (lambda r: r.is_object_get and match(r))
        proxy.add(target, fault, times=times, per=per)
    return arrange


def _down(which: str) -> Callable[[Live], None]:
    def arrange(live: Live) -> None:
        getattr(live, which).down()
    return arrange


def ANY(request: Request) -> bool:
    return True


MULTIPART = (("MULTIPART_PART_BYTES", str(5 * MiB)),)

CELLS = [
    # S3, the source
    Cell("S3 source", "503 SlowDown on the first 2 GETs of each object", "fetch",
         _proxy("s3", ANY, slow_down(), times=2, per=per_key), "all", "all", ci=True),
    Cell("S3 source", "500 InternalError on every GET of one object", "fetch",
         _get_always(s3_error(500, "InternalError")), "faulty", "all", ci=True),
    Cell("S3 source", "503 SlowDown on every GET of one object", "fetch",
         _get_always(slow_down()), "faulty", "all", timeout_s=8),
    Cell("S3 source", "403 AccessDenied on one object", "fetch",
         _get_always(s3_error(403, "AccessDenied")), "faulty", "all"),
    Cell("S3 source", "connection reset on the first GET of each object", "fetch",
         _proxy("s3", ANY, Fault("reset"), times=1, per=per_key), "all", "all"),
    Cell("S3 source", "body cut short on the first GET of each object", "fetch",
         _proxy("s3", ANY, Fault("truncate", fraction=0.5), times=1, per=per_key), "all", "all", ci=True),
    Cell("S3 source", "body cut short on every GET of one object", "fetch",
         _get_always(Fault("truncate", fraction=0.5)), "faulty", "all"),
    Cell("S3 source", "slow bodies (512 B every 20 ms)", "fetch",
         _proxy("s3", ANY, Fault("slow", chunk=512, pause=0.02)), "all", "all"),
    Cell("S3 source", "version gone (404) for one object", "fetch", _missing, "all", "all", ci=True),
    Cell("S3 source", "9 MiB streamed body cut mid-way once", "fetch (large body, staged)",
         _streamed_cut(always=False), "all", "all", objects=4, big=(9 * MiB,)),
    Cell("S3 source", "9 MiB streamed body cut on every GET", "fetch (large body, staged)",
         _streamed_cut(always=True), "faulty", "all", objects=4, big=(9 * MiB,), ci=True),
    # One GET at a time: the small objects are all in before the large head arrives.
    Cell("S3 source", "9 MiB streamed body slower than the deadline", "fetch (large body, staged)",
         _streamed_slow, "faulty", "all", objects=4, big=(9 * MiB,), env=(("MAX_FETCH_WORKERS", "1"),)),
    Cell("S3 source", "unreachable (connection refused)", "fetch", _down("s3"), "none", "all"),
    # DynamoDB, the claims
    Cell("DynamoDB", "throttled (HTTP) on the first 2 claim calls", "claim",
         _proxy("aws", operation("PutItem"), json_error(400, "ProvisionedThroughputExceededException"),
                times=2), "all", "all", ci=True),
    Cell("DynamoDB", "500 InternalServerError on the first 2 claim calls", "claim",
         _proxy("aws", operation("PutItem"), json_error(500, "InternalServerError"), times=2), "all", "all"),
    Cell("DynamoDB", "throttled past every retry", "claim",
         _plan(raise_at("claims.put_item.before", "ddb_throttle", times=0)), "none", "all", ci=True),
    Cell("DynamoDB", "500 InternalServerError past every retry", "claim",
         _plan(raise_at("claims.put_item.before", "ddb_internal", times=0)), "none", "all"),
    Cell("DynamoDB", "access denied", "claim",
         _plan(raise_at("claims.put_item.before", "ddb_access_denied", times=0)), "none", "all"),
    Cell("DynamoDB", "throttled past every retry", "release", _release_throttled, "faulty", "busy"),
    Cell("DynamoDB", "condition fails: another invocation's live claim", "claim", _live_claim, "faulty", "busy",
         ci=True),
    Cell("DynamoDB", "condition fails: a dead invocation's expired claim", "claim (takeover)", _expired_claim,
         "all", "all"),
    # Secrets Manager, the MinIO secret
    # The role may not read the secret: a configuration error, raised before any claim.
    Cell("Secrets Manager", "access denied", "start (secret)",
         _proxy("aws", operation("GetSecretValue"), json_error(400, "AccessDeniedException", service=SECRETS)),
         "refused", "all", ci=True),
    Cell("Secrets Manager", "503 on the first 2 calls", "publish (secret)",
         _proxy("aws", operation("GetSecretValue"), json_error(503, "ServiceUnavailable", service=SECRETS),
                times=2), "all", "all"),
    # MinIO, the target
    Cell("MinIO", "down (connection refused)", "publish", _down("minio"), "none", "all", timeout_s=10, ci=True),
    Cell("MinIO", "500 InternalError on every PUT", "publish",
         _proxy("minio", method("PUT"), s3_error(500, "InternalError")), "none", "all", ci=True),
    # The first PUT is the manifest sidecar: a lost answer there proves nothing was
    # published (the archive's PUT was never sent), so the claims are released.
    Cell("MinIO", "PUT stored but every answer lost (500)", "publish",
         _proxy("minio", method("PUT"), Fault("answer_lost", status=500, body=s3_error(500, "InternalError").body)),
         "none", "all"),
    Cell("MinIO", "connection reset mid-upload, once", "publish",
         _proxy("minio", method("PUT"), Fault("reset", after_body=2000), times=1), "all", "all", ci=True),
    Cell("MinIO", "connection reset mid-upload, every time", "publish",
         _proxy("minio", method("PUT"), Fault("reset", after_body=2000)), "none", "all"),
    Cell("MinIO", "connection reset mid-part, every time", "publish (multipart)",
         _proxy("minio", method("PUT", query="partNumber"), Fault("reset", after_body=MiB)), "none", "all",
         objects=2, big=(int(2.2 * MiB), int(2.2 * MiB), int(1.5 * MiB)), env=MULTIPART),
    Cell("MinIO", "wrong secret key, then rotated", "publish", _wrong_key, "none", "all", repair=_right_key,
         ci=True),
    # The PUT was answered 200 with the server's own checksum check: published.
    Cell("MinIO", "HEAD fails (500) after the PUT", "verify",
         _proxy("minio", method("HEAD"), s3_error(500, "InternalError")), "all", "all", timeout_s=8, ci=True),
    Cell("MinIO", "every request delayed 0.5 s", "publish",
         _proxy("minio", ANY, Fault("delay", seconds=0.5)), "all", "all", timeout_s=8),
    # /tmp, the archive spool
    Cell("/tmp", "full before the archive starts", "archive",
         _plan(Rule("spool.free_space", "full")), "none", "all", env=(("SPOOL_MAX_MEMORY_BYTES", "0"),)),
    Cell("/tmp", "full mid-archive", "archive",
         _plan(Rule("spool.free_space", "full", nth=2, times=0)), "none", "all",
         env=(("SPOOL_MAX_MEMORY_BYTES", "0"), ("COMPRESSION", "none")), ci=True),
    # the deadline
    Cell("deadline", "arrives mid-archive", "archive", _plan(sleep_at("fetch.item", 0.3)), "partial", "all",
         objects=24, timeout_s=8, env=(("DEADLINE_RESERVE_MS", "4000"),), ci=True),
    Cell("deadline", "too close to start the upload", "publish",
         _plan(Rule("publish.before", "sleep_until", seconds=0.2)), "none", "all", timeout_s=4.5),
    # the process itself
    Cell("process", "SIGKILL", "fetch", _plan(kill_at("fetch.item", nth=3)), "killed", "busy"),
    Cell("process", "SIGKILL", "after publish", _plan(kill_at("publish.after")), "killed", "all"),
    Cell("process", "SIGKILL", "claim", _plan(kill_at("claims.put_item.after", nth=10)), "killed", "busy",
         objects=30),
]

SLOW_CELLS = [
    # Refused connections are retried by the claim store (~5 s of backoff), then the batch
    # fails as a whole: every message is reported, nothing waits for the deadline.
    Cell("DynamoDB", "unreachable (connection refused)", "claim", _down("aws"), "none", "all", timeout_s=15),
    # The secret never read, no archive request left: proven not stored, so the claims are
    # released and a redelivery at once archives everything.
    Cell("Secrets Manager", "503 on every call", "publish (secret)",
         _proxy("aws", operation("GetSecretValue"), json_error(503, "ServiceUnavailable", service=SECRETS)),
         "none", "all", timeout_s=45),
]


def print_matrix(rows: list[Row], say: Callable[[str], None]) -> None:
    header = (f"{'dependency':16} {'fault':52} {'step':30} {'first delivery':15} {'retry at once':14} "
              f"{'after deadline':15} {'arch':>4} {'lost':>4} {'dup':>3} {'part':>4} {'leak':>4}  verdict")
    say("")
    say("fault matrix (fault x step -> outcome)")
    say(header)
    say("-" * len(header))
    for r in rows:
        c = r.cell
        say(f"{c.dependency:16} {c.fault[:52]:52} {c.step[:30]:30} {r.first:15} {r.at_once:14} {r.after_deadline:15} "
            f"{r.archives:4d} {r.lost:4d} {r.duplicated:3d} {r.partial:4d} {r.leaks:4d}  {r.verdict}")
    say("-" * len(header))
    say(f"{len(rows)} cells, {sum(r.verdict == 'ok' for r in rows)} ok; lost {sum(r.lost for r in rows)}, "
        f"archived twice {sum(r.duplicated for r in rows)}, partial archives {sum(r.partial for r in rows)}, "
        f"leaks {sum(r.leaks for r in rows)}; claims released at once in "
        f"{sum(r.cell.at_once == 'all' and r.at_once != '-' for r in rows)}, left to expire in "
        f"{sum(r.cell.at_once == 'busy' for r in rows)}; dependencies "
        f"{len({r.cell.dependency for r in rows})}")


def run_matrix(world: World, cells: list[Cell], tmp_path: Path, say: Callable[[str], None], *,
               workers: int = 4) -> None:
    lock = threading.Lock()

    def one(index_cell: tuple[int, Cell]) -> Row:
        index, cell = index_cell
        try:
            row = run_cell(world, cell, tmp_path / f"cell-{index}")
        except Exception as e:  # one broken cell must not hide the others' outcomes
            row = Row(cell, first="harness error", problems=[f"{type(e).__name__}: {e}"])
        with lock:
            say(f"  {cell.name}: {row.verdict} ({row.seconds:.1f} s)")
        return row

    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = list(pool.map(one, enumerate(cells)))
    print_matrix(rows, say)
    failures = {r.cell.name: r.problems for r in rows if r.problems}
    assert failures == {}


@pytest.fixture
def say(request: pytest.FixtureRequest) -> Callable[[str], None]:
    return terminal(request)


def test_fault_matrix(world: World, tmp_path: Path, say: Callable[[str], None]) -> None:
    run_matrix(world, [c for c in CELLS if c.ci], tmp_path, say)


@pytest.mark.slow
def test_fault_matrix_full(world: World, tmp_path: Path, say: Callable[[str], None]) -> None:
    run_matrix(world, CELLS + SLOW_CELLS, tmp_path, say)
