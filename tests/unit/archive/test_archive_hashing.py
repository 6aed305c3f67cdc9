"""HashingWriter: the digest and size of exactly the bytes that reached the sink."""

from __future__ import annotations

import hashlib
import io

from aggregator.archive import HashingWriter, open_compressor


def test_digest_equals_sha256_of_sink_bytes() -> None:
    sink = io.BytesIO()
    writer = HashingWriter(sink)
    for piece in (b"", b"a", b"bc" * 1000, bytes(range(256))):
        assert writer.write(piece) == len(piece)
    assert writer.hexdigest() == hashlib.sha256(sink.getvalue()).hexdigest()
    assert writer.size == len(sink.getvalue())


def test_empty_digest() -> None:
    writer = HashingWriter(io.BytesIO())
    assert writer.hexdigest() == hashlib.sha256(b"").hexdigest()
    assert writer.size == 0


def test_under_a_codec_it_hashes_the_compressed_bytes(codec: str) -> None:
    sink = io.BytesIO()
    hashing = HashingWriter(sink)
    stream = open_compressor(codec, hashing, threads=0)
    for i in range(500):
        stream.write(b"record %d\n" % i)
    stream.close()
    assert hashing.hexdigest() == hashlib.sha256(sink.getvalue()).hexdigest()
    assert hashing.size == len(sink.getvalue()) > 0


class Trickle:
    """A raw sink that takes at most 7 bytes per write."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.flushed = 0

    def write(self, data: bytes) -> int:
        self.data += data[:7]
        return min(7, len(data))

    def flush(self) -> None:
        self.flushed += 1


def test_short_writes_are_completed_and_flush_passes_through() -> None:
    sink = Trickle()
    writer = HashingWriter(sink)
    writer.write(b"0123456789" * 10)
    writer.write(b"abc")
    writer.flush()
    assert bytes(sink.data) == b"0123456789" * 10 + b"abc"
    assert writer.hexdigest() == hashlib.sha256(bytes(sink.data)).hexdigest()
    assert sink.flushed == 1


def test_flush_on_a_sink_without_flush() -> None:
    class Plain:
        def write(self, data: bytes) -> None:
            pass

    HashingWriter(Plain()).flush()
