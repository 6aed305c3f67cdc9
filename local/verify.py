"""Reads every archive in the MinIO bucket back and checks it against the sources.

Per archive: the key's shape, ``sha256_checksum`` metadata equal to the SHA-256 of the
stored bytes, one compressed stream of a POSIX (ustar/pax, not GNU) tar, unique member
names, ``MANIFEST.json`` present and last and listing the members in archive order with
their sizes, hashes and mtimes, and each member's bytes equal to the bytes of the source
object version it names (fetched from the landing bucket again).

Across archives: every uploaded object is in exactly one archive and nothing else is,
counted from the manifests. Archives are read in memory and never extracted to disk:
extraction would let a second copy overwrite the first and hide it.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

MANIFEST = "MANIFEST.json"
EXTENSIONS = {".tar.zst": "zstd", ".tar.gz": "gzip", ".tar": "none"}
_POSIX_MAGIC = b"ustar\x0000"


@dataclass(frozen=True)
class Uploaded:
    """What the demo put into the landing bucket."""

    key: str
    size: int
    sha256: str
    etag: str
    version_id: str | None
    uploaded_at: float  # epoch seconds, when PutObject returned


@dataclass(frozen=True)
class ArchiveInfo:
    key: str
    size: int  # stored (compressed) bytes
    codec: str
    objects: int
    member_bytes: int  # uncompressed object bytes in it
    created_at: str


@dataclass
class Verification:
    archives: list[ArchiveInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    copies: Counter[tuple[str, str]] = field(default_factory=Counter)  # (bucket, key) -> archives holding it
    entries: list[Mapping[str, Any]] = field(default_factory=list)  # every manifest entry, all archives

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def bytes_out(self) -> int:
        return sum(a.size for a in self.archives)

    @property
    def objects_archived(self) -> int:
        return sum(a.objects for a in self.archives)


@dataclass
class Archive:
    """One archive as read back: its manifest and members (MANIFEST.json left out)."""

    key: str
    codec: str
    size: int  # stored bytes
    manifest: dict[str, Any]
    members: list[tuple[str, bytes]]  # (name, data), archive order
    mtimes: list[int]  # each member's tar mtime, same order


def decompress(codec: str, data: bytes) -> bytes:
    """An independent reader (zstandard, gzip), not the package's own codecs."""
    if codec == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True).read()
    if codec == "gzip":
        import gzip

        return gzip.decompress(data)
    return data


def read_archive(minio: Any, bucket: str, key: str, *, prefix: str, problems: list[str]) -> Archive | None:
    """Read ``key`` whole and check its form, every problem found going to ``problems``;
    None when its members cannot even be told apart. Checks: the key's shape, ``sha256_checksum`` equal to the
    SHA-256 of the stored bytes, a stream that decompresses whole into a tar that ends with
    its end-of-archive blocks, POSIX (ustar/pax) regular-file members with unique names,
    ``MANIFEST.json`` last, naming this archive and codec and listing the other members in
    order with their sizes and hashes."""
    codec = next((c for ext, c in EXTENSIONS.items() if key.endswith(ext)), None)
    pattern = rf"{re.escape(prefix)}/\d{{4}}/\d{{2}}/\d{{2}}/\d{{2}}/([^/]+?)(\.tar\.zst|\.tar\.gz|\.tar)"
    shape = re.fullmatch(pattern, key)
    if codec is None or shape is None:
        problems.append(f"{key}: not of the form {prefix}/YYYY/MM/DD/HH/ID.tar[.zst|.gz]")
        return None
    answer = minio.get_object(Bucket=bucket, Key=key)
    stored = answer["Body"].read()
    checksum = answer.get("Metadata", {}).get("sha256_checksum")
    if checksum != hashlib.sha256(stored).hexdigest():
        # Reported, and read on: whatever else is wrong with it is worth saying too.
        problems.append(f"{key}: sha256_checksum metadata {checksum!r} is missing or not the SHA-256 of the "
                        "stored bytes")
    raw = decompress(codec, stored)
    members: list[tuple[str, bytes]] = []
    mtimes: list[int] = []
    end = 0
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        for info in tar:
            if raw[info.offset + 257:info.offset + 265] != _POSIX_MAGIC:
                problems.append(f"{key}: {info.name!r} has no POSIX ustar/pax header (GNU tar?)")
            if not info.isfile():
                problems.append(f"{key}: {info.name!r} is not a regular file")
                continue
            handle = tar.extractfile(info)
            members.append((info.name, handle.read() if handle else b""))
            mtimes.append(int(info.mtime))
            end = info.offset_data + info.size + (-info.size % 512)
    if raw[end:end + 1024] != bytes(1024) or len(raw) < end + 1024:
        problems.append(f"{key}: no end-of-archive blocks after the last member (truncated)")
    names = [name for name, _ in members]
    if len(set(names)) != len(names):
        problems.append(f"{key}: duplicate member names")
    if not members or names[-1] != MANIFEST:
        problems.append(f"{key}: {MANIFEST} is not the last member")
        return None
    manifest = json.loads(members[-1][1])
    objects = manifest.get("objects", [])
    if manifest.get("archive_id") != shape.group(1):
        problems.append(f"{key}: manifest archive_id {manifest.get('archive_id')!r} differs from the key")
    if manifest.get("codec") != codec:
        problems.append(f"{key}: manifest codec {manifest.get('codec')!r}, key says {codec}")
    if [o.get("member") for o in objects] != names[:-1]:
        problems.append(f"{key}: the manifest does not list the members in archive order")
        return None
    for (name, data), entry in zip(members[:-1], objects, strict=True):
        if entry.get("size") != len(data) or entry.get("sha256") != hashlib.sha256(data).hexdigest():
            problems.append(f"{key}: {name!r}: size or sha256 differ from the manifest")
    return Archive(key=key, codec=codec, size=len(stored), manifest=manifest, members=members[:-1],
                   mtimes=mtimes[:-1])


