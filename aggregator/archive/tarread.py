"""A minimal sequential tar reader, strict about the end: enough to check our own archives.

``tarfile`` in stream mode takes an archive cut at a member boundary for a complete one;
reading back what was uploaded needs the opposite, so this reader requires the two zero
blocks that end an archive, then zeros up to the end of a whole 10,240-byte record (the
writer, GNU tar and tarfile always pad to one), and raises :class:`ArchiveReadError`
without them. Every byte is looked at: the padding after each header's and member's data
must be zeros too, so a changed byte anywhere in an uncompressed archive is noticed (the
rest is covered by header checksums and the manifest's hashes). It understands ustar
headers and pax ``x`` (``path``, ``size``) and ``g`` headers; other entry types are listed
with their names and sizes and their data is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final

from aggregator.archive.errors import ArchiveReadError
from aggregator.archive.tarstream import BLOCK as _BLOCK
from aggregator.archive.tarstream import RECORD as _RECORD

_ZERO_BLOCK: Final = bytes(_BLOCK)
_SKIP_BYTES: Final = 1 << 20


@dataclass(slots=True)
class TarEntry:
    name: str
    size: int
    typeflag: bytes
    _stream: BinaryIO
    _unread: int

    def read(self) -> bytes:
        """The entry's data; only while the iteration is at this entry."""
        data = _read_exact(self._stream, self._unread, what=f"data of {self.name!r}")
        self._unread = 0
        return data

    def chunks(self, size: int = _SKIP_BYTES) -> Iterator[bytes]:
        """The entry's data in pieces of at most ``size`` bytes (a large member never sits
        in memory whole); only while the iteration is at this entry."""
        while self._unread > 0:
            step = min(self._unread, size)
            data = _read_exact(self._stream, step, what=f"data of {self.name!r}")
            self._unread -= step
            yield data


def iter_entries(stream: BinaryIO) -> Iterator[TarEntry]:
    """Yield each entry in order; data not read by the caller is skipped.

    Reads the archive to the end of its last record: a caller that then finds more bytes
    (other than a compressed stream's end) has found data after the archive.
    """
    pax: dict[str, str] = {}
    offset = 0  # bytes of the tar stream read so far, at block boundaries
    while True:
        header = _read_exact(stream, _BLOCK, what="a tar header", allow_eof=True)
        if not header:
            raise ArchiveReadError("archive ends without its end-of-archive blocks: truncated")
        offset += _BLOCK
        if header == _ZERO_BLOCK:
            second = _read_exact(stream, _BLOCK, what="the end-of-archive blocks", allow_eof=True)
            if second != _ZERO_BLOCK:
                raise ArchiveReadError("a single zero block where the end of archive needs two")
            offset += _BLOCK
            padding = -offset % _RECORD
            _expect_zeros(stream, padding, what="the padding of the archive's last record")
            return
        name, size, typeflag = _parse_header(header)
        padded = size + (-size % _BLOCK)
        if typeflag in (b"x", b"g"):
            records = _parse_pax(_read_exact(stream, size, what="a pax header"))
            _expect_zeros(stream, padded - size, what="the padding of a pax header")
            offset += padded
            if typeflag == b"x":
                pax = records
            continue
        if "path" in pax:
            name = pax["path"]
        if "size" in pax:
            size = _int(pax["size"], "pax size")
            padded = size + (-size % _BLOCK)
        pax = {}
        entry = TarEntry(name=name, size=size, typeflag=typeflag, _stream=stream, _unread=size)
        yield entry
        _skip(stream, entry._unread)
        _expect_zeros(stream, padded - size, what=f"the padding of member {name!r}")
        offset += padded


def _parse_header(block: bytes) -> tuple[str, int, bytes]:
    stored = _octal(block[148:156], "checksum")
    computed = sum(block[:148]) + 8 * ord(" ") + sum(block[156:])
    if stored != computed:
        raise ArchiveReadError("tar header checksum mismatch: the archive is corrupt")
    name = block[:100].split(b"\x00", 1)[0]
    if block[257:263] == b"ustar\x00":
        prefix = block[345:500].split(b"\x00", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape"), _octal(block[124:136], "size"), block[156:157]


def _parse_pax(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    position = 0
    while position < len(data):
        space = data.find(b" ", position)
        if space < 0:
            raise ArchiveReadError("malformed pax header")
        length = _int(data[position:space].decode("ascii", "replace"), "pax record length")
        record = data[space + 1:position + length]
        if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise ArchiveReadError("malformed pax record")
        key, value = record[:-1].split(b"=", 1)
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        position += length
    return records


def _octal(field: bytes, what: str) -> int:
    text = field.rstrip(b"\x00 ").lstrip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise ArchiveReadError(f"tar header {what} field is not octal: {field!r}") from None


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ArchiveReadError(f"{what} is not a number: {text!r}") from None


def _read_exact(stream: BinaryIO, n: int, *, what: str, allow_eof: bool = False) -> bytes:
    data = stream.read(n)
    if len(data) == n or (allow_eof and not data):
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = stream.read(n - got)
        if not more:
            if allow_eof and got == 0:
                return b""
            raise ArchiveReadError(f"archive ends inside {what}: truncated")
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _skip(stream: BinaryIO, n: int) -> None:
    while n > 0:
        step = min(n, _SKIP_BYTES)
        _read_exact(stream, step, what="member data")
        n -= step


def _expect_zeros(stream: BinaryIO, n: int, *, what: str) -> None:
    """Read ``n`` bytes that must all be zero (the writer wrote zeros: anything else was changed)."""
    if n and _read_exact(stream, n, what=what).count(0) != n:
        raise ArchiveReadError(f"non-zero bytes in {what}: the archive was changed or is corrupt")
