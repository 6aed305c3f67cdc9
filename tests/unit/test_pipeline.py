"""The pipeline's decisions, with in-process fakes for S3 and MinIO and moto for DynamoDB.

Every archive is read back: decompressed, every member compared with its source bytes,
the manifest checked against the objects. The fake MinIO answers publish with the outcome
it is told (published, not published, unknown, and whether an unknown publish landed) and
counts the listings recovery asks for; ClaimStore.calls counts the DynamoDB requests.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import tarfile
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

import boto3
import pytest
import zstandard
from moto import mock_aws

from aggregator.base.deadline import Deadline
from aggregator.base.errors import ClaimStoreError, DeliveryError, FetchError
from aggregator.base.events import ObjectRef
from aggregator.base.names import object_id
from aggregator.base.objects import Failed, Fetched, FetchResult, Missing, ObjectHead, Streamed
from aggregator.base.settings import Settings
from aggregator.claims.store import ClaimStore
from aggregator.delivery.publish import Publication, PublishOutcome
from aggregator.fetch import FetchCancelled
from aggregator.pipeline import BatchReport, Dependencies, Message, run_batch
from tests.support.tables import create_claims_table, scan_claims

TABLE = "claims"
LAST_MODIFIED = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
GRACE = 30  # LEASE_GRACE_SECONDS's default: a lease ends at the deadline + 30 s
PUBLISHED, NOT_PUBLISHED, UNKNOWN = PublishOutcome.PUBLISHED, PublishOutcome.NOT_PUBLISHED, PublishOutcome.UNKNOWN


@dataclass
class FakeClock:
    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeS3:
    """Objects by (bucket, key, identity); refs not stored are Missing."""

    bodies: dict[tuple[str, str, str], bytes] = field(default_factory=dict)
    failing: set[str] = field(default_factory=set)  # keys whose GET fails
    broken_stream: set[str] = field(default_factory=set)  # keys whose body breaks mid-way
    streamed: set[str] = field(default_factory=set)  # keys handed over as Streamed, whole
    requested: list[str] = field(default_factory=list)  # keys asked for, in order
    calls: int = 0

    def put(self, bucket: str, key: str, body: bytes, *, etag: str | None = None, sequencer: str = "01") -> ObjectRef:
        etag = etag or hashlib.md5(body).hexdigest()
        ref = ObjectRef(bucket=bucket, key=key, size=len(body), etag=etag, version_id=None, sequencer=sequencer)
        self.bodies[(bucket, key, ref.identity)] = body
        return ref

    @contextlib.contextmanager
    def fetch(self, refs: Sequence[ObjectRef], *, source: object, workers: int, processes: int, queue_depth: int,
              cancel: threading.Event) -> Iterator[Iterator[FetchResult]]:
        self.calls += 1
        yield (self._one(ref) for ref in refs)

    def _one(self, ref: ObjectRef) -> FetchResult:
        self.requested.append(ref.key)
        body = self.bodies.get((ref.bucket, ref.key, ref.identity))
        if ref.key in self.failing:
            return Failed(ref, FetchError("503 SlowDown"))
        if body is None:
            return Missing(ref)
        head = ObjectHead(size=len(body), last_modified=LAST_MODIFIED, etag=ref.etag or "", version_id=None)
        if ref.key in self.broken_stream:
            def chunks() -> Iterator[bytes]:
                yield body[: len(body) // 2]
                raise FetchError("connection reset mid-body")
            return Streamed(ref, head, chunks())
        if ref.key in self.streamed:
            return Streamed(ref, head, iter([body[i:i + 1000] for i in range(0, len(body), 1000)]))
        return Fetched(ref, head, body)


@dataclass
class FakeMinio:
    """An atomic object store with manifest sidecars; publish says what it is told to.

    ``outcome`` is what the next publishes return; with UNKNOWN, ``lands`` says whether the
    archive was stored anyway (the answer was lost) or not (the request never completed).
    """

    objects: dict[str, tuple[bytes, dict[str, str]]] = field(default_factory=dict)
    sidecars: dict[str, bytes] = field(default_factory=dict)
    outcome: PublishOutcome = PublishOutcome.PUBLISHED
    lands: bool = False
    unreachable: bool = False
    publishes: list[str] = field(default_factory=list)
    listings: Counter[str] = field(default_factory=Counter)
    deadlines: list[Deadline | None] = field(default_factory=list)

    def publish(self, *, key: str, source: BinaryIO, size: int, sha256_hex: str, manifest: bytes,
                part_bytes: int, deadline: Deadline | None = None) -> Publication:
        self.publishes.append(key)
        self.deadlines.append(deadline)
        data = source.read()
        assert len(data) == size and hashlib.sha256(data).hexdigest() == sha256_hex
        json.loads(manifest)
        if self.outcome is PUBLISHED or (self.outcome is UNKNOWN and self.lands):
            self.sidecars[key] = manifest
            self.objects[key] = (data, {"sha256_checksum": sha256_hex})
        if self.outcome is PUBLISHED:
            return Publication(PUBLISHED, parts=1)
        return Publication(self.outcome, "told to")

    def listing(self, key: str) -> dict[str, Any] | None:
        self.listings[key] += 1
        if self.unreachable:
            raise DeliveryError("connection refused")
        if key not in self.objects:
            return None
        manifest: dict[str, Any] = json.loads(self.sidecars[key])
        return manifest

    def open_object(self, key: str) -> BinaryIO | None:
        if self.unreachable:
            raise DeliveryError("connection refused")
        entry = self.objects.get(key)
        return io.BytesIO(entry[0]) if entry else None


def read_archive(data: bytes) -> tuple[dict[str, bytes], dict[str, Any]]:
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    members: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        names = tar.getnames()
        for info in tar.getmembers():
            extracted = tar.extractfile(info)
            assert extracted is not None
            members[info.name] = extracted.read()
    assert names[-1] == "MANIFEST.json"
    manifest = json.loads(members.pop("MANIFEST.json"))
    return members, manifest


def s3_body(ref: ObjectRef, *, event_time: float | None = None) -> str:
    record: dict[str, Any] = {
        "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": ref.bucket},
               "object": {"key": ref.key.replace(" ", "+"), "size": ref.size, "eTag": ref.etag,
                          "sequencer": ref.sequencer}},
    }
    if event_time is not None:
        record["eventTime"] = datetime.fromtimestamp(event_time, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return json.dumps({"Records": [record]})


@pytest.fixture
def env() -> Iterator[dict[str, Any]]:
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="eu-west-2")
        create_claims_table(dynamodb, TABLE)
        clock = FakeClock()
        s3, minio = FakeS3(), FakeMinio()
        settings = Settings.from_env({"IDEMPOTENCY_TABLE_NAME": TABLE, "MINIO_SECRET_ID": "minio",
                                      "LEASE_GRACE_SECONDS": str(GRACE)})

        def store() -> ClaimStore:
            return ClaimStore(dynamodb, TABLE, ttl_seconds=3600, clock=clock)

        def deps(**overrides: Any) -> Dependencies:
            values: dict[str, Any] = dict(
                settings=settings, claims=store(), target=minio, source=lambda: None, fetch=s3.fetch,
                logger=logging.getLogger("test"), clock=clock)
            values.update(overrides)
            return Dependencies(**values)

        yield {"dynamodb": dynamodb, "clock": clock, "s3": s3, "minio": minio, "deps": deps, "store": store,
               "settings": settings}


def run(env: dict[str, Any], messages: list[Message], *, owner: str = "inv-1", seconds: float = 60,
        **over: Any) -> BatchReport:
    deps = env["deps"](**over)
    deadline = Deadline(at=env["clock"].now + seconds, grace=GRACE, clock=env["clock"])
    return run_batch(messages, deps=deps, deadline=deadline, owner=owner)


def claims_of(env: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return scan_claims(env["dynamodb"], TABLE)


def messages_for(refs: Sequence[ObjectRef]) -> list[Message]:
    return [Message(f"m{i}", s3_body(ref)) for i, ref in enumerate(refs)]


def past_the_lease(env: dict[str, Any], seconds: float = 60) -> None:
    """Move the clock past the lease of a batch run with ``seconds`` (deadline + grace)."""
    env["clock"].now += seconds + GRACE + 0.001


# --- one archive per batch ------------------------------------------------------------------


def test_one_archive_for_the_whole_batch_and_every_member_round_trips(env: dict[str, Any]) -> None:
    s3 = env["s3"]
    refs = [s3.put("landing", f"dir/file {i}.json", f'{{"n": {i}}}'.encode() * (i + 1)) for i in range(5)]

    outcome = run(env, messages_for(refs))

    assert outcome.failed_message_ids == []
    assert outcome.counts["ObjectsArchived"] == 5
    (key, (data, meta)), = env["minio"].objects.items()
    assert key == outcome.archive_key and key.endswith(".tar.zst") and key.startswith("archives/")
    assert meta["sha256_checksum"] == hashlib.sha256(data).hexdigest()
    members, manifest = read_archive(data)
    assert [o["key"] for o in manifest["objects"]] == [r.key for r in refs]
    assert json.loads(env["minio"].sidecars[key]) == manifest  # the sidecar is the archive's manifest
    for ref, entry in zip(refs, manifest["objects"], strict=True):
        body = s3.bodies[(ref.bucket, ref.key, ref.identity)]
        assert members[entry["member"]] == body
        assert entry["sha256"] == hashlib.sha256(body).hexdigest()
    claims = claims_of(env)
    assert set(claims) == {object_id(r) for r in refs}
    assert {c["ArchiveKey"] for c in claims.values()} == {key}
    assert {c["Owner"] for c in claims.values()} == {"inv-1"}
    assert {c["LeaseUntil"] for c in claims.values()} == {env["clock"].now + 60 + GRACE}
    assert "State" not in next(iter(claims.values()))  # no commit write any more


def test_a_new_object_costs_one_write_and_the_publish_gets_the_deadline(env: dict[str, Any]) -> None:
    refs = [env["s3"].put("landing", f"k{i}", b"v" * (i + 1)) for i in range(4)]
    store = env["store"]()
    outcome = run(env, messages_for(refs), claims=store)
    assert outcome.failed_message_ids == []
    assert store.calls == 4  # one conditional PutItem each, nothing else
    (deadline,) = env["minio"].deadlines
    assert deadline is not None and deadline.at == env["clock"].now + 60


def test_new_upload_of_identical_bytes_is_archived_again(env: dict[str, Any]) -> None:
    first = env["s3"].put("landing", "same.txt", b"same", sequencer="01")
    run(env, [Message("m1", s3_body(first))])
    second = env["s3"].put("landing", "same.txt", b"same", sequencer="02")

    outcome = run(env, [Message("m2", s3_body(second))], owner="inv-2")

    assert outcome.counts["ObjectsArchived"] == 1 and len(env["minio"].objects) == 2


def test_same_object_twice_in_a_batch_is_archived_once(env: dict[str, Any]) -> None:
    ref = env["s3"].put("landing", "twice.txt", b"x")
    outcome = run(env, [Message("m1", s3_body(ref)), Message("m2", s3_body(ref))])
    _, manifest = read_archive(next(iter(env["minio"].objects.values()))[0])
    assert outcome.failed_message_ids == [] and len(manifest["objects"]) == 1


def test_no_new_object_writes_no_archive(env: dict[str, Any]) -> None:
    outcome = run(env, [Message("t", json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"}))])
    assert outcome.failed_message_ids == [] and env["minio"].objects == {} and env["s3"].calls == 0


# --- redelivery and recovery ---------------------------------------------------------------


@pytest.mark.parametrize("later", [5.0, 60 + GRACE + 1.0], ids=["lease-live", "lease-over"])
def test_redelivery_after_publish_is_a_duplicate_with_no_write_but_the_failed_put(
        env: dict[str, Any], later: float) -> None:
    ref = env["s3"].put("landing", "a.txt", b"hello")
    first = run(env, [Message("m1", s3_body(ref))])
    before, fetches = claims_of(env), env["s3"].calls
    env["clock"].now += later

    store = env["store"]()
    outcome = run(env, [Message("m1-again", s3_body(ref))], owner="inv-2", claims=store)

    assert outcome.failed_message_ids == [] and outcome.archive_key is None
    assert outcome.counts["DuplicatesSkipped"] == 1
    assert store.calls == 1  # the failed conditional PutItem, and no other DynamoDB request
    assert claims_of(env) == before  # still inv-1's claim naming its archive
    assert env["minio"].listings == {first.archive_key: 1}
    assert len(env["minio"].objects) == 1 and env["s3"].calls == fetches


def test_a_live_holder_whose_archive_is_not_published_makes_the_message_wait(env: dict[str, Any]) -> None:
    ref = env["s3"].put("landing", "a.txt", b"a")
    env["store"]().claim([object_id(ref)], owner="other", lease_until=env["clock"].now + 600,
                         archive_key="archives/x.tar.zst")
    outcome = run(env, [Message("m1", s3_body(ref))])
    assert outcome.failed_message_ids == ["m1"] and env["minio"].objects == {}
    assert claims_of(env)[object_id(ref)]["Owner"] == "other"
    assert env["s3"].calls == 0


def test_a_live_holder_whose_archive_does_not_list_the_object_makes_the_message_wait(env: dict[str, Any]) -> None:
    other, ref = env["s3"].put("landing", "other.txt", b"o"), env["s3"].put("landing", "a.txt", b"a")
    published = run(env, [Message("m0", s3_body(other))], owner="inv-0").archive_key
    assert published is not None
    env["store"]().claim([object_id(ref)], owner="other", lease_until=env["clock"].now + 600, archive_key=published)
    outcome = run(env, [Message("m1", s3_body(ref))])
    assert outcome.failed_message_ids == ["m1"] and len(env["minio"].objects) == 1
    assert claims_of(env)[object_id(ref)]["Owner"] == "other"


def test_a_takeover_before_the_lease_ends_is_refused(env: dict[str, Any]) -> None:
    ref = env["s3"].put("landing", "a.txt", b"a")
    lease = env["clock"].now + 10
    env["store"]().claim([object_id(ref)], owner="dead", lease_until=lease, archive_key="archives/never.tar.zst")
    env["clock"].now = lease - 0.001  # just before the lease's end: still the holder's
    assert run(env, [Message("m1", s3_body(ref))]).failed_message_ids == ["m1"]
    env["clock"].now = lease + 0.001
    outcome = run(env, [Message("m1", s3_body(ref))], owner="inv-2")
    assert outcome.failed_message_ids == [] and outcome.counts["ObjectsArchived"] == 1


def test_after_the_lease_a_holder_without_archive_is_taken_over_and_archived(env: dict[str, Any]) -> None:
    ref = env["s3"].put("landing", "a.txt", b"a")
    env["store"]().claim([object_id(ref)], owner="dead", lease_until=env["clock"].now + 10,
                         archive_key="archives/never.tar.zst")
    env["clock"].now += 11

    outcome = run(env, [Message("m1", s3_body(ref))], owner="inv-2")

    assert outcome.failed_message_ids == [] and outcome.counts["ObjectsArchived"] == 1
    claim = claims_of(env)[object_id(ref)]
    assert claim["Owner"] == "inv-2" and claim["ArchiveKey"] == outcome.archive_key
    assert env["minio"].listings == {"archives/never.tar.zst": 1}


def test_after_the_lease_a_holder_whose_archive_does_not_list_the_object_is_taken_over(env: dict[str, Any]) -> None:
    other, ref = env["s3"].put("landing", "other.txt", b"o"), env["s3"].put("landing", "a.txt", b"a")
    published = run(env, [Message("m0", s3_body(other))], owner="inv-0").archive_key
    assert published is not None
    env["store"]().claim([object_id(ref)], owner="dead", lease_until=env["clock"].now + 10, archive_key=published)
    env["clock"].now += 11

    outcome = run(env, [Message("m1", s3_body(ref))], owner="inv-2")

    assert outcome.failed_message_ids == [] and outcome.counts["ObjectsArchived"] == 1
    assert claims_of(env)[object_id(ref)]["Owner"] == "inv-2"
    assert len(env["minio"].objects) == 2


def test_recovery_reads_each_archive_once_per_batch(env: dict[str, Any]) -> None:
    refs = [env["s3"].put("landing", f"k{i}", b"v" * (i + 1)) for i in range(6)]
    first = run(env, messages_for(refs[:3]), owner="inv-a")
    second = run(env, messages_for(refs[3:]), owner="inv-b")
    past_the_lease(env)

    outcome = run(env, messages_for(refs), owner="inv-c")

    assert outcome.failed_message_ids == [] and outcome.counts["DuplicatesSkipped"] == 6
    assert env["minio"].listings == {first.archive_key: 1, second.archive_key: 1}
    assert len(env["minio"].objects) == 2


def test_recovery_that_cannot_read_the_archive_is_undecided_and_touches_nothing(env: dict[str, Any]) -> None:
    refs = [env["s3"].put("landing", f"k{i}", b"v" * (i + 1)) for i in range(2)]
    run(env, messages_for(refs))
    before, fetches = claims_of(env), env["s3"].calls
    past_the_lease(env)
    env["minio"].unreachable = True

    store = env["store"]()
    outcome = run(env, messages_for(refs), owner="inv-2", claims=store)

    assert sorted(outcome.failed_message_ids) == ["m0", "m1"]
    assert claims_of(env) == before and store.calls == 2  # the two failed PutItems only
    assert sum(env["minio"].listings.values()) == 1 and env["s3"].calls == fetches

    env["minio"].unreachable = False
    again = run(env, messages_for(refs), owner="inv-3")
    assert again.failed_message_ids == [] and again.counts["DuplicatesSkipped"] == 2
    assert len(env["minio"].objects) == 1  # never archived a second time


def test_a_concurrent_delivery_during_our_fetch_waits_and_we_publish_once(env: dict[str, Any]) -> None:
    s3 = env["s3"]
    refs = [s3.put("landing", f"k{i}", b"v") for i in range(3)]
    during: list[BatchReport] = []

    @contextlib.contextmanager
    def fetch_while_redelivered(refs_: Sequence[ObjectRef], **kwargs: Any) -> Iterator[Any]:
        # The same messages, delivered again while we hold the claims and nothing is published.
        during.append(run(env, messages_for(refs), owner="inv-2"))
        with s3.fetch(refs_, **kwargs) as results:
            yield results

    outcome = run(env, messages_for(refs), fetch=fetch_while_redelivered)

    assert sorted(during[0].failed_message_ids) == ["m0", "m1", "m2"]
    assert outcome.failed_message_ids == [] and len(env["minio"].objects) == 1
    assert {c["Owner"] for c in claims_of(env).values()} == {"inv-1"}


# --- the publish outcome -------------------------------------------------------------------


def test_not_published_releases_the_claims_and_a_retry_archives_at_once(env: dict[str, Any]) -> None:
    ref = env["s3"].put("landing", "a.txt", b"a")
    env["minio"].outcome = NOT_PUBLISHED
    outcome = run(env, [Message("m1", s3_body(ref))])
    assert outcome.failed_message_ids == ["m1"] and outcome.archive_key is None
    assert claims_of(env) == {} and env["minio"].objects == {}

    env["minio"].outcome = PUBLISHED
    assert run(env, [Message("m1", s3_body(ref))], owner="inv-2").failed_message_ids == []
    assert len(env["minio"].objects) == 1


class ReleaseFails(ClaimStore):
    def release(self, object_ids: Any, *, owner: str) -> list[str]:
        raise ClaimStoreError("DynamoDB unavailable")


def test_not_published_with_a_failed_release_waits_for_the_lease_and_is_taken_over(env: dict[str, Any]) -> None:
    ref = env["s3"].put("landing", "a.txt", b"a")
    env["minio"].outcome = NOT_PUBLISHED
    store = ReleaseFails(env["dynamodb"], TABLE, ttl_seconds=3600, clock=env["clock"])
    assert run(env, [Message("m1", s3_body(ref))], claims=store).failed_message_ids == ["m1"]
    assert claims_of(env)[object_id(ref)]["Owner"] == "inv-1"

    env["minio"].outcome = PUBLISHED
    past_the_lease(env)
    outcome = run(env, [Message("m1", s3_body(ref))], owner="inv-2")
    assert outcome.failed_message_ids == [] and outcome.counts["ObjectsArchived"] == 1


@pytest.mark.parametrize("lands", [False, True], ids=["never-landed", "landed-later"])
def test_unknown_keeps_the_claims_and_recovery_decides_after_the_lease(env: dict[str, Any], lands: bool) -> None:
    refs = [env["s3"].put("landing", f"k{i}", b"v" * (i + 1)) for i in range(3)]
    env["minio"].outcome, env["minio"].lands = UNKNOWN, lands

    first = run(env, messages_for(refs))

    assert sorted(first.failed_message_ids) == ["m0", "m1", "m2"] and first.archive_key is None
    assert first.counts["PublishOutcomeUnknown"] == 1
    (planned,) = env["minio"].publishes
    claims = claims_of(env)
    assert set(claims) == {object_id(r) for r in refs}  # kept, not released
    assert {(c["Owner"], c["ArchiveKey"]) for c in claims.values()} == {("inv-1", planned)}

    env["minio"].outcome = PUBLISHED
    env["clock"].now += 5  # the lease is live: busy unless the archive already shows the objects
    early = run(env, messages_for(refs), owner="inv-2")
    if lands:
        assert early.failed_message_ids == [] and early.counts["DuplicatesSkipped"] == 3
    else:
        assert sorted(early.failed_message_ids) == ["m0", "m1", "m2"]
        assert {c["Owner"] for c in claims_of(env).values()} == {"inv-1"}

    past_the_lease(env)
    later = run(env, messages_for(refs), owner="inv-3")

    assert later.failed_message_ids == []
    if lands:
        assert later.counts["DuplicatesSkipped"] == 3 and later.archive_key is None
        assert list(env["minio"].objects) == [planned]
    else:
        assert later.counts["ObjectsArchived"] == 3
        assert list(env["minio"].objects) == [later.archive_key]
        assert {c["Owner"] for c in claims_of(env).values()} == {"inv-3"}


# --- one bad object fails alone ------------------------------------------------------------


def test_malformed_message_fails_alone(env: dict[str, Any]) -> None:
    ref = env["s3"].put("landing", "ok.txt", b"ok")
    outcome = run(env, [Message("good", s3_body(ref)), Message("bad", "{not json"), Message("test",
                  json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"}))])
    assert outcome.failed_message_ids == ["bad"]
    assert outcome.counts["ObjectsArchived"] == 1 and outcome.counts["EventsIgnored"] == 1
    assert outcome.counts["MalformedMessages"] == 1


def test_an_identity_too_long_for_a_claim_key_is_malformed_alone(env: dict[str, Any]) -> None:
    small = env["s3"].put("landing", "small.txt", b"small")
    forged = ObjectRef("landing", "k", 1, "e" * 3000, None, "01")
    outcome = run(env, [Message("forged", s3_body(forged)), Message("ok", s3_body(small))])
    assert outcome.failed_message_ids == ["forged"] and outcome.counts["ObjectsArchived"] == 1


def test_missing_object_is_acknowledged_released_and_counted(env: dict[str, Any]) -> None:
    gone = ObjectRef("landing", "gone.txt", 3, "abc", None, "01")
    ref = env["s3"].put("landing", "here.txt", b"here")
    outcome = run(env, [Message("m-gone", s3_body(gone)), Message("m-here", s3_body(ref))])
    assert outcome.failed_message_ids == [] and outcome.counts["ObjectsMissing"] == 1
    _, manifest = read_archive(next(iter(env["minio"].objects.values()))[0])
    assert [o["key"] for o in manifest["objects"]] == ["here.txt"]
    assert object_id(gone) not in claims_of(env)


def test_failed_fetch_fails_its_message_and_releases_its_claim(env: dict[str, Any]) -> None:
    s3 = env["s3"]
    bad, good = s3.put("landing", "bad.txt", b"bad"), s3.put("landing", "good.txt", b"good")
    s3.failing.add("bad.txt")
    outcome = run(env, [Message("m-bad", s3_body(bad)), Message("m-good", s3_body(good))])
    assert outcome.failed_message_ids == ["m-bad"]
    assert object_id(bad) not in claims_of(env)
    assert object_id(good) in claims_of(env)

    s3.failing.clear()
    retry = run(env, [Message("m-bad", s3_body(bad))], owner="inv-2")
    assert retry.failed_message_ids == [] and retry.counts["ObjectsArchived"] == 1


def test_a_body_breaking_mid_member_fails_only_its_own_message_and_releases(env: dict[str, Any]) -> None:
    s3 = env["s3"]
    goods = [s3.put("landing", f"fine-{i}.txt", f"fine {i}".encode()) for i in range(5)]
    broken = s3.put("landing", "big.bin", b"B" * 1000)
    s3.broken_stream.add("big.bin")
    refs = [*goods[:2], broken, *goods[2:]]  # the broken body arrives between good ones
    outcome = run(env, messages_for(refs))

    assert outcome.failed_message_ids == ["m2"]
    assert outcome.counts["ObjectsArchived"] == 5
    (data, _), = env["minio"].objects.values()
    members, manifest = read_archive(data)
    assert members == {f"landing/fine-{i}.txt": f"fine {i}".encode() for i in range(5)}
    assert [o["key"] for o in manifest["objects"]] == [g.key for g in goods]
    claims = claims_of(env)
    assert object_id(broken) not in claims  # never in a published archive: released
    assert all(object_id(g) in claims for g in goods)


def test_a_large_body_received_whole_is_archived_with_its_hash(env: dict[str, Any]) -> None:
    s3 = env["s3"]
    big, small = s3.put("landing", "big.bin", bytes(range(256)) * 5000), s3.put("landing", "s.txt", b"s")
    s3.streamed.add("big.bin")
    outcome = run(env, messages_for([big, small]))

    assert outcome.failed_message_ids == []
    (data, _), = env["minio"].objects.values()
    members, manifest = read_archive(data)
    assert members == {"landing/big.bin": bytes(range(256)) * 5000, "landing/s.txt": b"s"}
    entry = next(o for o in manifest["objects"] if o["key"] == "big.bin")
    assert entry["sha256"] == hashlib.sha256(members["landing/big.bin"]).hexdigest()
    assert entry["size"] == 256 * 5000


def test_large_bodies_in_a_row_one_breaking_the_others_archived(env: dict[str, Any]) -> None:
    # Each large body is received while the one before is archived: the broken one in the
    # middle must cost only itself, and the last one received must still be archived.
    s3 = env["s3"]
    bodies = {f"big-{i}.bin": bytes([i]) * (3000 + i) for i in range(4)}
    refs = [s3.put("landing", key, body) for key, body in bodies.items()]
    s3.streamed.update(bodies)
    s3.broken_stream.add("big-2.bin")
    small = s3.put("landing", "small.txt", b"small")
    outcome = run(env, messages_for([*refs, small]))

    assert outcome.failed_message_ids == ["m2"]
    (data, _), = env["minio"].objects.values()
    members, manifest = read_archive(data)
    expected = {f"landing/{key}": body for key, body in bodies.items() if key != "big-2.bin"}
    assert members == {**expected, "landing/small.txt": b"small"}
    assert {o["key"]: o["sha256"] for o in manifest["objects"]} == {
        key.removeprefix("landing/"): hashlib.sha256(body).hexdigest() for key, body in members.items()}
    assert object_id(refs[2]) not in claims_of(env)


def test_the_deadline_cutting_a_large_body_fails_only_its_message(env: dict[str, Any]) -> None:
    s3 = env["s3"]
    goods = [s3.put("landing", f"fine-{i}.txt", b"fine") for i in range(3)]
    big = ObjectRef("landing", "big.bin", (8 << 20) + 1, "abc", None, "01")  # just over the stream threshold
    body_taken = threading.Event()

    @contextlib.contextmanager
    def slow_large_fetch(refs: Sequence[ObjectRef], *, cancel: threading.Event, **_: Any) -> Iterator[Any]:
        def cut_at_cancel() -> Iterator[bytes]:
            yield b"B" * 1000
            body_taken.set()
            assert cancel.wait(timeout=10), "the pipeline never cancelled the slow body"
            raise FetchCancelled("fetch cancelled")

        def results() -> Iterator[FetchResult]:
            for ref in refs:
                if ref.key == "big.bin":
                    head = ObjectHead(size=(8 << 20) + 1, last_modified=LAST_MODIFIED, etag="abc", version_id=None)
                    yield Streamed(ref, head, cut_at_cancel())
                    raise FetchCancelled("fetch cancelled")  # what the engine does once cancelled
                yield s3._one(ref)
        yield results()

    # The large ref comes first in the messages; the pipeline fetches the small ones first.
    # 2.6 s: admitted (~1.4 s expected) with a 1 s reserve; the timer cuts the body after 1.6 s.
    outcome = run(env, messages_for([big, *goods]), seconds=2.6, fetch=slow_large_fetch)

    assert body_taken.is_set()
    assert outcome.failed_message_ids == ["m0"]
    assert outcome.counts["ObjectsArchived"] == 3
    (data, _), = env["minio"].objects.values()
    members, _ = read_archive(data)
    assert sorted(members) == [f"landing/fine-{i}.txt" for i in range(3)]
    assert object_id(big) not in claims_of(env)


def test_of_two_large_objects_too_slow_for_the_time_left_one_is_tried_last(env: dict[str, Any]) -> None:
    s3 = env["s3"]
    small = s3.put("landing", "small.txt", b"small")
    # Events naming 1 GiB: at LARGE_FETCH_BYTES_PER_SECOND each needs far more than a 20 s
    # invocation has. One is tried anyway, last (here the fake S3 has no such object: gone,
    # acknowledged); the other is not admitted and its message waits for a later try.
    tried, waiting = (ObjectRef("landing", f"huge-{n}.bin", 1 << 30, "abc", None, "01") for n in (1, 2))
    outcome = run(env, [Message("m-tried", s3_body(tried)), Message("m-waiting", s3_body(waiting)),
                        Message("m-small", s3_body(small))], seconds=20)

    assert outcome.failed_message_ids == ["m-waiting"]
    assert outcome.counts["ObjectsArchived"] == 1
    assert object_id(waiting) not in claims_of(env)  # released for a later try
    assert s3.requested == [small.key, tried.key]  # the long shot last; the other never fetched


def test_an_object_too_big_for_the_spool_fails_only_its_own_message(env: dict[str, Any]) -> None:
    small = env["s3"].put("landing", "small.txt", b"small")
    huge = ObjectRef("landing", "huge.bin", 10**15, "abc", None, "01")  # an event claiming a petabyte
    outcome = run(env, [Message("m-huge", s3_body(huge)), Message("m-small", s3_body(small))])
    assert outcome.failed_message_ids == ["m-huge"]
    assert outcome.counts["ObjectsArchived"] == 1
    assert object_id(huge) not in claims_of(env)  # released for a later try


# --- stale events --------------------------------------------------------------------------


def test_an_event_older_than_the_claim_ttl_is_refused_and_nothing_is_claimed(env: dict[str, Any]) -> None:
    ttl = env["settings"].idempotency_ttl_seconds
    now = env["clock"].now
    old, fresh = env["s3"].put("landing", "old.txt", b"old"), env["s3"].put("landing", "new.txt", b"new")
    store = env["store"]()
    outcome = run(env, [Message("m-old", s3_body(old, event_time=now - ttl - 1)),
                        Message("m-new", s3_body(fresh, event_time=now - ttl + 60))], claims=store)
    assert outcome.failed_message_ids == ["m-old"]
    assert outcome.counts["StaleEvents"] == 1 and outcome.counts["ObjectsArchived"] == 1
    assert object_id(old) not in claims_of(env)
    assert store.calls == 1  # only the fresh object's claim


def test_a_batch_of_only_stale_events_writes_nothing(env: dict[str, Any]) -> None:
    old = env["s3"].put("landing", "old.txt", b"old")
    store = env["store"]()
    event_time = env["clock"].now - env["settings"].idempotency_ttl_seconds - 3600
    outcome = run(env, [Message("m-old", s3_body(old, event_time=event_time))], claims=store)
    assert outcome.failed_message_ids == ["m-old"] and outcome.counts["StaleEvents"] == 1
    assert store.calls == 0 and claims_of(env) == {} and env["minio"].publishes == []


# --- time ------------------------------------------------------------------------------------


def test_too_little_time_fails_everything_and_writes_nothing(env: dict[str, Any]) -> None:
    ref = env["s3"].put("landing", "a.txt", b"a")
    store = env["store"]()
    outcome = run(env, [Message("m1", s3_body(ref))], seconds=0.4, claims=store)
    assert outcome.failed_message_ids == ["m1"]
    assert store.calls == 0 and env["minio"].publishes == [] and claims_of(env) == {}


def test_a_short_invocation_keeps_a_proportional_reserve_and_archives(env: dict[str, Any]) -> None:
    ref = env["s3"].put("landing", "a.txt", b"a")
    outcome = run(env, [Message("m1", s3_body(ref))], seconds=3)  # well under DEADLINE_RESERVE_MS
    assert outcome.failed_message_ids == [] and len(env["minio"].objects) == 1


def test_a_stalled_fetch_is_cancelled_at_the_reserve_and_what_arrived_is_published(env: dict[str, Any]) -> None:
    s3 = env["s3"]
    quick, stuck = s3.put("landing", "quick.txt", b"quick"), s3.put("landing", "stuck.txt", b"stuck")

    @contextlib.contextmanager
    def stalling_fetch(refs: Sequence[ObjectRef], *, cancel: threading.Event, **_: Any) -> Iterator[Any]:
        def results() -> Iterator[FetchResult]:
            yield s3._one(quick)
            assert cancel.wait(timeout=10), "the pipeline never cancelled the stalled fetch"
            raise FetchError("fetch cancelled")
        yield results()

    outcome = run(env, [Message("m-quick", s3_body(quick)), Message("m-stuck", s3_body(stuck))],
                  seconds=1.2, fetch=stalling_fetch)  # reserve 1 s: the timer fires after 0.2 s

    assert outcome.failed_message_ids == ["m-stuck"] and outcome.counts["ObjectsArchived"] == 1
    assert object_id(stuck) not in claims_of(env)
    assert not [t for t in threading.enumerate() if isinstance(t, threading.Timer)]
