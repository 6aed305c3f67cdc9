"""Builders of fetch items and a round-trip checker shared by the archive tests.

Tests reach them through the ``kit`` fixture. ``read_back`` decompresses with the
libraries directly (zstandard, gzip), not with the code under test, and reads members
with ``tarfile``; it also checks that every header is POSIX ustar (``ustar\\0`` + ``00``),
never GNU's ``ustar  \\0``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import zstandard

from aggregator.archive import ArchiveSummary, ManifestEntry, open_decompressor, read_manifest
from aggregator.base.events import ObjectRef
from aggregator.base.objects import Fetched, ObjectHead, Streamed

CODECS = ("zstd", "gzip", "none")
CREATED_AT = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
LAST_MODIFIED = datetime(2025, 3, 1, 12, 0, 1, tzinfo=UTC)


def fetched(key: str, body: bytes, *, bucket: str = "src-bucket", version_id: str | None = None,
            etag: str | None = None, sequencer: str | None = "0055AED6DCD90281E5",
            last_modified: datetime = LAST_MODIFIED) -> Fetched:
    etag = etag or hashlib.md5(body).hexdigest()
    ref = ObjectRef(bucket=bucket, key=key, size=len(body), etag=etag, version_id=version_id, sequencer=sequencer)
    return Fetched(ref=ref, head=ObjectHead(len(body), last_modified, etag, version_id), body=body)


def streamed(key: str, size: int, chunks: Iterable[bytes], *, bucket: str = "src-bucket",
             version_id: str | None = None, last_modified: datetime = LAST_MODIFIED) -> Streamed:
    ref = ObjectRef(bucket=bucket, key=key, size=size, etag="e" * 32, version_id=version_id, sequencer="01")
    return Streamed(ref=ref, head=ObjectHead(size, last_modified, "e" * 32, version_id), chunks=iter(chunks))


def decompress(data: bytes, codec: str) -> bytes:
    """Independent of the code under test."""
    if codec == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True).read()
    if codec == "gzip":
        return gzip.decompress(data)
    assert codec == "none"
    return data


@dataclass
class Member:
    info: tarfile.TarInfo
    data: bytes


def read_back(data: bytes, codec: str) -> list[Member]:
    raw = decompress(data, codec)
    # The reader under test must give the same bytes.
    assert open_decompressor(codec, io.BytesIO(data)).read() == raw
    assert len(raw) % 10240 == 0
    members = []
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as archive:
        for info in archive:
            assert info.isreg(), info
            assert info.mode == 0o644 and info.uid == 0 and info.gid == 0
            assert info.uname == "" and info.gname == ""
            header = raw[info.offset_data - 512:info.offset_data]
            assert header[257:265] == b"ustar\x0000", header[257:265]
            if info.pax_headers:
                assert raw[info.offset + 257:info.offset + 265] == b"ustar\x0000"
                assert raw[info.offset + 156:info.offset + 157] == b"x"
            extracted = archive.extractfile(info)
            assert extracted is not None
            members.append(Member(info, extracted.read()))
    return members


def verify(data: bytes, codec: str, summary: ArchiveSummary, expected: list[tuple[str, str, bytes]],
           *, archive_id: str = "arch-1") -> list[Member]:
    """Full round trip: checksum, every member's bytes and hash, manifest content and order.

    ``expected`` lists ``(bucket, key, body)`` in archive order.
    """
    assert summary.sha256_hex == hashlib.sha256(data).hexdigest()
    assert summary.size == len(data)
    members = read_back(data, codec)
    assert [m.info.name for m in members][-1] == "MANIFEST.json"
    objects = members[:-1]
    assert len(objects) == len(expected) == len(summary.entries)
    names = [m.info.name for m in objects]
    assert len(set(names)) == len(names)
    manifest = json_of(members[-1].data)
    assert manifest == read_manifest(io.BytesIO(data), codec=codec)
    assert list(manifest) == ["archive_id", "created_at", "codec", "objects"]
    assert manifest["archive_id"] == archive_id
    assert manifest["codec"] == codec
    assert manifest["created_at"] == "2025-03-04T05:06:07Z"
    for member, entry, document, (bucket, key, body) in zip(objects, summary.entries, manifest["objects"],
                                                            expected, strict=True):
        assert member.data == body
        assert member.info.size == len(body)
        assert member.info.name == entry.member == document["member"]
        assert entry.bucket == bucket and entry.key == key
        assert entry.sha256 == hashlib.sha256(body).hexdigest() == document["sha256"]
        assert document == entry_json(entry)
    return members


def entry_json(entry: ManifestEntry) -> dict[str, Any]:
    return {
        "bucket": entry.bucket,
        "key": entry.key,
        "member": entry.member,
        "size": entry.size,
        "sha256": entry.sha256,
        "etag": entry.etag,
        "version_id": entry.version_id,
        "sequencer": entry.sequencer,
        "last_modified": entry.last_modified.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def json_of(data: bytes) -> dict[str, Any]:
    import json

    document = json.loads(data)
    assert isinstance(document, dict)
    return document


def pattern_chunks(size: int, *, chunk: int = 1 << 20, seed: int = 7) -> Iterator[bytes]:
    """``size`` bytes of compressible but non-repeating data, generated chunk by chunk."""
    import random

    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(3, 12)) for _ in range(512)]
    produced = 0
    while produced < size:
        n = min(chunk, size - produced)
        block = b"".join(rng.choices(words, k=n // 6 + 1))[:n]
        produced += n
        yield block


class Kit:
    """The helpers above, handed to tests as the ``kit`` fixture (tests never import conftest)."""

    CODECS = CODECS
    CREATED_AT = CREATED_AT
    LAST_MODIFIED = LAST_MODIFIED
    fetched = staticmethod(fetched)
    streamed = staticmethod(streamed)
    decompress = staticmethod(decompress)
    read_back = staticmethod(read_back)
    verify = staticmethod(verify)
    json_of = staticmethod(json_of)
    pattern_chunks = staticmethod(pattern_chunks)


@pytest.fixture
def kit() -> type[Kit]:
    return Kit


@pytest.fixture(params=CODECS)
def codec(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def sink() -> io.BytesIO:
    return io.BytesIO()