def verify_archives(*, minio: Any, archive_bucket: str, prefix: str, source_s3: Any, source_bucket: str,
                    expected: Mapping[str, Uploaded], on_archive: Callable[[], None] | None = None) -> Verification:
    result = Verification()
    pages = minio.get_paginator("list_objects_v2").paginate(Bucket=archive_bucket, Prefix=prefix.strip("/") + "/")
    keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    source_hashes: dict[tuple[str, str | None, str | None], str] = {}
    for key in sorted(keys):
        try:
            _verify_one(minio, archive_bucket, key, prefix, source_s3, source_hashes, result)
        except Exception as e:  # one unreadable archive is a finding, not the end of the check
            result.problems.append(f"{key}: cannot be read: {e.__class__.__name__}: {e}")
        if on_archive:
            on_archive()

    for key in expected:
        count = result.copies.get((source_bucket, key), 0)
        if count != 1:
            result.problems.append(f"{key!r} is in {count} archives, expected exactly 1")
    for entry in result.entries:
        upload = expected.get(entry.get("key", "")) if entry.get("bucket") == source_bucket else None
        if upload is None:
            continue
        if entry.get("etag") != upload.etag or entry.get("version_id") not in (None, upload.version_id):
            result.problems.append(f"{upload.key!r}: manifest names etag {entry.get('etag')} version "
                                   f"{entry.get('version_id')}, the upload was {upload.etag} {upload.version_id}")
    for (bucket, key), count in result.copies.items():
        if bucket != source_bucket or key not in expected:
            result.problems.append(f"{bucket}/{key!r} is archived ({count}x) but was never uploaded")
    return result


def _verify_one(minio: Any, bucket: str, key: str, prefix: str, source_s3: Any,
                source_hashes: dict[tuple[str, str | None, str | None], str], result: Verification) -> None:
    archive = read_archive(minio, bucket, key, prefix=prefix, problems=result.problems)
    if archive is None:
        return
    objects = archive.manifest.get("objects", [])
    for (name, data), mtime, entry in zip(archive.members, archive.mtimes, objects, strict=True):
        where = f"{key}: {name!r}"
        last_modified = datetime.fromisoformat(str(entry.get("last_modified")))
        if int(last_modified.timestamp()) != mtime:
            result.problems.append(f"{where}: mtime {mtime} is not last_modified {entry.get('last_modified')}")
        source = _source_sha256(source_s3, entry, source_hashes)
        if source != hashlib.sha256(data).hexdigest():
            result.problems.append(f"{where}: bytes differ from the source object version ({source})")
        result.copies[(entry.get("bucket"), entry.get("key"))] += 1
        result.entries.append(entry)
    result.archives.append(ArchiveInfo(
        key=key, size=archive.size, codec=archive.codec, objects=len(objects),
        member_bytes=sum(len(data) for _, data in archive.members),
        created_at=str(archive.manifest.get("created_at"))))


def _source_sha256(s3: Any, entry: Mapping[str, Any],
                   cache: dict[tuple[str, str | None, str | None], str]) -> str:
    """SHA-256 of the exact version the manifest names: by VersionId, else If-Match on its ETag."""
    bucket, key, version, etag = entry["bucket"], entry["key"], entry.get("version_id"), entry.get("etag")
    ident = (f"{bucket}/{key}", version, etag)
    if ident not in cache:
        request: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version:
            request["VersionId"] = version
        elif etag:
            request["IfMatch"] = f'"{etag}"'
        try:
            cache[ident] = hashlib.sha256(s3.get_object(**request)["Body"].read()).hexdigest()
        except Exception as e:
            cache[ident] = f"unreadable: {e.__class__.__name__}"
    return cache[ident]
