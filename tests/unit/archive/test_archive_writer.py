"""ArchiveWriter end to end: every test reads the archive back and compares bytes and hashes."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aggregator.archive import (
    ArchiveWriter,
    ManifestEntry,
    UnarchivableKey,
    WriterBroken,
    WriterClosed,
    read_manifest,
)
from aggregator.base.errors import FetchError, PermanentError, RetryableError
from aggregator.base.events import ObjectRef
from aggregator.base.names import is_shortened, unescape_member
from aggregator.base.objects import Failed, Missing

HOSTILE_KEYS = [
    "../x",
    "../../etc/shadow",
    "/etc/passwd",
    "a//b",
    "trailing/",
    ".",
    "dir/./file",
    "dir/../file",
    "ctl\x00nul",
    "ctl\x1b[31mred",
    "tab\tand\nnewline\r",
    "del\x7f and c1 \x85",
    "percent %2E%2E and %v2",
    "%",
    "back\\slash",
    "..\\..\\evil.txt",
    "C:\\Windows\\evil.dll",
    "D:relative",
    "CON",
    "dir/nul.txt",
    "com1 .log",
    "trailing dot.",
    "trailing space ",
    "bidi \u202egnp.exe",
    "zero\u200bwidth\ufeff",
    'win <>:"|?* chars',
]


def writer_for(sink: io.BytesIO | tempfile.SpooledTemporaryFile[bytes], codec: str, **options: object) -> ArchiveWriter:
    return ArchiveWriter(sink, codec=codec, archive_id="arch-1", created_at=datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC),
                         **options)  # type: ignore[arg-type]


def test_small_objects_round_trip(codec: str, sink: io.BytesIO, kit: Any) -> None:
    bodies = [(f"logs/2025/03/04/{i:03d}.json", b'{"n": %d}\n' % i * (i + 1)) for i in range(20)]
    with writer_for(sink, codec) as writer:
        entries = [writer.add(kit.fetched(key, body)) for key, body in bodies]
        summary = writer.finish()
    assert list(summary.entries) == entries
    members = kit.verify(sink.getvalue(), codec, summary, [("src-bucket", key, body) for key, body in bodies])
    assert [m.info.name for m in members[:-1]] == [f"src-bucket/{key}" for key, _ in bodies]
    for member in members:
        assert member.info.mtime == int(kit.LAST_MODIFIED.timestamp()) or member.info.name == "MANIFEST.json"
    assert members[-1].info.mtime == int(kit.CREATED_AT.timestamp())


def test_entry_fields(sink: io.BytesIO, kit: Any) -> None:
    item = kit.fetched("k", b"abc", version_id="3HL4kqtJlcpXroDTDmJ", etag="900150983cd24fb0d6963f7d28e17f72")
    with writer_for(sink, "zstd") as writer:
        entry = writer.add(item)
        writer.finish()
    assert entry == ManifestEntry(
        bucket="src-bucket", key="k", member="src-bucket/k", size=3,
        sha256=hashlib.sha256(b"abc").hexdigest(), etag="900150983cd24fb0d6963f7d28e17f72",
        version_id="3HL4kqtJlcpXroDTDmJ", sequencer="0055AED6DCD90281E5", last_modified=kit.LAST_MODIFIED,
    )


def test_zero_byte_objects(codec: str, sink: io.BytesIO, kit: Any) -> None:
    with writer_for(sink, codec) as writer:
        for key in ("empty-1", "empty-2/", "empty-3"):
            writer.add(kit.fetched(key, b""))
        writer.add(kit.streamed("empty-streamed", 0, []))
        summary = writer.finish()
    expected = [("src-bucket", key, b"") for key in ("empty-1", "empty-2/", "empty-3", "empty-streamed")]
    kit.verify(sink.getvalue(), codec, summary, expected)
    assert all(entry.sha256 == hashlib.sha256(b"").hexdigest() for entry in summary.entries)


def test_large_object_streamed_in_chunks(codec: str, kit: Any) -> None:
    size = 50 * 1024 * 1024 + 123
    expected_sha = hashlib.sha256()
    for chunk in kit.pattern_chunks(size):
        expected_sha.update(chunk)
    with tempfile.SpooledTemporaryFile(max_size=8 << 20) as spool:
        with writer_for(spool, codec, threads=2 if codec == "zstd" else 0) as writer:
            entry = writer.add(kit.streamed("big/blob.bin", size, kit.pattern_chunks(size), version_id="v9"))
            writer.add(kit.fetched("after-big", b"small"))
            summary = writer.finish()
        assert entry.sha256 == expected_sha.hexdigest() and entry.size == size
        spool.seek(0)
        data = spool.read()
    # Streamed: compare hashes and sizes without a second 50 MiB copy of the body.
    raw = kit.decompress(data, codec)
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as archive:
        infos = archive.getmembers()
        assert [i.name for i in infos] == ["src-bucket/big/blob.bin", "src-bucket/after-big", "MANIFEST.json"]
        big = archive.extractfile(infos[0])
        assert big is not None
        got = hashlib.sha256()
        while block := big.read(1 << 20):
            got.update(block)
        assert got.hexdigest() == expected_sha.hexdigest() and infos[0].size == size
        small = archive.extractfile(infos[1])
        assert small is not None and small.read() == b"small"
    assert summary.sha256_hex == hashlib.sha256(data).hexdigest() and summary.size == len(data)
    manifest = read_manifest(io.BytesIO(data), codec=codec)
    assert manifest["objects"][0]["sha256"] == expected_sha.hexdigest()
    assert manifest["objects"][0]["version_id"] == "v9"


def test_five_thousand_tiny_objects(codec: str, sink: io.BytesIO, kit: Any) -> None:
    bodies = [(f"tiny/{i % 50}/{i}", b"%d" % i) for i in range(5000)]
    with writer_for(sink, codec) as writer:
        for key, body in bodies:
            writer.add(kit.fetched(key, body))
        summary = writer.finish()
    assert writer.object_count == 5000
    kit.verify(sink.getvalue(), codec, summary, [("src-bucket", key, body) for key, body in bodies])


def test_long_and_unicode_keys(codec: str, sink: io.BytesIO, kit: Any) -> None:
    keys = [
        "k" * 1024,
        "/".join(["seg"] * 341) + "/x",  # 1,024 bytes of many segments
        ("é" * 512),  # 1,024 bytes of two-byte characters
        "日本語/データ/ファイル.txt",
        "emoji/😀🚀.bin",
        "mixed/Ω≈ç√∫/名前 with spaces+plus",
        "nfd/e\u0301",  # a decomposed é: kept byte for byte
    ]
    bodies = [(key, key.encode() * 3) for key in keys]
    with writer_for(sink, codec) as writer:
        for key, body in bodies:
            writer.add(kit.fetched(key, body))
        summary = writer.finish()
    members = kit.verify(sink.getvalue(), codec, summary, [("src-bucket", key, body) for key, body in bodies])
    for member, (key, _) in zip(members, bodies, strict=False):
        name = member.info.name
        assert all(len(segment.encode()) <= 255 for segment in name.split("/")), name  # a file name's limit
        if any(is_shortened(segment) for segment in name.split("/")):
            # Shortened: kept only by the manifest (verify compared its key), never undone.
            assert key in ("k" * 1024, "é" * 512)
        else:
            assert unescape_member(name) == ("src-bucket", key)


# ".." maps to the file "%2E%2E" and "../x" to "%2E%2E/x", below a folder of that name: so
# the folder gets another name, and one archive extracts both.
@pytest.mark.parametrize("keys", [HOSTILE_KEYS, ["..", "x/..", "./.", "/", "y/./z", "...", *HOSTILE_KEYS]],
                         ids=["mixed", "dots"])
def test_hostile_keys_are_mapped_to_safe_distinct_names(keys: list[str], codec: str, sink: io.BytesIO, kit: Any,
                                                        tmp_path: Path) -> None:
    bodies = [(key, f"body of {key!r}".encode()) for key in keys]
    with writer_for(sink, codec) as writer:
        for key, body in bodies:
            writer.add(kit.fetched(key, body))
        summary = writer.finish()
    members = kit.verify(sink.getvalue(), codec, summary, [("src-bucket", key, body) for key, body in bodies])
    names = [m.info.name for m in members[:-1]]
    assert len(set(names)) == len(names)
    for name, (key, _) in zip(names, bodies, strict=True):
        assert not name.startswith("/")
        assert all(segment not in ("", ".", "..") and not segment.endswith((".", " ")) for segment in name.split("/"))
        assert name.isprintable() and "\\" not in name and ":" not in name, name
        if "%v" not in name:
            assert unescape_member(name) == ("src-bucket", key)
    # tarfile's "data" filter accepts every member and everything lands inside the target.
    target = tmp_path / "out"
    with tarfile.open(fileobj=io.BytesIO(kit.decompress(sink.getvalue(), codec)), mode="r:") as archive:
        archive.extractall(target, filter="data")
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert len(files) == len(bodies) + 1
    for name, (_, body) in zip(names, bodies, strict=True):
        assert (target / name).read_bytes() == body
    assert all(target in p.parents for p in files)


_EXTRACTORS = {
    "tarfile": None,
    "gnu-tar": ["tar", "--extract", "--file", "-"],
    "bsdtar": ["bsdtar", "-x", "-f", "-"],
}


@pytest.mark.parametrize("extractor", list(_EXTRACTORS))
@pytest.mark.parametrize("keys", [["a", "a/b"], ["a/b", "a"], ["a", "a/b", "a", "a/b/c", "a/b", "x/y/z", "x/y", "x"]],
                         ids=["file-first", "folder-first", "mixed"])
def test_a_key_and_a_key_below_it_extract_together(keys: list[str], extractor: str, sink: io.BytesIO, kit: Any,
                                                   tmp_path: Path) -> None:
    """Keys `a` and `a/b` in one archive: every member extracts, with GNU tar and bsdtar too."""
    bodies = [(key, f"{i}: {key}".encode()) for i, key in enumerate(keys)]
    with writer_for(sink, "none") as writer:
        for key, body in bodies:
            writer.add(kit.fetched(key, body))
        summary = writer.finish()
    kit.verify(sink.getvalue(), "none", summary, [("src-bucket", key, body) for key, body in bodies])
    command = _EXTRACTORS[extractor]
    if command is None:
        with tarfile.open(fileobj=io.BytesIO(sink.getvalue()), mode="r:") as archive:
            archive.extractall(tmp_path, filter="data")
    else:
        if shutil.which(command[0]) is None:
            pytest.skip(f"{command[0]} is not installed")
        done = subprocess.run(command, input=sink.getvalue(), cwd=tmp_path, capture_output=True, check=False)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
    for entry, (key, body) in zip(summary.entries, bodies, strict=True):
        assert entry.key == key
        assert (tmp_path / entry.member).read_bytes() == body
    extracted = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(extracted) == len(keys) + 1  # and MANIFEST.json


def test_duplicate_key_two_versions_get_distinct_names(codec: str, sink: io.BytesIO, kit: Any) -> None:
    first = kit.fetched("same/key", b"version one", version_id="v1")
    second = kit.fetched("same/key", b"version two", version_id="v2")
    with writer_for(sink, codec) as writer:
        a = writer.add(first)
        b = writer.add(second)
        summary = writer.finish()
    assert a.member == "src-bucket/same/key" and b.member != a.member
    assert (a.version_id, b.version_id) == ("v1", "v2")
    members = kit.verify(sink.getvalue(), codec, summary,
                         [("src-bucket", "same/key", b"version one"), ("src-bucket", "same/key", b"version two")])
    assert len({m.info.name for m in members}) == 3


def test_same_key_in_two_buckets(sink: io.BytesIO, kit: Any) -> None:
    with writer_for(sink, "zstd") as writer:
        writer.add(kit.fetched("k", b"1", bucket="one"))
        writer.add(kit.fetched("k", b"2", bucket="two"))
        summary = writer.finish()
    kit.verify(sink.getvalue(), "zstd", summary, [("one", "k", b"1"), ("two", "k", b"2")])
    assert [e.member for e in summary.entries] == ["one/k", "two/k"]


def test_manifest_lists_objects_in_archive_order(sink: io.BytesIO, kit: Any) -> None:
    keys = ["z", "a", "m/n", "a"]
    with writer_for(sink, "gzip") as writer:
        for i, key in enumerate(keys):
            writer.add(kit.fetched(key, b"%d" % i))
        summary = writer.finish()
    members = kit.verify(sink.getvalue(), "gzip", summary, [("src-bucket", k, b"%d" % i) for i, k in enumerate(keys)])
    manifest = kit.json_of(members[-1].data)
    assert [o["member"] for o in manifest["objects"]] == [m.info.name for m in members[:-1]]
    assert [o["key"] for o in manifest["objects"]] == keys


def test_summary_digest_is_of_the_sink_bytes(codec: str, kit: Any) -> None:
    with tempfile.SpooledTemporaryFile(max_size=1024) as spool:  # spills to disk mid-way
        with writer_for(spool, codec) as writer:
            for i in range(50):
                writer.add(kit.fetched(f"k{i}", os.urandom(700)))
            summary = writer.finish()
        assert not spool.closed
        spool.seek(0)
        data = spool.read()
    assert summary.sha256_hex == hashlib.sha256(data).hexdigest()
    assert summary.size == len(data) == writer.stored_bytes


@pytest.mark.parametrize(("size", "chunks", "message"), [
    (100, [b"x" * 60], "ends after 60 of the declared 100"),
    (100, [b"x" * 60, b"y" * 60], "past the declared 100"),
])
def test_streamed_size_mismatch_breaks_the_writer(size: int, chunks: list[bytes], message: str,
                                                  sink: io.BytesIO, kit: Any) -> None:
    writer = writer_for(sink, "zstd")
    writer.add(kit.fetched("before", b"ok"))
    with pytest.raises(FetchError, match=message) as caught:
        writer.add(kit.streamed("bad", size, chunks))
    assert isinstance(caught.value, RetryableError)
    assert writer.broken
    with pytest.raises(WriterBroken):
        writer.finish()
    with pytest.raises(WriterBroken):
        writer.add(kit.fetched("after", b"x"))


def test_streamed_failure_mid_way_breaks_the_writer(codec: str, sink: io.BytesIO, kit: Any) -> None:
    def body() -> Iterator[bytes]:
        yield b"a" * 5000
        raise FetchError("connection reset while reading the body")

    writer = writer_for(sink, codec)
    writer.add(kit.fetched("good", b"fine"))
    with pytest.raises(FetchError, match="connection reset"):
        writer.add(kit.streamed("flaky", 10_000, body()))
    assert writer.broken
    with pytest.raises(WriterBroken, match="abandoned"):
        writer.finish()
    writer.abandon()  # harmless afterwards
    assert writer.broken


def test_keyboard_interrupt_mid_stream_also_breaks(sink: io.BytesIO, kit: Any) -> None:
    def body() -> Iterator[bytes]:
        yield b"a"
        raise KeyboardInterrupt

    writer = writer_for(sink, "none")
    with pytest.raises(KeyboardInterrupt):
        writer.add(kit.streamed("x", 10, body()))
    with pytest.raises(WriterBroken):
        writer.finish()


def test_whole_body_of_wrong_length_is_refused_before_writing(codec: str, sink: io.BytesIO, kit: Any) -> None:
    item = kit.fetched("short", b"12345")
    truncated = type(item)(ref=item.ref, head=item.head, body=b"123")
    with writer_for(sink, codec) as writer:
        writer.add(kit.fetched("one", b"1"))
        with pytest.raises(FetchError, match="3 bytes, its head says 5"):
            writer.add(truncated)
        assert not writer.broken
        retried = writer.add(item)  # the refused attempt took no name
        summary = writer.finish()
    assert retried.member == "src-bucket/short"
    kit.verify(sink.getvalue(), codec, summary, [("src-bucket", "one", b"1"), ("src-bucket", "short", b"12345")])


def test_unencodable_key_is_permanent_and_leaves_the_writer_usable(sink: io.BytesIO, kit: Any) -> None:
    with writer_for(sink, "zstd") as writer:
        with pytest.raises(UnarchivableKey) as caught:
            writer.add(kit.fetched("lone\udcffsurrogate", b"x"))
        assert isinstance(caught.value, PermanentError)
        assert not writer.broken
        writer.add(kit.fetched("fine", b"y"))
        summary = writer.finish()
    kit.verify(sink.getvalue(), "zstd", summary, [("src-bucket", "fine", b"y")])


def test_other_items_are_refused(sink: io.BytesIO) -> None:
    ref = ObjectRef(bucket="b", key="k", size=1, etag="e", version_id=None, sequencer=None)
    with writer_for(sink, "none") as writer:
        with pytest.raises(TypeError, match="Missing"):
            writer.add(Missing(ref))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="Failed"):
            writer.add(Failed(ref, FetchError("x")))  # type: ignore[arg-type]
        assert not writer.broken


def test_finish_once_then_closed(sink: io.BytesIO, kit: Any) -> None:
    writer = writer_for(sink, "zstd")
    writer.add(kit.fetched("k", b"v"))
    writer.finish()
    size = len(sink.getvalue())
    with pytest.raises(WriterClosed, match="finished"):
        writer.finish()
    with pytest.raises(WriterClosed):
        writer.add(kit.fetched("k2", b"v"))
    assert len(sink.getvalue()) == size
    assert not sink.closed


def test_leaving_the_block_without_finish_abandons(sink: io.BytesIO, kit: Any) -> None:
    with pytest.raises(RuntimeError, match="caller failed"), writer_for(sink, "zstd") as writer:
        writer.add(kit.fetched("k", b"v"))
        raise RuntimeError("caller failed")
    with pytest.raises(WriterClosed, match="abandoned"):
        writer.finish()
    with writer_for(io.BytesIO(), "gzip") as quiet:
        quiet.add(kit.fetched("k", b"v"))
    with pytest.raises(WriterClosed):
        quiet.finish()


def test_empty_archive_still_has_a_manifest(codec: str, sink: io.BytesIO, kit: Any) -> None:
    # The pipeline never uploads one, but the writer must still produce a valid archive.
    with writer_for(sink, codec) as writer:
        summary = writer.finish()
    kit.verify(sink.getvalue(), codec, summary, [])


def test_naive_created_at_is_refused(sink: io.BytesIO) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        ArchiveWriter(sink, codec="zstd", archive_id="a", created_at=datetime(2025, 1, 1))


def test_counters(sink: io.BytesIO, kit: Any) -> None:
    with writer_for(sink, "none") as writer:
        writer.add(kit.fetched("k", b"v" * 10))
        assert writer.object_count == 1
        assert writer.tar_bytes == 1024  # header + one padded data block
        assert writer.stored_bytes == 1024
        writer.finish()
