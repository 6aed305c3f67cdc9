"""Codec registry: each codec round-trips, ends its frame on close, never closes the sink."""

from __future__ import annotations

import gzip
import io
import zlib
from typing import Any

import pytest
import zstandard

from aggregator.archive import CODECS, EXTENSIONS, ArchiveReadError, open_compressor, open_decompressor
from aggregator.base import codecs as table
from aggregator.base.settings import Settings


class RecordingSink(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.close_calls = 0

    def close(self) -> None:
        self.close_calls += 1


def compress(codec: str, pieces: list[bytes], **options: int | None) -> bytes:
    sink = RecordingSink()
    stream = open_compressor(codec, sink, **options)  # type: ignore[arg-type]
    for piece in pieces:
        assert stream.write(piece) == len(piece)
    stream.close()
    assert sink.close_calls == 0, "the codec must not close the sink"
    assert not sink.closed
    return sink.getvalue()


PIECES = [b"", b"hello " * 1000, bytes(range(256)) * 300, b"x", b"tail"]


def test_registry_names_match_settings_and_extensions() -> None:
    assert set(CODECS) == set(EXTENSIONS) == set(table.CODECS)
    assert dict(EXTENSIONS) == {"zstd": ".tar.zst", "gzip": ".tar.gz", "none": ".tar"}
    for name, extension in EXTENSIONS.items():
        settings = Settings(idempotency_table_name="t", minio_secret_id="s", compression=name)
        assert settings.archive_extension == extension


def test_the_table_answers_for_names_and_keys() -> None:
    assert table.extension("gzip") == ".tar.gz"
    assert table.codec("zstd").default_level == 3 and table.codec("none").default_level is None
    for name, extension in EXTENSIONS.items():
        found = table.codec_for_key(f"archives/2025/03/04/05/20250304T050607Z-abc{extension}")
        assert found is not None and found.name == name
    assert table.codec_for_key("archives/x.tar.bz2") is None
    assert table.codec_for_key("archives/x.zst") is None
    with pytest.raises(ValueError, match="unknown codec 'lz4'; known: zstd, gzip, none"):
        table.codec("lz4")
    with pytest.raises(ValueError, match="unknown codec"):
        open_compressor("lz4", io.BytesIO())


def test_a_default_level_outside_its_range_is_refused() -> None:
    with pytest.raises(ValueError, match="default level"):
        table.Codec("x", ".tar.x", 1, 3, 4)


@pytest.mark.parametrize("level", [None, 1, 3])
def test_every_codec_round_trips(codec: str, level: int | None, kit: Any) -> None:
    data = compress(codec, PIECES, level=level if codec != "none" else None)
    expected = b"".join(PIECES)
    assert kit.decompress(data, codec) == expected
    assert open_decompressor(codec, io.BytesIO(data)).read() == expected


def test_zstd_frame_has_a_checksum_and_threads_work() -> None:
    data = compress("zstd", PIECES * 50, threads=2)
    params = zstandard.get_frame_parameters(data)
    assert params.has_checksum
    assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read() == b"".join(PIECES * 50)


def test_default_levels_are_the_libraries_defaults() -> None:
    text = b"the quick brown fox " * 5000
    assert compress("zstd", [text]) == compress("zstd", [text], level=3)
    assert compress("gzip", [text]) == compress("gzip", [text], level=6)
    assert compress("gzip", [text], level=1) != compress("gzip", [text], level=9)


def test_gzip_is_one_standard_member() -> None:
    data = compress("gzip", PIECES)
    assert data[:3] == b"\x1f\x8b\x08"
    assert gzip.decompress(data) == b"".join(PIECES)
    assert zlib.decompress(data, 31) == b"".join(PIECES)


def test_none_is_identity() -> None:
    assert compress("none", PIECES) == b"".join(PIECES)


def test_close_twice_is_harmless(codec: str) -> None:
    sink = io.BytesIO()
    stream = open_compressor(codec, sink)
    stream.write(b"abc")
    stream.close()
    size = len(sink.getvalue())
    stream.close()
    assert len(sink.getvalue()) == size


def test_unknown_codec_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown codec 'lz4'"):
        open_compressor("lz4", io.BytesIO())
    with pytest.raises(ValueError, match="unknown codec"):
        open_decompressor("bz2", io.BytesIO())


@pytest.mark.parametrize("codec_name", ["zstd", "gzip"])
def test_truncated_stream_is_an_error_at_every_cut(codec_name: str) -> None:
    data = compress(codec_name, PIECES)
    for cut in sorted({1, 2, 5, 10, len(data) // 2, len(data) - 8, len(data) - 4, len(data) - 1}):
        with pytest.raises(ArchiveReadError, match=r"truncated|corrupt"):
            open_decompressor(codec_name, io.BytesIO(data[:cut])).read()


@pytest.mark.parametrize("codec_name", ["zstd", "gzip"])
def test_corrupt_stream_is_an_error(codec_name: str) -> None:
    data = bytearray(compress(codec_name, [b"payload " * 4000]))
    data[len(data) - 6] ^= 0xFF  # inside the checksum / CRC trailer
    with pytest.raises(ArchiveReadError, match="corrupt"):
        open_decompressor(codec_name, io.BytesIO(bytes(data))).read()


@pytest.mark.parametrize("codec_name", ["zstd", "gzip"])
def test_concatenated_streams_read_like_the_cli(codec_name: str) -> None:
    data = compress(codec_name, [b"first|"]) + compress(codec_name, [b"second"])
    assert open_decompressor(codec_name, io.BytesIO(data)).read() == b"first|second"
    with pytest.raises(ArchiveReadError):
        open_decompressor(codec_name, io.BytesIO(data + b"garbage")).read()


def test_decompressor_reads_in_small_steps_and_leaves_source_open() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    data = compress("zstd", [payload])
    source = io.BytesIO(data)
    reader = open_decompressor("zstd", source)
    parts = []
    while piece := reader.read(1000):
        parts.append(piece)
    assert b"".join(parts) == payload
    reader.close()
    assert not source.closed


def test_empty_compressed_source_reads_as_empty(codec: str) -> None:
    assert open_decompressor(codec, io.BytesIO(b"")).read() == b""
