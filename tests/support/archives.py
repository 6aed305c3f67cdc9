"""Reads every archive under a prefix in MinIO and counts what they hold, in memory.

Never extracts to disk: a second copy of an object would overwrite the first and hide
it (FIELD-NOTES). For each stored object under the prefix it checks that the key has the
contract's shape, that ``sha256_checksum`` is the SHA-256 of the stored bytes, that the
stream decompresses whole, that the tar ends with its end-of-archive blocks, that every
member is a POSIX (ustar/pax) regular file with a unique name, that ``MANIFEST.json`` is
the last member and lists the others in order with their sizes and hashes. Objects are
counted per identity (bucket, key, version) across all archives.

This is an independent reader (zstandard, gzip, tarfile), not the package's own.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import zstandard

from tests.support.s3events import Uploaded, entry_identity

EXTENSIONS = {".tar.zst": "zstd", ".tar.gz": "gzip", ".tar": "none"}
_POSIX_MAGIC = b"ustar\x0000"


@dataclass
class Archive:
    key: str
    codec: str
    size: int
    manifest: dict[str, Any]
    members: list[tuple[str, bytes]]  # (name, data) without MANIFEST.json


@dataclass
class Scan:
    archives: list[Archive] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    copies: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    digests: dict[tuple[str, str, str], set[str]] = field(default_factory=dict)  # identity -> member sha256s
    pending_uploads: list[str] = field(default_factory=list)  # keys of multipart uploads left behind

    @property
    def objects(self) -> int:
        return sum(self.copies.values())

    def duplicates(self) -> dict[tuple[str, str, str], int]:
        return {identity: n for identity, n in self.copies.items() if n > 1}

    def exactly_once(self, expected: Iterable[Uploaded], *, allow_extra: bool = False,
                     pending_uploads_ok: bool = False) -> list[str]:
        """Problems with "every expected object in exactly one archive, with its bytes".

        ``pending_uploads_ok``: a multipart upload killed mid-way cannot abort itself; its
        parts wait for the bucket's lifecycle rule, but its key must not exist.
        """
        problems = list(self.problems)
        archive_keys = {archive.key for archive in self.archives}
        if self.pending_uploads and not pending_uploads_ok:
            problems.append(f"multipart uploads left behind: {self.pending_uploads}")
        problems += [f"{key}: exists although its multipart upload never completed"
                     for key in self.pending_uploads if key in archive_keys]
        wanted = {obj.identity: obj for obj in expected}
        for identity, obj in wanted.items():
            count = self.copies.get(identity, 0)
            if count != 1:
                problems.append(f"{identity} is in {count} archives, expected exactly 1")
            elif self.digests.get(identity) != {obj.sha256}:
                problems.append(f"{identity}: archived bytes differ from the uploaded version")
        if not allow_extra:
            for identity, count in self.copies.items():
                if identity not in wanted:
                    problems.append(f"{identity} is archived ({count}x) but not expected")
        return problems


def list_keys(minio: Any, bucket: str, prefix: str) -> list[str]:
    pages = minio.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/")
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def decompress(codec: str, data: bytes) -> bytes:
    if codec == "zstd":
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
        return reader.read()
    if codec == "gzip":
        return gzip.decompress(data)
    return data


def scan(minio: Any, bucket: str, prefix: str, *, keys: Iterable[str] | None = None) -> Scan:
    result = Scan()
    prefix = prefix.rstrip("/")
    for key in (list_keys(minio, bucket, prefix) if keys is None else keys):
        try:
            archive = read_archive(minio, bucket, key, prefix=prefix, problems=result.problems)
        except Exception as e:  # an unreadable object under a final key is itself the finding
            result.problems.append(f"{key}: unreadable: {type(e).__name__}: {e}")
            continue
        if archive is None:
            continue
        result.archives.append(archive)
        for (_, data), entry in zip(archive.members, archive.manifest["objects"], strict=True):
            identity = entry_identity(entry)
            result.copies[identity] += 1
            result.digests.setdefault(identity, set()).add(hashlib.sha256(data).hexdigest())
    uploads = minio.list_multipart_uploads(Bucket=bucket, Prefix=prefix + "/").get("Uploads", [])
    result.pending_uploads = [upload["Key"] for upload in uploads]
    return result


def read_archive(minio: Any, bucket: str, key: str, *, prefix: str, problems: list[str]) -> Archive | None:
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
        problems.append(f"{key}: sha256_checksum {checksum!r} is missing or not the SHA-256 of the stored bytes")
        return None
    raw = decompress(codec, stored)
    members: list[tuple[str, bytes]] = []
    end = 0
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        for info in tar:
            if raw[info.offset + 257:info.offset + 265] != _POSIX_MAGIC:
                problems.append(f"{key}: {info.name!r} has no POSIX ustar/pax header")
            if not info.isfile():
                problems.append(f"{key}: {info.name!r} is not a regular file")
                continue
            handle = tar.extractfile(info)
            members.append((info.name, handle.read() if handle else b""))
            end = info.offset_data + info.size + (-info.size % 512)
    if raw[end:end + 1024] != bytes(1024) or len(raw) < end + 1024:
        problems.append(f"{key}: no end-of-archive blocks after the last member (truncated)")
    names = [name for name, _ in members]
    if len(set(names)) != len(names):
        problems.append(f"{key}: duplicate member names")
    if not members or names[-1] != "MANIFEST.json":
        problems.append(f"{key}: MANIFEST.json is not the last member")
        return None
    manifest = json.loads(members[-1][1])
    objects = manifest.get("objects", [])
    if manifest.get("archive_id") != shape.group(1):
        problems.append(f"{key}: manifest archive_id differs from the key")
    if [o.get("member") for o in objects] != names[:-1]:
        problems.append(f"{key}: the manifest does not list the members in archive order")
        return None
    for (name, data), entry in zip(members[:-1], objects, strict=True):
        if entry.get("size") != len(data) or entry.get("sha256") != hashlib.sha256(data).hexdigest():
            problems.append(f"{key}: {name!r}: size or sha256 differ from the manifest")
    return Archive(key=key, codec=codec, size=len(stored), manifest=manifest, members=members[:-1])
