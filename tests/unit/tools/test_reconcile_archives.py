"""reconcile's archive index for objects whose claim is gone (DynamoDB's TTL deleted it):
the manifest sidecars of the hours after the object's upload, read once per run, and an
archive counted only when it exists. MinIO is in-process moto."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from moto import mock_aws

from aggregator.base.settings import ToolSettings
from aggregator.tools.common import Environment
from aggregator.tools.reconcile import ArchiveIndex, Version, classify
from tests.unit.tools.conftest import ARCHIVE_ID, build

BUCKET = "archives-bucket"
UPLOADED = datetime(2026, 11, 1, 10, 20, tzinfo=UTC)
NOW = datetime(2026, 12, 7, 0, 30, tzinfo=UTC)


@pytest.fixture
def minio() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def index(minio: Any, *, now: datetime = NOW, window: timedelta | None = None) -> ArchiveIndex:
    env = Environment(settings=ToolSettings(archive_prefix="arch"),
                      _minio={"client": minio, "secret": SimpleNamespace(bucket=BUCKET)})
    return ArchiveIndex(env, now=now, window=window)


def publish(minio: Any, created: datetime, entries: list[dict[str, Any]], *, archive: bool = True) -> str:
    """A sidecar listing ``entries`` and, unless ``archive`` is false, its archive."""
    key = f"arch/{created:%Y/%m/%d/%H}/{created:%Y%m%dT%H%M%SZ}-{len(entries)}{id(entries):x}.tar.zst"
    manifest = {"archive_id": key.rsplit("/", 1)[1], "codec": "zstd", "objects": entries}
    minio.put_object(Bucket=BUCKET, Key=f"_manifests/{key}.json", Body=json.dumps(manifest).encode())
    if archive:
        minio.put_object(Bucket=BUCKET, Key=key, Body=b"archive bytes")
    return key


def entry(key: str, *, version_id: str | None = None, etag: str = "e1") -> dict[str, Any]:
    return {"bucket": "src", "key": key, "member": f"src/{key}", "etag": etag, "version_id": version_id}


def version(key: str, *, version_id: str | None = None, etag: str = "e1", uploaded: datetime = UPLOADED) -> Version:
    return Version("src", key, version_id, etag, 10, uploaded)


def test_an_object_whose_claim_expired_is_found_in_a_later_archives_manifest(minio: Any) -> None:
    same_hour = publish(minio, UPLOADED + timedelta(minutes=5), [entry("v.bin", version_id="v1")])
    days_later = publish(minio, UPLOADED + timedelta(days=9, hours=3), [entry("u.bin", etag="e2")])
    archives = index(minio)
    assert archives.find(version("v.bin", version_id="v1")) == same_hour
    assert archives.find(version("u.bin", etag="e2")) == days_later
    assert archives.find(version("u.bin", etag="other")) is None  # a new upload of the key: not archived
    assert archives.find(version("v.bin", version_id="v2")) is None
    assert archives.swept_sidecars == 2 and archives.absent == 0
    assert "2 sidecars read over" in archives.describe()


def test_a_versioned_object_whose_event_named_no_version_is_matched_by_etag(minio: Any) -> None:
    archive = publish(minio, UPLOADED + timedelta(hours=1), [entry("m.bin", etag="e9")])
    assert index(minio).find(version("m.bin", version_id="v1", etag="e9")) == archive


def test_a_sidecar_without_its_archive_was_never_published(minio: Any) -> None:
    publish(minio, UPLOADED + timedelta(hours=2), [entry("gone.bin")], archive=False)
    archives = index(minio)
    assert archives.find(version("gone.bin")) is None
    assert archives.absent == 1
    line = classify(version("gone.bin"), [], archives, now=NOW.timestamp())
    assert line["state"] == "never_claimed" and line["archive"] is None


def test_the_hours_from_the_upload_to_now_are_read_once(minio: Any) -> None:
    publish(minio, UPLOADED - timedelta(hours=1), [entry("x.bin")])  # before the upload: cannot hold it
    first = publish(minio, UPLOADED + timedelta(hours=2), [entry("x.bin")])
    archives = index(minio)
    assert archives.find(version("x.bin")) == first
    # The same hours are never listed twice in one run.
    listings = archives.listings
    assert archives.find(version("y.bin", uploaded=UPLOADED + timedelta(minutes=30))) is None
    assert archives.listings == listings


def test_an_object_backfilled_after_the_ttl_is_found_once_its_new_claim_expired(minio: Any) -> None:
    # The stale-event runbook archived it 30 days after its upload; 15 days later its new
    # claim is gone too: reconcile must still find it, or a second backfill would archive it again.
    late = publish(minio, UPLOADED + timedelta(days=30), [entry("late.bin")])
    assert index(minio).find(version("late.bin")) == late
    assert index(minio, window=timedelta(days=29)).find(version("late.bin")) is None  # bounded: missed


def test_the_hours_stop_at_now(minio: Any) -> None:
    archives = index(minio, now=UPLOADED + timedelta(hours=2))
    line = classify(version("new.bin"), [], archives, now=NOW.timestamp())
    assert line["state"] == "never_claimed"
    assert "0 sidecars read over 3 hours of archives (1 listings)" in archives.describe()


def test_an_unreadable_sidecar_falls_back_to_the_archives_own_manifest(minio: Any, tmp_path: Path) -> None:
    # conftest's archive: created 2026-12-06 18:00, its objects uploaded 2026-12-01 12:00:01.
    path = build(tmp_path, [("src", "a.txt", b"alpha " * 100)])
    key = f"arch/2026/12/06/18/{ARCHIVE_ID}.tar.zst"
    minio.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
    minio.put_object(Bucket=BUCKET, Key=f"_manifests/{key}.json", Body=b"{not json")
    etag = hashlib.md5(b"alpha " * 100).hexdigest()
    archives = index(minio)
    found = archives.find(version("a.txt", etag=etag, uploaded=datetime(2026, 12, 1, 12, 0, 1, tzinfo=UTC)))
    assert found == key and archives.streamed == 1


def test_an_archive_the_consumer_took_away_after_its_publish_still_counts(minio: Any) -> None:
    taken = publish(minio, UPLOADED + timedelta(hours=3), [entry("taken.bin")])
    minio.put_object(Bucket=BUCKET, Key=f"_manifests/{taken}.published", Body=b"")
    minio.delete_object(Bucket=BUCKET, Key=taken)
    archives = index(minio)
    assert archives.find(version("taken.bin")) == taken
    assert archives.absent == 0
    minio.delete_object(Bucket=BUCKET, Key=f"_manifests/{taken}.json")  # the sidecar gone too: not knowable
    archives = index(minio)
    assert archives.find(version("taken.bin")) is None
