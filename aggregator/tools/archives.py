"""Reading one archive once, checking everything on the way (shared by verify and extract).

An archive is a local file or ``s3://BUCKET/KEY`` on MinIO. The stored bytes are hashed
as they stream by (compared with the ``sha256_checksum`` metadata when the archive comes
from MinIO), decompressed with the codec its name ends in, walked member by member with
the strict tar reader (:mod:`aggregator.archive.tarread`: a missing end-of-archive block
or record padding is a truncation, not an end; padding that is not zeros was changed),
each member hashed, and the last member, ``MANIFEST.json``,
compared with what was read: same members in the same order, sizes and SHA-256 equal,
nothing missing or extra. Each finding is one line naming the archive and the member.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from aggregator.archive.codecs import EXTENSIONS, open_decompressor
from aggregator.archive.errors import ArchiveReadError
from aggregator.archive.manifest import MANIFEST_NAME
from aggregator.archive.tarread import iter_entries
from aggregator.tools.common import UsageError, error_code

if TYPE_CHECKING:
    from aggregator.tools.common import Environment

METADATA_KEY = "sha256_checksum"
_READ_BYTES = 1 << 20
_REGULAR = (b"0", b"\x00")
# Longest suffix first: ".tar" is also the end of ".tar.gz"'s stem.
_SUFFIXES = sorted(((ext, codec) for codec, ext in EXTENSIONS.items()), key=lambda pair: -len(pair[0]))


def codec_of(name: str) -> str:
    for suffix, codec in _SUFFIXES:
        if name.endswith(suffix):
            return codec
    known = ", ".join(suffix for suffix, _ in _SUFFIXES)
    raise UsageError(f"{name}: cannot tell the codec from the name (expected {known}); pass --codec")


@dataclass(frozen=True)
class ArchiveSource:
    """Where an archive's bytes come from, and what its store says about them."""

    label: str  # how problem lines name it
    name: str  # the file name or key, for the codec and the archive id
    open: Callable[[], BinaryIO]
    expected_sha256: str | None = None  # the sha256_checksum metadata, when stored with one
    has_metadata: bool = False  # False for a local file: nothing to compare with


def resolve(spec: str, env: Environment) -> ArchiveSource:
    """A local path or ``s3://BUCKET/KEY`` (MinIO, credentials from ``MINIO_SECRET_ID``)."""
    if spec.startswith("s3://"):
        bucket, _, key = spec[len("s3://"):].partition("/")
        if not bucket or not key:
            raise UsageError(f"{spec}: expected s3://BUCKET/KEY")
        return _minio_source(spec, bucket, key, env)
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"{spec}: no such file")

    def open_file() -> BinaryIO:
        try:
            return path.open("rb")
        except OSError as e:
            raise UsageError(f"{spec}: cannot read: {e.strerror or e}") from e

    return ArchiveSource(label=spec, name=path.name, open=open_file)


def _minio_source(spec: str, bucket: str, key: str, env: Environment) -> ArchiveSource:
    from botocore.exceptions import BotoCoreError, ClientError

    client = env.minio()
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError) as e:
        raise UsageError(f"{spec}: cannot read: {error_code(e)}") from e
    metadata = {name.lower(): value for name, value in head.get("Metadata", {}).items()}
    etag = head.get("ETag")

    def open_object() -> BinaryIO:
        try:
            # If-Match: the bytes read are the ones whose metadata was just read.
            response = (client.get_object(Bucket=bucket, Key=key, IfMatch=etag) if etag
                        else client.get_object(Bucket=bucket, Key=key))
            body: BinaryIO = response["Body"]  # type: ignore[assignment]  # StreamingBody reads like one
        except (ClientError, BotoCoreError) as e:
            raise UsageError(f"{spec}: cannot read: {error_code(e)}") from e
        return body

    return ArchiveSource(label=spec, name=key.rsplit("/", 1)[-1], open=open_object,
                         expected_sha256=metadata.get(METADATA_KEY), has_metadata=True)


