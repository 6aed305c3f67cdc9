"""A pass-through writer that hashes what goes by: nothing is read twice to hash it."""

from __future__ import annotations

import hashlib

from aggregator.archive.codecs import Sink


class HashingWriter:
    """Writes everything to ``sink`` while keeping its SHA-256 and byte count.

    It sits under the compressor, so it sees the archive's stored bytes: its digest is
    the ``sha256_checksum`` of the uploaded object. ``flush`` is passed on; ``close`` is
    not offered, the sink belongs to the caller.
    """

    __slots__ = ("_sha", "_sink", "size")

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes, /) -> int:
        written = self._sink.write(data)
        if written is not None and written < len(data):
            # A raw (unbuffered) sink may take part of a write; hash only once it is all in.
            self._write_rest(memoryview(data)[written:])
        self._sha.update(data)
        self.size += len(data)
        return len(data)

    def _write_rest(self, rest: memoryview) -> None:
        while rest:
            written = self._sink.write(rest.tobytes())
            if written is None:
                return
            if written == 0:
                raise OSError("sink accepted no bytes")
            rest = rest[written:]

    def flush(self) -> None:
        flush = getattr(self._sink, "flush", None)
        if flush is not None:
            flush()

    def hexdigest(self) -> str:
        return self._sha.hexdigest()
