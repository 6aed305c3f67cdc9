"""Reads every archive under a prefix in MinIO and counts what they hold, in memory.

Never extracts to disk: a second copy of an object would overwrite the first and hide
it (FIELD-NOTES). For each stored object under the prefix it checks that the key has the
contract's shape, that ``sha256_checksum`` is the SHA-256 of the stored bytes, that the
stream decompresses whole, that the tar ends with its end-of-archive blocks, that every
member is a POSIX (ustar/pax) regular file with a unique name, that ``MANIFEST.json`` is
the last member and lists the others in order with their sizes and hashes. Objects are
counted per identity (bucket, key, version) across all archives.

The reader is :func:`local.verify.read_archive` (the demo's verifier): zstandard, gzip
and tarfile directly, independent of the package's own codecs and tar code.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from local.verify import EXTENSIONS, Archive, decompress, read_archive
from tests.support.s3events import Uploaded, entry_identity

__all__ = ["EXTENSIONS", "Archive", "Scan", "decompress", "list_keys", "read_archive", "scan"]


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
