"""Archives built for the tool tests: by the real writer, or by hand (tarfile) when a test
needs one the writer would never produce (an extra member, a missing one)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import zstandard

from aggregator.archive import ArchiveWriter
from aggregator.archive.codecs import EXTENSIONS
from aggregator.base.events import ObjectRef
from aggregator.base.objects import Fetched, ObjectHead

CREATED_AT = datetime(2026, 12, 6, 18, 0, 0, tzinfo=UTC)
LAST_MODIFIED = datetime(2026, 12, 1, 12, 0, 1, tzinfo=UTC)
ARCHIVE_ID = "20261206T180000Z-0123456789abcdef0123456789abcdef"


def build(directory: Path, objects: list[tuple[str, str, bytes]], *, codec: str = "zstd") -> Path:
    """An archive of ``(bucket, key, body)`` written by :class:`ArchiveWriter`."""
    path = directory / f"{ARCHIVE_ID}{EXTENSIONS[codec]}"
    with path.open("wb") as sink:
        writer = ArchiveWriter(sink, codec=codec, archive_id=ARCHIVE_ID, created_at=CREATED_AT)
        for bucket, key, body in objects:
            etag = hashlib.md5(body).hexdigest()
            ref = ObjectRef(bucket=bucket, key=key, size=len(body), etag=etag, version_id=None, sequencer="01")
            writer.add(Fetched(ref=ref, head=ObjectHead(len(body), LAST_MODIFIED, etag, None), body=body))
        writer.finish()
    return path


def hand_made(path: Path, members: list[tuple[str, bytes]], manifest: dict[str, object]) -> Path:
    """A pax tar of ``members`` then MANIFEST.json, zstd-compressed, at ``path``."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [*members, ("MANIFEST.json", json.dumps(manifest).encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    return path


def manifest_of(objects: list[tuple[str, str, bytes]]) -> dict[str, object]:
    return {"archive_id": ARCHIVE_ID, "created_at": "2026-12-06T18:00:00Z", "codec": "zstd", "objects": [
        {"bucket": bucket, "key": key, "member": f"{bucket}/{key}", "size": len(body),
         "sha256": hashlib.sha256(body).hexdigest(), "etag": hashlib.md5(body).hexdigest(), "version_id": None,
         "sequencer": "01", "last_modified": "2026-12-01T12:00:01Z"} for bucket, key, body in objects]}
