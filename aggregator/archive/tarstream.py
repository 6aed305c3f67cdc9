"""A streaming POSIX pax tar writer: regular files only, headers built directly.

Each member is a ustar header, preceded by a pax extended header (typeflag ``x``) only
when ustar cannot hold a value: a name longer than 100 bytes or not ASCII, a size of
8 GiB or more, an mtime outside 0..8**11-1. No GNU extensions, no user or group names;
mode 0644, uid and gid 0. GNU tar, bsdtar and Python's tarfile all read it.

Building the 512-byte header here costs about a fifth of ``tarfile.TarInfo.tobuf``: the
constant fields are joined once at import, and the checksum adds only the bytes that vary.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Protocol

from aggregator.archive.errors import SizeMismatch, WriterBroken, WriterClosed

BLOCK: Final = 512
RECORD: Final = 20 * BLOCK  # what GNU tar and tarfile pad the end of an archive to
_USTAR_MAX: Final = 8**11  # an 11-digit octal field holds up to this, exclusive
_PAX_NAME: Final = b"././@PaxHeader"  # tarfile's choice; old readers extract it as a plain file

# Fields between name and size: mode, uid, gid.
_MODE_IDS: Final = b"0000644\x00" + b"0000000\x00" + b"0000000\x00"
# Fields after typeflag: linkname, magic "ustar\0" with version "00" (POSIX, not GNU's
# "ustar  \0"), uname, gname, devmajor, devminor (empty, as tarfile leaves them for regular
# files), prefix, padding.
_TAIL: Final = (
    bytes(100) + b"ustar\x0000" + bytes(32) + bytes(32) + bytes(8) + bytes(8) + bytes(155) + bytes(12)
)
# The checksum is computed with its own field as eight spaces.
_CONSTANT_SUM: Final = sum(_MODE_IDS) + 8 * ord(" ") + sum(_TAIL)
_PADDING: Final = tuple(bytes(n) for n in range(BLOCK))
_JOIN_LIMIT: Final = 64 * 1024  # below this, one write of header+data+padding is cheapest

assert 100 + len(_MODE_IDS) + 12 + 12 + 8 + 1 + len(_TAIL) == BLOCK


class Output(Protocol):
    def write(self, data: bytes, /) -> int | None: ...


def _ustar_header(name: bytes, size: int, mtime: int, typeflag: bytes) -> bytes:
    size_field = b"%011o\x00" % size
    mtime_field = b"%011o\x00" % mtime
    checksum = _CONSTANT_SUM + sum(name) + sum(size_field) + sum(mtime_field) + typeflag[0]
    return b"".join((
        name, bytes(100 - len(name)), _MODE_IDS, size_field, mtime_field, b"%06o\x00 " % checksum, typeflag, _TAIL,
    ))


def _pax_record(key: str, value: str) -> bytes:
    """``"%d %s=%s\\n"`` where the leading number counts the whole record, itself included."""
    body = f" {key}={value}\n".encode()
    length = len(body) + len(str(len(body)))
    if len(str(length)) != len(str(len(body))):  # adding the digits added a digit
        length = len(body) + len(str(length))
    return str(length).encode() + body


def _fallback_name(name: str) -> bytes:
    """The ustar name behind a pax ``path``, for readers that ignore pax headers.

    Truncating can leave a last segment of ``.`` or ``..`` or a trailing ``/``; such
    segments are dropped (which only shortens it), so even such a reader extracts a
    regular file inside its directory.
    """
    raw = name.encode("ascii", "replace")[:100]
    kept = [segment for segment in raw.split(b"/") if segment not in (b"", b".", b"..")]
    return b"/".join(kept) or b"_"


def member_header(name: str, *, size: int, mtime: int) -> bytes:
    """The header block(s) of a regular file: a pax header first only when needed."""
    if not name or "\x00" in name:
        raise ValueError(f"tar member name must be non-empty and free of NUL: {name!r}")
    if size < 0:
        raise ValueError(f"negative size {size} for {name!r}")
    if name.isascii() and len(name) <= 100 and size < _USTAR_MAX and 0 <= mtime < _USTAR_MAX:
        return _ustar_header(name.encode("ascii"), size, mtime, b"0")
    records = []
    raw_name = name.encode("utf-8")  # strict: a lone surrogate raises UnicodeEncodeError
    if len(raw_name) > 100 or not name.isascii():
        records.append(_pax_record("path", name))
        raw_name = _fallback_name(name)
    if size >= _USTAR_MAX:
        records.append(_pax_record("size", str(size)))
    if not 0 <= mtime < _USTAR_MAX:
        records.append(_pax_record("mtime", str(mtime)))
    pax_data = b"".join(records)
    return b"".join((
        _ustar_header(_PAX_NAME, len(pax_data), 0, b"x"),
        pax_data,
        _PADDING[-len(pax_data) % BLOCK],
        _ustar_header(raw_name, size if size < _USTAR_MAX else 0, mtime if 0 <= mtime < _USTAR_MAX else 0, b"0"),
    ))


class TarStream:
    """Writes members one after another into ``out``; never seeks, never reads back.

    A member whose data fails part-way (an exception from ``chunks``, a size mismatch)
    leaves a header without its data in ``out``: the stream is then broken and refuses
    everything, ``close`` included. An error raised before the header is written (a bad
    name) leaves it usable.
    """

    __slots__ = ("_broken", "_closed", "_out", "offset")

    def __init__(self, out: Output) -> None:
        self._out = out
        self._broken = False
        self._closed = False
        self.offset = 0  # uncompressed bytes written so far

    @property
    def broken(self) -> bool:
        return self._broken

    def add_bytes(self, name: str, data: bytes, *, mtime: int) -> None:
        """One member whose data is already in memory: usually a single write."""
        self._check_open()
        size = len(data)
        header = member_header(name, size=size, mtime=mtime)
        padding = _PADDING[-size % BLOCK]
        self._broken = True  # until the member is complete
        if size <= _JOIN_LIMIT:
            self._out.write(b"".join((header, data, padding)))
        else:
            self._out.write(header)
            self._out.write(data)
            self._out.write(padding)
        self._broken = False
        self.offset += len(header) + size + len(padding)

    def add(self, name: str, *, size: int, mtime: int, chunks: Iterable[bytes]) -> None:
        """One member of exactly ``size`` bytes, taken from ``chunks`` as they come.

        Raises :class:`SizeMismatch` if ``chunks`` yields more or fewer bytes; an excess
        chunk is not written.
        """
        self._check_open()
        header = member_header(name, size=size, mtime=mtime)
        write = self._out.write
        self._broken = True
        write(header)
        remaining = size
        for chunk in chunks:
            n = len(chunk)
            if n > remaining:
                raise SizeMismatch(f"{name!r}: data runs past the declared {size} bytes")
            if n:
                write(chunk)
                remaining -= n
        if remaining:
            raise SizeMismatch(f"{name!r}: data ends after {size - remaining} of the declared {size} bytes")
        padding = _PADDING[-size % BLOCK]
        write(padding)
        self._broken = False
        self.offset += len(header) + size + len(padding)

    def close(self) -> None:
        """Two zero blocks end the archive, then zeros up to a whole 10 KiB record."""
        self._check_open()
        end = 2 * BLOCK + (-(self.offset + 2 * BLOCK) % RECORD)
        self._broken = True
        self._out.write(bytes(end))
        self._broken = False
        self._closed = True
        self.offset += end

    def _check_open(self) -> None:
        if self._broken:
            raise WriterBroken("tar stream is broken: a member was left incomplete")
        if self._closed:
            raise WriterClosed("tar stream is closed")
