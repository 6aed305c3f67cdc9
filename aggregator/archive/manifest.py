"""MANIFEST.json, the last member of every archive (docs/contract.md §5), and reading it back.

    {"archive_id": ..., "created_at": "2025-01-02T03:04:05Z", "codec": "zstd",
     "objects": [{"bucket", "key", "member", "size", "sha256", "etag", "version_id",
                  "sequencer", "last_modified"}, ...]}

``objects`` is in archive order. Times are RFC 3339 in UTC with a ``Z``, with fractional
seconds only when there are any.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO, Final

from aggregator.archive.codecs import open_decompressor
from aggregator.archive.errors import ArchiveReadError
from aggregator.archive.tarread import iter_entries

MANIFEST_NAME: Final = "MANIFEST.json"


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    bucket: str
    key: str  # the original key, decoded
    member: str  # its name in the archive
    size: int
    sha256: str  # lowercase hex of the object's bytes
    etag: str  # without quotes
    version_id: str | None
    sequencer: str | None
    last_modified: datetime  # timezone-aware

    def to_json(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "key": self.key,
            "member": self.member,
            "size": self.size,
            "sha256": self.sha256,
            "etag": self.etag,
            "version_id": self.version_id,
            "sequencer": self.sequencer,
            "last_modified": rfc3339(self.last_modified),
        }


def rfc3339(moment: datetime) -> str:
    """``2025-01-02T03:04:05Z`` (``.123456`` before the ``Z`` when there is a fraction)."""
    offset = moment.utcoffset()
    if offset is None:
        raise ValueError(f"naive datetime {moment!r}: archive times must be timezone-aware")
    if offset:
        moment = moment.astimezone(UTC)
    # isoformat() of a UTC time ends in "+00:00" and shows microseconds only when there
    # are some; it costs a third of strftime, once per object.
    return moment.isoformat()[:-6] + "Z"


def manifest_bytes(*, archive_id: str, created_at: datetime, codec: str, entries: Iterable[ManifestEntry]) -> bytes:
    document = {
        "archive_id": archive_id,
        "created_at": rfc3339(created_at),
        "codec": codec,
        "objects": [entry.to_json() for entry in entries],
    }
    # UTF-8 rather than \u escapes keeps non-ASCII keys readable; the member names are
    # already safe, the keys here are only data.
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def read_manifest(source: BinaryIO, *, codec: str) -> dict[str, Any]:
    """Stream through an archive and return its parsed MANIFEST.json.

    Only the manifest's bytes are kept in memory. Raises :class:`ArchiveReadError` if the
    archive is corrupt or truncated (compressed stream or tar trailer incomplete), or if
    its last member is not MANIFEST.json.
    """
    stream = open_decompressor(codec, source)
    last_name: str | None = None
    manifest: bytes | None = None
    for entry in iter_entries(stream):
        last_name = entry.name
        manifest = entry.read() if entry.name == MANIFEST_NAME else None
    # Record padding after the end blocks, then the compressed stream's end marker: a
    # compressed archive cut there is still truncated.
    while stream.read(1 << 16):
        pass
    if last_name is None:
        raise ArchiveReadError("archive has no members, so no MANIFEST.json")
    if manifest is None:
        raise ArchiveReadError(f"last member is {last_name!r}, not {MANIFEST_NAME}")
    try:
        document = json.loads(manifest)
    except ValueError as e:
        raise ArchiveReadError(f"{MANIFEST_NAME} is not valid JSON: {e}") from e
    if not isinstance(document, dict):
        raise ArchiveReadError(f"{MANIFEST_NAME} is a JSON {type(document).__name__}, not an object")
    return document
