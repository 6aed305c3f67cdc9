"""The one archive writer: tar -> codec -> HashingWriter -> sink, fed one item at a time.

    item bytes ─► TarStream ─► codec stream ─► HashingWriter ─► sink (spool file)
                  │ SHA-256 of each object       │ SHA-256 + size of the stored archive

``finish`` writes MANIFEST.json, then the tar trailer, then closes the codec frame, in that
order, and returns the stored archive's checksum. The pipeline stages a large body whole
before it becomes a member (``add_staged``), so a GET that breaks costs only its object. A
writer whose member was left half written (a streamed body given to ``add`` that failed
part-way, a disk error) is broken: every later call raises
:class:`WriterBroken`, and the caller must throw the sink's bytes away. Leaving the
``with`` block without ``finish`` abandons the archive; it never finishes one implicitly.

Only one thread may use a writer (house rule 4): nothing here is locked.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType

from aggregator.archive.codecs import Sink, open_compressor
from aggregator.archive.errors import SizeMismatch, UnarchivableKey, WriterBroken, WriterClosed
from aggregator.archive.hashing import HashingWriter
from aggregator.archive.manifest import MANIFEST_NAME, ManifestEntry, manifest_bytes
from aggregator.archive.staging import StagedBody
from aggregator.archive.tarstream import BLOCK, RECORD, TarStream
from aggregator.base.errors import FetchError
from aggregator.base.events import ObjectRef
from aggregator.base.names import MemberNames
from aggregator.base.objects import Fetched, ObjectHead, Streamed


def stored_size_bound(members: Iterable[tuple[int, int]]) -> int:
    """At most how many bytes an archive of these members stores, each given as (data
    size, UTF-8 length of the text its name and manifest entry carry: bucket, key, eTag,
    version id, sequencer): headers (a pax one for a long name), padding, the member name
    escaped at worst three times longer, the manifest entry (JSON-escaped at worst six
    times longer), the trailer, and what a codec adds to incompressible data."""
    total = 16 * RECORD
    for size, name_length in members:
        total += size + 3 * BLOCK + 2 * BLOCK + 9 * name_length + 512
    return total + total // 512


@dataclass(frozen=True, slots=True)
class ArchiveSummary:
    sha256_hex: str  # of the stored (compressed) bytes: the sha256_checksum metadata
    size: int  # stored bytes
    entries: tuple[ManifestEntry, ...]  # archive order, as in MANIFEST.json
    manifest: bytes  # MANIFEST.json exactly as stored in the archive


class ArchiveWriter:
    def __init__(self, sink: Sink, *, codec: str, level: int | None = None, threads: int = 0, archive_id: str,
                 created_at: datetime) -> None:
        if created_at.utcoffset() is None:
            raise ValueError("created_at must be timezone-aware")
        self._hashing = HashingWriter(sink)
        self._codec_name = codec
        self._compressed = open_compressor(codec, self._hashing, level=level, threads=threads)
        self._tar = TarStream(self._compressed)
        self._names = MemberNames()
        self._entries: list[ManifestEntry] = []
        self._archive_id = archive_id
        self._created_at = created_at
        self._state = "open"  # -> "finished" | "broken" | "abandoned"

    # -- state ---------------------------------------------------------------------------
    @property
    def broken(self) -> bool:
        return self._state == "broken"

    @property
    def object_count(self) -> int:
        return len(self._entries)

    @property
    def tar_bytes(self) -> int:
        """Uncompressed tar bytes written so far."""
        return self._tar.offset

    @property
    def stored_bytes(self) -> int:
        """Compressed bytes that reached the sink so far (the codec holds some back)."""
        return self._hashing.size

    def _check_open(self) -> None:
        if self._state == "broken":
            raise WriterBroken("the archive was abandoned after a member failed part-way")
        if self._state != "open":
            raise WriterClosed(f"the archive writer is {self._state}")

    # -- members -------------------------------------------------------------------------
    def add(self, item: Fetched | Streamed) -> ManifestEntry:
        """Write one object as the next member; return its manifest entry.

        Raises before anything is written (the writer stays usable): :class:`FetchError`
        when a whole body's length is not its head's size, :class:`UnarchivableKey`.
        Raises after its header is written (the writer is broken): whatever a streamed
        body raised, or :class:`FetchError` when it gives more or fewer bytes than its size.
        """
        self._check_open()
        if not isinstance(item, (Fetched, Streamed)):
            raise TypeError(f"only Fetched or Streamed items are archived, not {type(item).__name__}")
        ref, head = item.ref, item.head
        if isinstance(item, Fetched) and len(item.body) != head.size:
            raise FetchError(f"{ref.bucket}/{ref.key}: body has {len(item.body)} bytes, its head says {head.size}")
        member = self._names.assign(ref.bucket, ref.key)
        mtime = int(head.last_modified.timestamp())
        with self._writing_member(ref):
            if isinstance(item, Fetched):
                body = item.body
                sha256 = hashlib.sha256(body).hexdigest()
                self._tar.add_bytes(member, body, mtime=mtime)
            else:
                digest = hashlib.sha256()
                try:
                    self._tar.add(member, size=head.size, mtime=mtime, chunks=_hashed(item.chunks, digest))
                except SizeMismatch as e:
                    raise FetchError(f"{ref.bucket}/{ref.key}: {e}") from e
                sha256 = digest.hexdigest()
        return self._entry(ref, head, member=member, sha256=sha256)

    def add_staged(self, ref: ObjectRef, head: ObjectHead, body: StagedBody) -> ManifestEntry:
        """Write a body received whole (:mod:`aggregator.archive.staging`) as the next member.

        Its SHA-256 is the one taken while staging: the file is read once, not hashed again.
        Raises before anything is written (the writer stays usable): :class:`FetchError`
        when the staged size is not its head's size, :class:`UnarchivableKey`. A failure
        while copying the file (the disk) breaks the writer, as for any member.
        """
        self._check_open()
        if body.size != head.size:
            raise FetchError(f"{ref.bucket}/{ref.key}: staged {body.size} bytes, its head says {head.size}")
        member = self._names.assign(ref.bucket, ref.key)
        with self._writing_member(ref):
            self._tar.add(member, size=head.size, mtime=int(head.last_modified.timestamp()), chunks=body.chunks())
        return self._entry(ref, head, member=member, sha256=body.sha256)

    @contextlib.contextmanager
    def _writing_member(self, ref: ObjectRef) -> Iterator[None]:
        """One member's failures mapped once: a half-written member abandons the archive; a
        name tar cannot encode is the object's own fault (nothing was written)."""
        try:
            yield
        except BaseException as e:
            if self._tar.broken:
                self._abandon("broken")
            elif isinstance(e, UnicodeEncodeError):
                raise UnarchivableKey(f"key {ref.key!r} in {ref.bucket} cannot be a tar member name: {e.reason}") from e
            raise

    def _entry(self, ref: ObjectRef, head: ObjectHead, *, member: str, sha256: str) -> ManifestEntry:
        entry = ManifestEntry(
            bucket=ref.bucket,
            key=ref.key,
            member=member,
            size=head.size,
            sha256=sha256,
            etag=head.etag,
            version_id=head.version_id if head.version_id is not None else ref.version_id,
            sequencer=ref.sequencer,
            last_modified=head.last_modified,
        )
        self._entries.append(entry)
        return entry

    def finish(self) -> ArchiveSummary:
        """MANIFEST.json, tar trailer, codec frame: the sink then holds the whole archive."""
        self._check_open()
        try:
            manifest = manifest_bytes(archive_id=self._archive_id, created_at=self._created_at,
                                      codec=self._codec_name, entries=self._entries)
            self._tar.add_bytes(MANIFEST_NAME, manifest, mtime=int(self._created_at.timestamp()))
            self._tar.close()
            self._compressed.close()
            self._hashing.flush()
        except BaseException:
            self._abandon("broken")
            raise
        self._state = "finished"
        return ArchiveSummary(sha256_hex=self._hashing.hexdigest(), size=self._hashing.size,
                              entries=tuple(self._entries), manifest=manifest)

    def abandon(self) -> None:
        """Give up on this archive (idempotent); the sink's bytes are garbage."""
        if self._state == "open":
            self._abandon("abandoned")

    def _abandon(self, state: str) -> None:
        self._state = state
        # Drop the codec so a multi-threaded zstd context is freed now, not at collection.
        self._compressed = _Closed()
        self._tar = TarStream(self._compressed)

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.abandon()


def _hashed(chunks: Iterable[bytes], digest: hashlib._Hash) -> Iterator[bytes]:
    for chunk in chunks:
        digest.update(chunk)
        yield chunk


class _Closed:
    """Stands in for the codec of an abandoned writer: takes nothing."""

    def write(self, data: bytes, /) -> int:
        raise WriterClosed("the archive writer was abandoned")

    def close(self) -> None:
        pass
