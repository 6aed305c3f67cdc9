"""MANIFEST.json: contract fields and order, RFC 3339 times, reading it back strictly."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from aggregator.archive import ArchiveReadError, ArchiveWriter, ManifestEntry, manifest_bytes, read_manifest
from aggregator.archive.codecs import open_compressor
from aggregator.archive.tarstream import TarStream

CREATED = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)


def entry(**overrides: object) -> ManifestEntry:
    fields: dict[str, object] = {
        "bucket": "src", "key": "a/ké y", "member": "src/a/ké y", "size": 3, "sha256": "ab" * 32,
        "etag": "0123", "version_id": None, "sequencer": "0055", "last_modified": CREATED,
    }
    fields.update(overrides)
    return ManifestEntry(**fields)  # type: ignore[arg-type]


def test_manifest_has_the_contract_fields_in_order() -> None:
    entries = [entry(), entry(key="b", member="src/b", version_id="v1", sequencer=None)]
    data = manifest_bytes(archive_id="20250304T050607Z-abc", created_at=CREATED, codec="zstd", entries=entries)
    document = json.loads(data)
    assert list(document) == ["archive_id", "created_at", "codec", "objects"]
    assert document["archive_id"] == "20250304T050607Z-abc"
    assert document["created_at"] == "2025-03-04T05:06:07Z"
    assert document["codec"] == "zstd"
    assert document["objects"] == [
        {"bucket": "src", "key": "a/ké y", "member": "src/a/ké y", "size": 3, "sha256": "ab" * 32,
         "etag": "0123", "version_id": None, "sequencer": "0055", "last_modified": "2025-03-04T05:06:07Z"},
        {"bucket": "src", "key": "b", "member": "src/b", "size": 3, "sha256": "ab" * 32,
         "etag": "0123", "version_id": "v1", "sequencer": None, "last_modified": "2025-03-04T05:06:07Z"},
    ]
    assert list(document["objects"][0]) == ["bucket", "key", "member", "size", "sha256", "etag", "version_id",
                                            "sequencer", "last_modified"]
    assert "ké y".encode() in data  # UTF-8, not \\u escapes


def test_times_are_rfc3339_utc_whatever_the_zone() -> None:
    paris = timezone(timedelta(hours=1))
    local = datetime(2025, 3, 4, 6, 6, 7, 250000, tzinfo=paris)
    data = manifest_bytes(archive_id="a", created_at=local, codec="gzip", entries=[entry(last_modified=local)])
    document = json.loads(data)
    assert document["created_at"] == "2025-03-04T05:06:07.250000Z"
    assert document["objects"][0]["last_modified"] == "2025-03-04T05:06:07.250000Z"
    for text in (document["created_at"], document["objects"][0]["last_modified"]):
        assert datetime.fromisoformat(text.replace("Z", "+00:00")) == local


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        manifest_bytes(archive_id="a", created_at=datetime(2025, 1, 1), codec="none", entries=[])


def test_empty_manifest() -> None:
    document = json.loads(manifest_bytes(archive_id="a", created_at=CREATED, codec="none", entries=[]))
    assert document["objects"] == []


def small_archive(codec: str, kit: Any, count: int = 3) -> bytes:
    sink = io.BytesIO()
    writer = ArchiveWriter(sink, codec=codec, archive_id="arch-1", created_at=CREATED)
    for i in range(count):
        writer.add(kit.fetched(f"k{i}", b"body %d " % i * 300))
    writer.finish()
    return sink.getvalue()


def test_read_manifest_streams_to_the_end(codec: str, kit: Any) -> None:
    data = small_archive(codec, kit)
    document = read_manifest(io.BytesIO(data), codec=codec)
    assert document["archive_id"] == "arch-1"
    assert [o["key"] for o in document["objects"]] == ["k0", "k1", "k2"]


def test_truncated_archives_are_refused_at_every_cut(codec: str, kit: Any) -> None:
    data = small_archive(codec, kit)
    # Uncompressed too, up to the last byte: the writer always ends on a whole 10,240-byte
    # record, so an archive cut in the padding after its end blocks was cut.
    end = len(data)
    step = max(1, end // 97)
    for cut in sorted({*range(0, end, step), end - 1, end - 4, end - 513}):
        with pytest.raises(ArchiveReadError):
            read_manifest(io.BytesIO(data[:cut]), codec=codec)


def test_archive_without_manifest_is_refused(codec: str) -> None:
    sink = io.BytesIO()
    stream = open_compressor(codec, sink)
    tar = TarStream(stream)
    tar.add_bytes("src/only", b"data", mtime=0)
    tar.close()
    stream.close()
    with pytest.raises(ArchiveReadError, match=re.escape("last member is 'src/only', not MANIFEST.json")):
        read_manifest(io.BytesIO(sink.getvalue()), codec=codec)


def test_manifest_not_last_is_refused(kit: Any) -> None:
    out = io.BytesIO()
    tar = TarStream(out)
    tar.add_bytes("MANIFEST.json", b"{}", mtime=0)
    tar.add_bytes("src/late", b"x", mtime=0)
    tar.close()
    with pytest.raises(ArchiveReadError, match=r"not MANIFEST\.json"):
        read_manifest(io.BytesIO(out.getvalue()), codec="none")


def test_empty_tar_and_empty_file_are_refused() -> None:
    out = io.BytesIO()
    TarStream(out).close()
    with pytest.raises(ArchiveReadError, match="no members"):
        read_manifest(io.BytesIO(out.getvalue()), codec="none")
    with pytest.raises(ArchiveReadError, match="truncated"):
        read_manifest(io.BytesIO(b""), codec="none")


@pytest.mark.parametrize(("payload", "message"), [(b"[1]", "not an object"), (b"{oops", "not valid JSON")])
def test_manifest_must_be_a_json_object(payload: bytes, message: str) -> None:
    out = io.BytesIO()
    tar = TarStream(out)
    tar.add_bytes("MANIFEST.json", payload, mtime=0)
    tar.close()
    with pytest.raises(ArchiveReadError, match=message):
        read_manifest(io.BytesIO(out.getvalue()), codec="none")


def test_corrupt_header_is_refused(kit: Any) -> None:
    data = bytearray(small_archive("none", kit))
    data[5] ^= 0x01  # inside the first member's name: checksum no longer matches
    with pytest.raises(ArchiveReadError, match="checksum"):
        read_manifest(io.BytesIO(bytes(data)), codec="none")
