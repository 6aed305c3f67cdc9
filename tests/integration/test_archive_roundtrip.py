"""Archives read by the real tools: GNU tar, zstd, gzip (and bsdtar when present), tarfile.

Each archive holds hostile, long, unicode, empty, duplicate-version and streamed objects;
every test compares each extracted member's bytes and SHA-256 with what went in.
Needs the ``tar``, ``zstd`` and ``gzip`` commands (Debian packages tar, zstd, gzip); a test
is skipped, naming the missing command, only when that command is absent.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aggregator.archive import EXTENSIONS, ArchiveWriter, open_decompressor, read_manifest
from aggregator.base.events import ObjectRef
from aggregator.base.objects import Fetched, ObjectHead, Streamed

CREATED_AT = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
LAST_MODIFIED = datetime(2024, 12, 31, 23, 59, 58, tzinfo=UTC)
BIG = 8 * 1024 * 1024 + 7
KEYS = [
    "plain/object.json",
    "../escape",
    "/etc/passwd",
    "a//b",
    ".",
    "dir/./x/../y",
    "ctl\x01\x1b[2J\x7f\x9b",
    "new\nline",
    "%2E%2E",
    # Long keys, each segment within the 255 bytes a Linux file name can hold (longer
    # segments are shortened in the member name: tests/unit/archive).
    "/".join(f"segment-{i:03d}-" + "k" * 240 for i in range(4)),
    "日本語/ファイル名.txt",
    "é" * 120 + "/" + "ü" * 120,
    "emoji 😀/with spaces+plus",
    "empty",
]
ENV = {**os.environ, "LC_ALL": "C.UTF-8"}


@dataclass(frozen=True)
class Built:
    path: Path
    codec: str
    members: dict[str, bytes]  # member name -> expected bytes, in archive order
    manifest_sha: dict[str, str]


def big_chunks() -> Iterator[bytes]:
    block = hashlib.sha256(b"seed").digest() * 2048  # 64 KiB, compressible
    sent = 0
    index = 0
    while sent < BIG:
        piece = (index.to_bytes(4, "big") + block)[: min(len(block), BIG - sent)]
        sent += len(piece)
        index += 1
        yield piece


def item(key: str, body: bytes, version_id: str | None = None) -> Fetched:
    etag = hashlib.md5(body).hexdigest()
    ref = ObjectRef(bucket="src-bucket", key=key, size=len(body), etag=etag, version_id=version_id, sequencer="0A")
    return Fetched(ref=ref, head=ObjectHead(len(body), LAST_MODIFIED, etag, version_id), body=body)


def build(directory: Path, codec: str) -> Built:
    path = directory / f"archive{EXTENSIONS[codec]}"
    expected: dict[str, bytes] = {}
    with path.open("wb") as sink, ArchiveWriter(sink, codec=codec, archive_id="integration-1",
                                                 created_at=CREATED_AT) as writer:
        for key in KEYS:
            body = b"" if key == "empty" else f"content of {key!r}\n".encode() * 3
            expected[writer.add(item(key, body)).member] = body
        for version, body in (("v1", b"first version"), ("v2", b"second version")):
            expected[writer.add(item("twice", body, version_id=version)).member] = body
        ref = ObjectRef(bucket="src-bucket", key="big/blob", size=BIG, etag="f" * 32, version_id=None, sequencer="0B")
        entry = writer.add(Streamed(ref=ref, head=ObjectHead(BIG, LAST_MODIFIED, "f" * 32, None), chunks=big_chunks()))
        expected[entry.member] = b"".join(big_chunks())
        summary = writer.finish()
    assert summary.sha256_hex == hashlib.sha256(path.read_bytes()).hexdigest()
    return Built(path, codec, expected, {e.member: e.sha256 for e in summary.entries})


def require(*commands: str) -> None:
    for command in commands:
        if shutil.which(command) is None:
            pytest.skip(f"the {command!r} command is not installed (Debian package {command})")


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Built]:
    cache: dict[str, Built] = {}

    def get(codec: str) -> Built:
        if codec not in cache:
            cache[codec] = build(tmp_path_factory.mktemp(codec), codec)
        return cache[codec]

    return get


@pytest.fixture(params=["zstd", "gzip", "none"])
def built(request: pytest.FixtureRequest, archives: Callable[[str], Built]) -> Built:
    codec: str = request.param
    require("tar", *{"zstd": ["zstd"], "gzip": ["gzip"], "none": []}[codec])
    return archives(codec)


def tar_flags(codec: str) -> list[str]:
    return {"zstd": ["--zstd"], "gzip": ["-z"], "none": []}[codec]


def run(*command: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run([str(c) for c in command], capture_output=True, cwd=cwd, env=ENV, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert done.stderr == b"", done.stderr.decode(errors="replace")  # no warnings either
    return done


def compare_tree(root: Path, built: Built) -> None:
    files = {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}
    assert set(files) == {*built.members, "MANIFEST.json"}
    for name, body in built.members.items():
        data = files[name].read_bytes()
        assert data == body, name
        assert hashlib.sha256(data).hexdigest() == built.manifest_sha[name]
    for path in root.rglob("*"):
        assert root in path.resolve().parents
        if path.is_file():
            assert path.stat().st_mode & 0o777 in (0o644, 0o644 & ~os.umask(0o022))


def test_gnu_tar_lists_every_member(built: Built) -> None:
    names = run("tar", "-t", *tar_flags(built.codec), "--quoting-style=literal", "-f", built.path).stdout
    assert names.decode().splitlines() == [*built.members, "MANIFEST.json"]
    verbose = run("tar", "-tv", *tar_flags(built.codec), "--numeric-owner", "-f", built.path).stdout.decode()
    lines = verbose.splitlines()
    assert len(lines) == len(built.members) + 1
    assert all(line.startswith("-rw-r--r-- 0/0 ") for line in lines), lines[:3]
    assert any(f" {BIG} 2024-12-31 23:59" in line for line in lines)  # size and mtime


def test_gnu_tar_extracts_every_member(built: Built, tmp_path: Path) -> None:
    run("tar", "-x", *tar_flags(built.codec), "-f", built.path, "-C", tmp_path)
    compare_tree(tmp_path, built)


@pytest.mark.parametrize("codec", ["zstd", "gzip"])
def test_compression_cli_decompresses_to_the_same_tar(codec: str, archives: Callable[[str], Built],
                                                      tmp_path: Path) -> None:
    require("tar", codec)
    built = archives(codec)
    tool = {"zstd": ["zstd", "-d", "-c", "-q"], "gzip": ["gzip", "-d", "-c"]}[built.codec]
    raw = run(*tool, built.path).stdout
    check = {"zstd": ["zstd", "-t", "-q"], "gzip": ["gzip", "-t"]}[built.codec]
    run(*check, built.path)  # the tool's own integrity test (checksum / CRC)
    assert raw == open_decompressor(built.codec, io.BytesIO(built.path.read_bytes())).read()
    tar_path = tmp_path / "plain.tar"
    tar_path.write_bytes(raw)
    out = tmp_path / "out"
    out.mkdir()
    run("tar", "-xf", tar_path, "-C", out)
    compare_tree(out, built)


def test_python_tarfile_data_filter_extracts_safely(built: Built, tmp_path: Path) -> None:
    with (built.path.open("rb") as source,
          tarfile.open(fileobj=open_decompressor(built.codec, source), mode="r|") as archive):
        archive.extractall(tmp_path, filter="data")
    compare_tree(tmp_path, built)


def test_manifest_read_back_matches(built: Built) -> None:
    with built.path.open("rb") as source:
        manifest = read_manifest(source, codec=built.codec)
    assert manifest["archive_id"] == "integration-1" and manifest["codec"] == built.codec
    assert [o["member"] for o in manifest["objects"]] == list(built.members)
    assert [o["key"] for o in manifest["objects"]] == [*KEYS, "twice", "twice", "big/blob"]
    assert {o["member"]: o["sha256"] for o in manifest["objects"]} == built.manifest_sha


def test_bsdtar_reads_it_too(built: Built, tmp_path: Path) -> None:
    if shutil.which("bsdtar") is None:
        pytest.skip("bsdtar is not installed (Debian package libarchive-tools): optional second reader")
    run("bsdtar", "-xf", built.path, "-C", tmp_path)
    compare_tree(tmp_path, built)
