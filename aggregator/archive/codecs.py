"""Compression codecs: each codec of the table in :mod:`aggregator.base.codecs` paired with
its streaming compressor and decompressor (one :class:`_Streams` entry per codec).

``CODECS[name](sink, level=..., threads=...)`` returns a stream whose ``write`` compresses
into ``sink`` and whose ``close`` ends the compressed frame without closing ``sink``:
the caller owns the sink (a spool file that is uploaded next). Libraries are imported
inside the factories, so a codec that is never chosen costs nothing at import time.

``open_decompressor(name, source)`` reads an archive back. It raises
:class:`ArchiveReadError` when the compressed stream stops before its end marker: zstd's
own ``stream_reader`` returns a short read without complaint there, which would let a
truncated upload pass for a good one.

gzip is the standard library's zlib. Measured here on 2,000 x 8 KiB text objects, zlib-ng
(PyPI ``zlib-ng``, same levels) compresses level 6 about 1.8x faster and ISA-L (``isal``,
levels 0-3 only) about 5x faster; zstd level 1 to 3 beats both on speed and ratio, so gzip
stays a compatibility option and keeps no extra dependency.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import BinaryIO, Final, Protocol

from aggregator.archive.errors import ArchiveReadError
from aggregator.base import codecs as table


class Sink(Protocol):
    """Where compressed bytes go: a file, a spool, a :class:`HashingWriter`."""

    def write(self, data: bytes, /) -> int | None: ...


class CompressStream(Protocol):
    def write(self, data: bytes, /) -> int: ...

    def close(self) -> None:
        """End the compressed frame (flushing it into the sink); the sink stays open."""


class CodecFactory(Protocol):
    def __call__(self, sink: Sink, *, level: int | None, threads: int) -> CompressStream: ...


def _default_level(name: str, level: int | None) -> int:
    if level is not None:
        return level
    default = table.codec(name).default_level
    assert default is not None
    return default


def _zstd(sink: Sink, *, level: int | None, threads: int) -> CompressStream:
    import zstandard

    # The frame checksum lets every reader (zstd -d, this module) detect a corrupt archive.
    compressor = zstandard.ZstdCompressor(level=_default_level("zstd", level), threads=threads, write_checksum=True)
    stream: CompressStream = compressor.stream_writer(sink, closefd=False)  # type: ignore[arg-type]
    return stream


class _GzipStream:
    """One gzip member through zlib (wbits 16+15: gzip header with mtime 0, CRC trailer)."""

    __slots__ = ("_compress", "_sink")

    def __init__(self, sink: Sink, level: int) -> None:
        self._sink = sink
        self._compress: zlib._Compress | None = zlib.compressobj(level, zlib.DEFLATED, 31)

    def write(self, data: bytes, /) -> int:
        assert self._compress is not None, "write() after close()"
        out = self._compress.compress(data)
        if out:  # zlib keeps most input back until it has a block to emit
            self._sink.write(out)
        return len(data)

    def close(self) -> None:
        if self._compress is not None:
            self._sink.write(self._compress.flush())
            self._compress = None


def _gzip(sink: Sink, *, level: int | None, threads: int) -> CompressStream:
    # zlib has no threads; the setting only applies to zstd.
    return _GzipStream(sink, _default_level("gzip", level))


class _Uncompressed:
    __slots__ = ("_sink",)

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def write(self, data: bytes, /) -> int:
        self._sink.write(data)
        return len(data)

    def close(self) -> None:
        pass


def _none(sink: Sink, *, level: int | None, threads: int) -> CompressStream:
    return _Uncompressed(sink)


def open_compressor(name: str, sink: Sink, *, level: int | None = None, threads: int = 0) -> CompressStream:
    """The named codec's stream into ``sink``; ``level=None`` is the codec's default."""
    return _streams(name).open(sink, level=level, threads=threads)


# -- reading back -------------------------------------------------------------------------

class _Inflater(Protocol):
    """zlib's and zstandard's decompress objects, as used here."""

    def decompress(self, data: bytes, /) -> bytes: ...

    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...


# Compressed bytes fed per step. The output of one step is held in memory, and is at most
# this times the compression ratio: small enough for highly compressible members.
_FEED_BYTES = 32 * 1024


class _DecompressingReader(io.RawIOBase):
    """A readable stream over a compressed source that insists on a complete stream.

    Concatenated streams (several gzip members or zstd frames) are read one after another,
    as the command-line tools do.
    """

    def __init__(self, source: BinaryIO, new_inflater: Callable[[], _Inflater],
                 errors: tuple[type[Exception], ...], codec: str) -> None:
        super().__init__()
        self._source = source
        self._new_inflater = new_inflater
        self._inflater = new_inflater()
        self._errors = errors
        self._codec = codec
        self._buffer = memoryview(b"")
        self._in_stream = False  # fed input that has not reached its end marker yet
        self._at_end = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._buffer:
            if self._at_end:
                return 0
            self._fill()
        n = min(len(buffer), len(self._buffer))
        buffer[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def _fill(self) -> None:
        data = self._source.read(_FEED_BYTES)
        if not data:
            if self._in_stream:
                raise ArchiveReadError(f"{self._codec} stream ends before its end marker: the archive is truncated")
            self._at_end = True
            return
        pieces = []
        while data:
            if self._inflater.eof:
                self._inflater = self._new_inflater()
            try:
                pieces.append(self._inflater.decompress(data))
            except self._errors as e:
                raise ArchiveReadError(f"{self._codec} stream is corrupt: {e}") from e
            self._in_stream = not self._inflater.eof
            data = self._inflater.unused_data if self._inflater.eof else b""
        self._buffer = memoryview(b"".join(pieces))


def _zstd_reader(source: BinaryIO) -> _DecompressingReader:
    import zstandard

    decompressor = zstandard.ZstdDecompressor()
    return _DecompressingReader(source, decompressor.decompressobj, (zstandard.ZstdError,), "zstd")


def _gzip_reader(source: BinaryIO) -> _DecompressingReader:
    return _DecompressingReader(source, lambda: zlib.decompressobj(31), (zlib.error,), "gzip")


@dataclass(frozen=True, slots=True)
class _Streams:
    open: CodecFactory
    read: Callable[[BinaryIO], _DecompressingReader] | None  # None: the stored bytes are the tar


_STREAMS: Final[Mapping[str, _Streams]] = MappingProxyType({
    "zstd": _Streams(_zstd, _zstd_reader),
    "gzip": _Streams(_gzip, _gzip_reader),
    "none": _Streams(_none, None),
})
if set(_STREAMS) != set(table.CODECS):  # a row of the table without its streams, or the reverse
    raise ImportError(f"codec streams {sorted(_STREAMS)} do not match the codec table {sorted(table.CODECS)}")

CODECS: Final[Mapping[str, CodecFactory]] = MappingProxyType({name: s.open for name, s in _STREAMS.items()})
# Derived from the table, for callers that hold a codec name and need its key's extension.
EXTENSIONS: Final[Mapping[str, str]] = MappingProxyType({c.name: c.extension for c in table.CODECS.values()})


def open_decompressor(name: str, source: BinaryIO) -> BinaryIO:
    """A readable stream of the tar bytes inside ``source``; never closes ``source``.

    Reading raises :class:`ArchiveReadError` if the compressed data is corrupt or ends
    early. An uncompressed archive is ``source`` itself: its tar trailer is what proves
    it complete.
    """
    reader = _streams(name).read
    if reader is None:
        return source
    return io.BufferedReader(reader(source), buffer_size=64 * 1024)


def _streams(name: str) -> _Streams:
    return _STREAMS[table.codec(name).name]  # table.codec raises ValueError for an unknown name
