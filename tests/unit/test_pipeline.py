"""The pipeline's decisions, with in-process fakes for S3 and MinIO and moto for DynamoDB.

Every archive is read back: decompressed, every member compared with its source bytes,
the manifest checked against the objects.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import tarfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

import boto3
import pytest
import zstandard
from moto import mock_aws

from aggregator.base.errors import ClaimStoreError, DeliveryError, FetchError
from aggregator.base.events import ObjectRef
from aggregator.base.names import object_id
from aggregator.base.objects import Failed, Fetched, FetchResult, Missing, ObjectHead, Streamed
from aggregator.base.settings import Settings
from aggregator.claims.store import ClaimStore
from aggregator.pipeline import Dependencies, Message, run_batch
from tests.support.tables import create_claims_table, scan_claims

TABLE = "claims"
LAST_MODIFIED = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


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
        return Fetched(ref, head, body)


@dataclass
class FakeMinio:
    """An atomic object store: an object exists only once publish returned."""

    objects: dict[str, tuple[bytes, dict[str, str]]] = field(default_factory=dict)
    fail_publish: Exception | None = None
    unreachable: bool = False

    def publish(self, *, key: str, source: BinaryIO, size: int, sha256_hex: str, part_bytes: int,
                deadline: float | None = None) -> None:
        if self.fail_publish is not None:
            raise self.fail_publish
        data = source.read()
        assert len(data) == size and hashlib.sha256(data).hexdigest() == sha256_hex
        self.objects[key] = (data, {"sha256_checksum": sha256_hex})

    def exists(self, key: str) -> bool:
        if self.unreachable:
            raise DeliveryError("connection refused")
        return key in self.objects

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


def s3_body(ref: ObjectRef) -> str:
    record = {
        "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": ref.bucket},
               "object": {"key": ref.key.replace(" ", "+"), "size": ref.size, "eTag": ref.etag,
                          "sequencer": ref.sequencer}},
    }
    return json.dumps({"Records": [record]})


@pytest.fixture
def env() -> Iterator[dict[str, Any]]:
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="eu-west-2")
        create_claims_table(dynamodb, TABLE)
        clock = FakeClock()
        s3, minio = FakeS3(), FakeMinio()
        settings = Settings.from_env({"IDEMPOTENCY_TABLE_NAME": TABLE, "MINIO_SECRET_ID": "minio"})

        def deps(**overrides: Any) -> Dependencies:
            values: dict[str, Any] = dict(
                settings=settings, claims=ClaimStore(dynamodb, TABLE, ttl_seconds=3600, clock=clock),
                target=minio, source=lambda: None, fetch=s3.fetch, logger=logging.getLogger("test"),
                clock=clock)
            values.update(overrides)
            return Dependencies(**values)

        yield {"dynamodb": dynamodb, "clock": clock, "s3": s3, "minio": minio, "deps": deps}


def run(env: dict[str, Any], messages: list[Message], *, owner: str = "inv-1", seconds: float = 60, **over: Any):
    deps = env["deps"](**over)
    return run_batch(messages, deps=deps, deadline=env["clock"].now + seconds, owner=owner)


def test_one_archive_for_the_whole_batch_and_every_member_round_trips(env: dict[str, Any]) -> None:
    s3 = env["s3"]
    refs = [s3.put("landing", f"dir/file {i}.json", f'{{"n": {i}}}'.encode() * (i + 1)) for i in range(5)]
    messages = [Message(f"m{i}", s3_body(ref)) for i, ref in enumerate(refs)]

    outcome = run(env, messages)

    assert outcome.failed_message_ids == []
    assert outcome.counts["ObjectsArchived"] == 5
    (key, (data, meta)), = env["minio"].objects.items()
    assert key == outcome.archive_key and key.endswith(".tar.zst") and key.startswith("archives/")
    assert meta["sha256_checksum"] == hashlib.sha256(data).hexdigest()
    members, manifest = read_archive(data)
    assert [o["key"] for o in manifest["objects"]] == [r.key for r in refs]
    for ref, entry in zip(refs, manifest["objects"], strict=True):
        body = s3.bodies[(ref.bucket, ref.key, ref.identity)]
        assert members[entry["member"]] == body
        assert entry["sha256"] == hashlib.sha256(body).hexdigest()
    claims = scan_claims(env["dynamodb"], TABLE)
    assert {c["State"] for c in claims.values()} == {"COMPLETED"}
    assert {c["ArchiveKey"] for c in claims.values()} == {key}


def test_redelivery_is_a_duplicate_and_writes_nothing(env: dict[str, Any]) -> None:
    ref = env["s3"].put("landing", "a.txt", b"hello")
    run(env, [Message("m1", s3_body(ref))])
    env["clock"].now += 5

    outcome = run(env, [Message("m1-again", s3_body(ref))], owner="inv-2")

    assert outcome.failed_message_ids == [] and outcome.archive_key is None
    assert outcome.counts["DuplicatesSkipped"] == 1
    assert len(env["minio"].objects) == 1


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


def test_malformed_message_fails_alone(env: dict[str, Any]) -> None:
    ref = env["s3"].put("landing", "ok.txt", b"ok")
    outcome = run(env, [Message("good", s3_body(ref)), Message("bad", "{not json"), Message("test",
                  json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"}))])
    assert outcome.failed_message_ids == ["bad"]
    assert outcome.counts["ObjectsArchived"] == 1 and outcome.counts["EventsIgnored"] == 1


def test_missing_object_is_acknowledged_and_counted(env: dict[str, Any]) -> None:
    gone = ObjectRef("landing", "gone.txt", 3, "abc", None, "01")
    ref = env["s3"].put("landing", "here.txt", b"here")
    outcome = run(env, [Message("m-gone", s3_body(gone)), Message("m-here", s3_body(ref))])
    assert outcome.failed_message_ids == [] and outcome.counts["ObjectsMissing"] == 1
    _, manifest = read_archive(next(iter(env["minio"].objects.values()))[0])
    assert [o["key"] for o in manifest["objects"]] == ["here.txt"]
    assert object_id(gone) not in scan_claims(env["dynamodb"], TABLE)


def test_failed_fetch_fails_its_message_and_releases_its_claim(env: dict[str, Any]) -> None:
    s3 = env["s3"]
    bad, good = s3.put("landing", "bad.txt", b"bad"), s3.put("landing", "good.txt", b"good")
    s3.failing.add("bad.txt")
    outcome = run(env, [Message("m-bad", s3_body(bad)), Message("m-good", s3_body(good))])
    assert outcome.failed_message_ids == ["m-bad"]
    assert object_id(bad) not in scan_claims(env["dynamodb"], TABLE)

    s3.failing.clear()
    retry = run(env, [Message("m-bad", s3_body(bad))], owner="inv-2")
    assert retry.failed_message_ids == [] and retry.counts["ObjectsArchived"] == 1


def test_a_body_breaking_mid_member_abandons_the_archive(env: dict[str, Any]) -> None:
    s3 = env["s3"]
    broken, fine = s3.put("landing", "big.bin", b"B" * 1000), s3.put("landing", "fine.txt", b"f")
    s3.broken_stream.add("big.bin")
    outcome = run(env, [Message("m1", s3_body(fine)), Message("m2", s3_body(broken))])
    assert sorted(outcome.failed_message_ids) == ["m1", "m2"]
    assert env["minio"].objects == {} and scan_claims(env["dynamodb"], TABLE) == {}


def test_publish_failure_releases_claims_and_a_retry_archives(env: dict[str, Any]) -> None:
    ref = env["s3"].put("landing", "a.txt", b"a")
    env["minio"].fail_publish = DeliveryError("503 from MinIO")
    outcome = run(env, [Message("m1", s3_body(ref))])
    assert outcome.failed_message_ids == ["m1"] and scan_claims(env["dynamodb"], TABLE) == {}

    env["minio"].fail_publish = None
    assert run(env, [Message("m1", s3_body(ref))], owner="inv-2").failed_message_ids == []
    assert len(env["minio"].objects) == 1


def test_publish_state_unknown_keeps_claims_for_recovery(env: dict[str, Any]) -> None:
    ref = env["s3"].put("landing", "a.txt", b"a")
    env["minio"].fail_publish = DeliveryError("read timeout")
    env["minio"].unreachable = True
    outcome = run(env, [Message("m1", s3_body(ref))])
    assert outcome.failed_message_ids == ["m1"]
    assert scan_claims(env["dynamodb"], TABLE)[object_id(ref)]["State"] == "IN_PROGRESS"


class CommitFails(ClaimStore):
    """A claim store whose commit never gets through (the archive is published first)."""

    def commit(self, object_ids: Any, *, owner: str, archive_key: str) -> None:
        raise ClaimStoreError("DynamoDB unavailable")


def test_commit_failure_after_publish_is_recovered_without_a_second_archive(env: dict[str, Any]) -> None:
    refs = [env["s3"].put("landing", f"k{i}", b"v" * i) for i in range(3)]
    messages = [Message(f"m{i}", s3_body(r)) for i, r in enumerate(refs)]

    store = CommitFails(env["dynamodb"], TABLE, ttl_seconds=3600, clock=env["clock"])
    first = run(env, messages, seconds=30, claims=store)
    assert sorted(first.failed_message_ids) == ["m0", "m1", "m2"]
    assert len(env["minio"].objects) == 1

    env["clock"].now += 31  # past the dead invocation's deadline
    second = run(env, messages, owner="inv-2")

    assert second.failed_message_ids == [] and second.counts["DuplicatesSkipped"] == 3
    assert len(env["minio"].objects) == 1
    (key,) = env["minio"].objects
    assert {c["ArchiveKey"] for c in scan_claims(env["dynamodb"], TABLE).values()} == {key}


def test_claims_of_a_live_invocation_are_busy(env: dict[str, Any]) -> None:
    ref = env["s3"].put("landing", "a.txt", b"a")
    store = ClaimStore(env["dynamodb"], TABLE, ttl_seconds=3600, clock=env["clock"])
    store.claim([object_id(ref)], owner="other", lease_until=env["clock"].now + 600, archive_key="archives/x")
    outcome = run(env, [Message("m1", s3_body(ref))])
    assert outcome.failed_message_ids == ["m1"] and env["minio"].objects == {}


def test_too_little_time_fails_everything_and_writes_nothing(env: dict[str, Any]) -> None:
    ref = env["s3"].put("landing", "a.txt", b"a")
    outcome = run(env, [Message("m1", s3_body(ref))], seconds=0.4)
    assert outcome.failed_message_ids == ["m1"]
    assert env["minio"].objects == {} and scan_claims(env["dynamodb"], TABLE) == {}


def test_a_short_invocation_keeps_a_proportional_reserve_and_archives(env: dict[str, Any]) -> None:
    ref = env["s3"].put("landing", "a.txt", b"a")
    outcome = run(env, [Message("m1", s3_body(ref))], seconds=3)  # well under DEADLINE_RESERVE_MS
    assert outcome.failed_message_ids == [] and len(env["minio"].objects) == 1


def test_no_new_object_writes_no_archive(env: dict[str, Any]) -> None:
    outcome = run(env, [Message("t", json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"}))])
    assert outcome.failed_message_ids == [] and env["minio"].objects == {} and env["s3"].calls == 0


def test_a_failed_recovery_commit_never_forgets_the_published_archive(env: dict[str, Any]) -> None:
    refs = [env["s3"].put("landing", f"k{i}", b"v" * i) for i in range(2)]
    messages = [Message(f"m{i}", s3_body(r)) for i, r in enumerate(refs)]

    failing = CommitFails(env["dynamodb"], TABLE, ttl_seconds=3600, clock=env["clock"])
    run(env, messages, seconds=30, claims=failing)  # publishes, cannot commit
    env["clock"].now += 31
    second = run(env, messages, owner="inv-2", seconds=30, claims=failing)  # recovery cannot commit either
    assert sorted(second.failed_message_ids) == ["m0", "m1"]
    assert {c["State"] for c in scan_claims(env["dynamodb"], TABLE).values()} == {"IN_PROGRESS"}

    env["clock"].now += 31
    third = run(env, messages, owner="inv-3")

    assert third.failed_message_ids == [] and third.counts["DuplicatesSkipped"] == 2
    assert len(env["minio"].objects) == 1  # never archived a second time


def test_an_object_too_big_for_the_spool_fails_only_its_own_message(env: dict[str, Any]) -> None:
    small = env["s3"].put("landing", "small.txt", b"small")
    huge = ObjectRef("landing", "huge.bin", 10**15, "abc", None, "01")  # an event claiming a petabyte
    outcome = run(env, [Message("m-huge", s3_body(huge)), Message("m-small", s3_body(small))])
    assert outcome.failed_message_ids == ["m-huge"]
    assert outcome.counts["ObjectsArchived"] == 1
    assert object_id(huge) not in scan_claims(env["dynamodb"], TABLE)  # released for a later try


def test_an_identity_too_long_for_a_claim_key_is_malformed_alone(env: dict[str, Any]) -> None:
    small = env["s3"].put("landing", "small.txt", b"small")
    forged = ObjectRef("landing", "k", 1, "e" * 3000, None, "01")
    outcome = run(env, [Message("forged", s3_body(forged)), Message("ok", s3_body(small))])
    assert outcome.failed_message_ids == ["forged"] and outcome.counts["ObjectsArchived"] == 1


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
    assert object_id(stuck) not in scan_claims(env["dynamodb"], TABLE)
    assert not [t for t in threading.enumerate() if isinstance(t, threading.Timer)]


def test_an_archive_is_not_published_when_a_claim_changed_hands_meanwhile(env: dict[str, Any]) -> None:
    s3, dynamodb = env["s3"], env["dynamodb"]
    refs = [s3.put("landing", f"k{i}", b"v") for i in range(3)]

    @contextlib.contextmanager
    def fetch_while_stolen(refs_: Sequence[ObjectRef], **kwargs: Any) -> Iterator[Any]:
        # As if a store without isolation let another invocation's claim overwrite ours.
        dynamodb.update_item(TableName=TABLE, Key={"ObjectID": {"S": object_id(refs[1])}},
                             UpdateExpression="SET #o = :o", ExpressionAttributeNames={"#o": "Owner"},
                             ExpressionAttributeValues={":o": {"S": "thief"}})
        with s3.fetch(refs_, **kwargs) as results:
            yield results

    outcome = run(env, [Message(f"m{i}", s3_body(r)) for i, r in enumerate(refs)], fetch=fetch_while_stolen)

    assert sorted(outcome.failed_message_ids) == ["m0", "m1", "m2"] and env["minio"].objects == {}
    claims = scan_claims(dynamodb, TABLE)
    assert list(claims) == [object_id(refs[1])] and claims[object_id(refs[1])]["Owner"] == "thief"