class _HashingReader:
    """Hashes the stored bytes as the decompressor pulls them."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data

    def drain(self) -> int:
        """Whatever is left, hashed (so the stored SHA-256 covers it); returns how many bytes
        that was, which should be none."""
        count = 0
        while chunk := self.read(_READ_BYTES):
            count += len(chunk)
        return count


@dataclass(frozen=True)
class MemberSeen:
    name: str
    size: int
    sha256: str


@dataclass
class ArchiveCheck:
    label: str
    problems: list[str] = field(default_factory=list)
    members: list[MemberSeen] = field(default_factory=list)
    manifest: dict[str, Any] | None = None
    stored_sha256: str = ""
    stored_size: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, text: str) -> None:
        self.problems.append(f"{self.label}: {text}")


# Called with each member's index and name; returns where its bytes go (or None).
MemberSink = Callable[[int, str], IO[bytes] | None]


def check(source: ArchiveSource, *, codec: str | None = None, sink: MemberSink | None = None) -> ArchiveCheck:
    """Read ``source`` once and check it whole; ``sink`` receives each member's bytes.

    Raises :class:`UsageError` only when the input cannot be read at all (no such file,
    access denied, the store unreachable); everything wrong with the bytes is a problem.
    """
    result = ArchiveCheck(label=source.label)
    codec = codec or codec_of(source.name)
    raw = source.open()
    with contextlib.closing(raw):
        hashing = _HashingReader(raw)
        try:
            _walk(hashing, codec, result, sink)
        except ArchiveReadError as e:
            result.problem(str(e))
        except (OSError, ValueError) as e:  # a read that fails half-way (network, disk)
            raise UsageError(f"{source.label}: read failed: {type(e).__name__}: {e}") from e
        except Exception as e:  # botocore's streaming errors have no common base with OSError
            if type(e).__module__.startswith(("botocore", "urllib3")):
                raise UsageError(f"{source.label}: read failed: {error_code(e)}") from e
            raise
    result.stored_sha256, result.stored_size = hashing.sha.hexdigest(), hashing.size
    if source.has_metadata:
        if not source.expected_sha256:
            result.problem(f"no {METADATA_KEY} metadata: the archive was never completed")
        elif source.expected_sha256.lower() != result.stored_sha256:
            result.problem(f"stored bytes have SHA-256 {result.stored_sha256}, "
                           f"{METADATA_KEY} metadata says {source.expected_sha256}")
    if result.manifest is not None:
        _compare(result, source, codec)
    return result


def _walk(hashing: _HashingReader, codec: str, result: ArchiveCheck, sink: MemberSink | None) -> None:
    stream = open_decompressor(codec, hashing)  # type: ignore[arg-type]
    manifest_bytes: bytes | None = None
    last_name: str | None = None
    for index, entry in enumerate(iter_entries(stream)):
        last_name = entry.name
        if entry.name == MANIFEST_NAME:
            manifest_bytes = entry.read()
            continue
        if manifest_bytes is not None:
            result.problem(f"member {MANIFEST_NAME} is not the last member (followed by {entry.name!r})")
            manifest_bytes = None
        if entry.typeflag not in _REGULAR:
            result.problem(f"member {entry.name!r}: not a regular file (type {entry.typeflag!r})")
            continue
        out = sink(index, entry.name) if sink is not None else None
        digest = hashlib.sha256()
        size = 0
        for chunk in entry.chunks(_READ_BYTES):
            digest.update(chunk)
            size += len(chunk)
            if out is not None:
                out.write(chunk)
        if out is not None:
            out.close()
        result.members.append(MemberSeen(entry.name, size, digest.hexdigest()))
    # iter_entries has read the end blocks and the zeros to the end of their record (the
    # writer always ends on a whole record). Past them: only the codec's end marker (a
    # truncated frame fails here); any byte more, even a zero, is not what was written.
    trailing = sum(len(chunk) for chunk in iter(lambda: stream.read(_READ_BYTES), b""))
    trailing += hashing.drain()
    if trailing:
        result.problem(f"{trailing} bytes after the end of the archive's last record")
    if last_name is None:
        result.problem(f"archive has no members, so no {MANIFEST_NAME}")
    elif manifest_bytes is None:
        if last_name != MANIFEST_NAME:
            result.problem(f"last member is {last_name!r}, not {MANIFEST_NAME}")
        return
    else:
        result.manifest = _parse_manifest(manifest_bytes, result)


def _parse_manifest(data: bytes, result: ArchiveCheck) -> dict[str, Any] | None:
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as e:
        result.problem(f"member {MANIFEST_NAME}: not valid JSON ({type(e).__name__})")
        return None
    if not isinstance(document, dict) or not isinstance(document.get("objects"), list):
        result.problem(f"member {MANIFEST_NAME}: not an object with an 'objects' list")
        return None
    for index, entry in enumerate(document["objects"]):
        if not (isinstance(entry, dict) and isinstance(entry.get("member"), str)
                and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)
                and isinstance(entry.get("bucket"), str) and isinstance(entry.get("key"), str)):
            result.problem(f"member {MANIFEST_NAME}: object {index} lacks bucket, key, member, size or sha256")
            return None
    return document


def _compare(result: ArchiveCheck, source: ArchiveSource, codec: str) -> None:
    assert result.manifest is not None
    manifest = result.manifest
    if manifest.get("codec") not in (None, codec):
        result.problem(f"member {MANIFEST_NAME}: codec {manifest.get('codec')!r}, but the name says {codec!r}")
    archive_id = manifest.get("archive_id")
    if source.has_metadata and isinstance(archive_id, str) and not source.name.startswith(archive_id):
        result.problem(f"member {MANIFEST_NAME}: archive_id {archive_id!r} is not the key's")
    listed = {entry["member"]: entry for entry in manifest["objects"]}
    if len(listed) != len(manifest["objects"]):
        result.problem(f"member {MANIFEST_NAME}: lists a member name twice")
    seen: set[str] = set()
    for member in result.members:
        if member.name in seen:
            result.problem(f"member {member.name!r}: appears twice in the archive")
            continue
        seen.add(member.name)
        entry = listed.get(member.name)
        if entry is None:
            result.problem(f"member {member.name!r}: not listed in {MANIFEST_NAME} (extra)")
            continue
        if entry["size"] != member.size:
            result.problem(f"member {member.name!r}: {member.size} bytes, {MANIFEST_NAME} says {entry['size']}")
        if entry["sha256"].lower() != member.sha256:
            result.problem(f"member {member.name!r}: SHA-256 {member.sha256}, {MANIFEST_NAME} says "
                           f"{entry['sha256']} (tampered or corrupt)")
    for name in listed:
        if name not in seen:
            result.problem(f"member {name!r}: listed in {MANIFEST_NAME} but missing from the archive")
    order = [m.name for m in result.members if m.name in listed]
    if not result.problems and order != [entry["member"] for entry in manifest["objects"]]:
        result.problem(f"members are not in {MANIFEST_NAME}'s order")


def entries(check_result: ArchiveCheck) -> Iterator[dict[str, Any]]:
    """The manifest's object entries of a checked archive (nothing if it had none)."""
    if check_result.manifest is not None:
        yield from check_result.manifest["objects"]
