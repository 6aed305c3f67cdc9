"""The pax tar writer, read back by tarfile and by the strict reader."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator

import pytest

from aggregator.archive import SizeMismatch, WriterBroken, WriterClosed
from aggregator.archive.errors import ArchiveReadError
from aggregator.archive.tarread import iter_entries
from aggregator.archive.tarstream import BLOCK, RECORD, TarStream, member_header

MTIME = 1_740_830_401


def tar_of(build: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    stream = TarStream(out)
    for name, data in build:
        stream.add_bytes(name, data, mtime=MTIME)
    stream.close()
    assert stream.offset == len(out.getvalue())
    return out.getvalue()


def members(raw: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    result = []
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as archive:
        for info in archive:
            extracted = archive.extractfile(info)
            assert extracted is not None
            result.append((info, extracted.read()))
    return result


@pytest.mark.parametrize("name", ["b/k", "bucket/" + "a" * 93, "b/with space/and=equals"])
def test_short_ascii_header_is_byte_identical_to_tarfile(name: str) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = 12345, MTIME, 0o644
    assert member_header(name, size=12345, mtime=MTIME) == info.tobuf(tarfile.PAX_FORMAT)
    assert len(member_header(name, size=12345, mtime=MTIME)) == BLOCK


@pytest.mark.parametrize("name", [
    "b/" + "a" * 99,  # 101 bytes
    "b/" + "x/" * 600 + "end",  # > 1 KiB
    "b/é",  # short but not ASCII
    "b/日本語/キー.txt",
    "b/" + "€" * 400,
    "b/" + "a" * 97 + "/..",  # truncation of the ustar fallback would end in '..'
])
def test_pax_path_for_long_or_non_ascii_names(name: str) -> None:
    raw = tar_of([(name, b"data")])
    header = member_header(name, size=4, mtime=MTIME)
    assert len(header) > BLOCK and header[156:157] == b"x"
    fallback = header[-BLOCK:][:100].rstrip(b"\x00")
    assert fallback.isascii() and not fallback.startswith(b"/")
    assert all(segment not in (b"", b".", b"..") for segment in fallback.split(b"/"))
    [(info, data)] = members(raw)
    assert info.name == name and data == b"data"
    assert info.pax_headers == {"path": name}
    [entry] = list(iter_entries(io.BytesIO(raw)))
    assert entry.name == name


def test_huge_size_and_odd_mtime_go_to_pax() -> None:
    size = 8 * 1024**3 + 5
    header = member_header("b/big", size=size, mtime=-3) + member_header("b/late", size=1, mtime=8**11)
    with tarfile.open(fileobj=io.BytesIO(header), mode="r|") as archive:
        first = archive.next()
        assert first is not None
        assert (first.name, first.size, first.mtime) == ("b/big", size, -3)
    assert b" size=8589934597\n" in header and b" mtime=-3\n" in header


def test_small_values_need_no_pax_header() -> None:
    assert len(member_header("b/" + "a" * 98, size=8**11 - 1, mtime=8**11 - 1)) == BLOCK


def test_pax_record_lengths_count_themselves() -> None:
    # A record whose length crosses a power of ten when its own digits are added.
    for n in range(80, 120):
        name = "b/" + "é" * n
        header = member_header(name, size=0, mtime=MTIME)
        record_length = int(header[BLOCK:BLOCK + 8].split(b" ", 1)[0])
        record = header[BLOCK:BLOCK + record_length]
        assert record.endswith(b"\n") and record.split(b" ", 1)[1] == b"path=" + name.encode() + b"\n"


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 10240, 100_000])
def test_sizes_round_trip_with_padding(size: int) -> None:
    data = bytes((i * 7) % 251 for i in range(size))
    raw = tar_of([("b/a", data), ("b/c", b"")])
    assert len(raw) % RECORD == 0
    [(first, first_data), (second, second_data)] = members(raw)
    assert first_data == data and first.size == size and first.mtime == MTIME
    assert second_data == b"" and second.size == 0


def test_chunks_stream_into_one_member() -> None:
    out = io.BytesIO()
    stream = TarStream(out)
    chunks = [b"abc", b"", b"d" * 1000, b"e"]
    stream.add("b/streamed", size=1004, mtime=MTIME, chunks=iter(chunks))
    stream.add_bytes("b/after", b"ok", mtime=MTIME)
    stream.close()
    result = members(out.getvalue())
    assert [(i.name, d) for i, d in result] == [("b/streamed", b"".join(chunks)), ("b/after", b"ok")]


@pytest.mark.parametrize(("declared", "chunks", "message"), [
    (10, [b"12345"], "ends after 5 of the declared 10"),
    (10, [b"12345", b"678901"], "past the declared 10"),
    (0, [b"x"], "past the declared 0"),
])
def test_size_mismatch_breaks_the_stream(declared: int, chunks: list[bytes], message: str) -> None:
    out = io.BytesIO()
    stream = TarStream(out)
    stream.add_bytes("b/good", b"fine", mtime=MTIME)
    before = len(out.getvalue())
    with pytest.raises(SizeMismatch, match=message):
        stream.add("b/bad", size=declared, mtime=MTIME, chunks=iter(chunks))
    assert stream.broken
    assert len(out.getvalue()) - before <= BLOCK + declared  # the excess chunk was not written
    with pytest.raises(WriterBroken):
        stream.add_bytes("b/next", b"", mtime=MTIME)
    with pytest.raises(WriterBroken):
        stream.close()


def test_failing_chunks_break_the_stream() -> None:
    def chunks() -> Iterator[bytes]:
        yield b"part"
        raise OSError("connection reset")

    stream = TarStream(io.BytesIO())
    with pytest.raises(OSError, match="reset"):
        stream.add("b/x", size=100, mtime=MTIME, chunks=chunks())
    with pytest.raises(WriterBroken):
        stream.close()


def test_bad_names_are_refused_before_writing() -> None:
    out = io.BytesIO()
    stream = TarStream(out)
    for name in ("", "b/\x00x"):
        with pytest.raises(ValueError, match="NUL"):
            stream.add_bytes(name, b"x", mtime=MTIME)
    with pytest.raises(UnicodeEncodeError):
        stream.add_bytes("b/\udcff", b"x", mtime=MTIME)
    with pytest.raises(ValueError, match="negative size"):
        stream.add("b/x", size=-1, mtime=MTIME, chunks=[])
    assert out.getvalue() == b"" and not stream.broken
    stream.close()
    assert members(out.getvalue()) == []


def test_closed_stream_refuses_members() -> None:
    stream = TarStream(io.BytesIO())
    stream.close()
    with pytest.raises(WriterClosed):
        stream.add_bytes("b/x", b"", mtime=MTIME)


def test_large_in_memory_member_is_written_unjoined() -> None:
    data = hashlib.sha256(b"seed").digest() * 4096  # 128 KiB, above the join limit
    [(info, read)] = members(tar_of([("b/large", data)]))
    assert read == data and info.size == len(data)


def test_strict_reader_lists_what_tarfile_lists() -> None:
    build = [("b/one", b"1"), ("b/" + "long/" * 40, b"22"), ("b/ü", b""), ("b/four", b"4" * 600)]
    raw = tar_of(build)
    entries = [(entry.name, entry.size, entry.read()) for entry in iter_entries(io.BytesIO(raw))]
    assert entries == [(name, len(data), data) for name, data in build]


# --- the strict reader: every byte the writer wrote is looked at ---------------------------------


def _read_all(raw: bytes) -> list[tuple[str, bytes]]:
    return [(entry.name, entry.read()) for entry in iter_entries(io.BytesIO(raw))]


def _layout(raw: bytes) -> dict[str, list[int]]:
    """Offsets of the zero padding the writer wrote: after pax data, after member data, and
    after the two end blocks (to the end of the record)."""
    padding: dict[str, list[int]] = {"pax": [], "member": [], "record": []}
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as archive:
        infos = archive.getmembers()
    for info in infos:
        if info.pax_headers:  # the pax header's own data ends at info.offset_data - 2 blocks, padded
            pax_start = info.offset + BLOCK
            pax_end = info.offset_data - BLOCK
            used = len(raw[pax_start:pax_end].rstrip(b"\x00"))
            padding["pax"] += range(pax_start + used, pax_end)
        end = info.offset_data + info.size
        padding["member"] += range(end, end + (-info.size % BLOCK))
    last = max(i.offset_data + i.size + (-i.size % BLOCK) for i in infos)
    padding["record"] += range(last + 2 * BLOCK, len(raw))
    return padding


def test_the_reader_accepts_what_the_writer_wrote() -> None:
    build = [("b/" + "p" * 150, b"x" * 600), ("b/short", b"12345"), ("b/empty", b""), ("b/block", b"y" * 512)]
    assert _read_all(tar_of(build)) == build


@pytest.mark.parametrize("where", ["pax", "member", "record"])
def test_a_changed_byte_in_any_padding_is_refused(where: str) -> None:
    raw = tar_of([("b/" + "p" * 150, b"x" * 600), ("b/short", b"12345")])
    positions = _layout(raw)[where]
    assert positions
    for position in sorted({positions[0], positions[len(positions) // 2], positions[-1]}):
        changed = bytearray(raw)
        assert changed[position] == 0
        changed[position] = 0x41
        with pytest.raises(ArchiveReadError, match="non-zero bytes in the padding"):
            _read_all(bytes(changed))


@pytest.mark.parametrize("cut", [1, 100, 511, 512, RECORD - 2 * BLOCK - 100])
def test_an_archive_cut_in_its_last_records_padding_is_truncated(cut: int) -> None:
    raw = tar_of([("b/one", b"1" * 700)])
    assert len(raw) == RECORD
    with pytest.raises(ArchiveReadError, match="truncated"):
        _read_all(raw[:-cut])
