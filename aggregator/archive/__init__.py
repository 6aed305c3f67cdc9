"""The archive layer: codecs, hashing writer, pax tar stream, manifest, the one writer.

Imports only from :mod:`aggregator.base`. The pipeline needs :class:`ArchiveWriter`,
:data:`EXTENSIONS` and, to verify an upload, :func:`read_manifest`.
"""

from __future__ import annotations

from aggregator.archive.codecs import CODECS, EXTENSIONS, open_compressor, open_decompressor
from aggregator.archive.errors import ArchiveReadError, SizeMismatch, UnarchivableKey, WriterBroken, WriterClosed
from aggregator.archive.hashing import HashingWriter
from aggregator.archive.manifest import MANIFEST_NAME, ManifestEntry, manifest_bytes, read_manifest
from aggregator.archive.writer import ArchiveSummary, ArchiveWriter, stored_size_bound

__all__ = [
    "CODECS",
    "EXTENSIONS",
    "MANIFEST_NAME",
    "ArchiveReadError",
    "ArchiveSummary",
    "ArchiveWriter",
    "HashingWriter",
    "ManifestEntry",
    "SizeMismatch",
    "UnarchivableKey",
    "WriterBroken",
    "WriterClosed",
    "manifest_bytes",
    "open_compressor",
    "open_decompressor",
    "read_manifest",
    "stored_size_bound",
]
