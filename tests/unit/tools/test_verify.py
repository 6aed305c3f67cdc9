"""verify on local files: good archives pass; tampered, truncated, corrupt ones exit 1 with a
line naming the archive and member; unreadable input exits 2; never a traceback."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from aggregator.tools.__main__ import main
from tests.unit.tools.conftest import build, hand_made, manifest_of

OBJECTS = [("src", "a.txt", b"alpha " * 100), ("src", "dir/b.bin", bytes(range(256)) * 40),
           ("src", "with space/ünï.json", b'{"x": 1}'), ("src", "big.bin", b"\x01" * 3_000_000)]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out, err


@pytest.mark.parametrize("codec", ["zstd", "gzip", "none"])
def test_a_good_archive_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str], codec: str) -> None:
    path = build(tmp_path, OBJECTS, codec=codec)
    status, out, err = run(capsys, "verify", str(path))
    assert (status, err) == (0, "")
    assert out.startswith(f"OK {path}: 4 members") and hashlib.sha256(path.read_bytes()).hexdigest() in out


def test_a_tampered_member_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = build(tmp_path, OBJECTS, codec="none")
    data = bytearray(path.read_bytes())
    where = data.find(b"alpha alpha")
    data[where] ^= 0x20  # "Alpha": same size, valid tar, other bytes
    path.write_bytes(bytes(data))
    status, out, err = run(capsys, "verify", str(path))
    assert status == 1 and out == ""
    assert err.splitlines() == [f"{path}: member 'src/a.txt': SHA-256 "
                                f"{hashlib.sha256(b'Alpha ' + b'alpha ' * 99).hexdigest()}, MANIFEST.json says "
                                f"{hashlib.sha256(b'alpha ' * 100).hexdigest()} (tampered or corrupt)"]


def test_a_tampered_compressed_archive_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Recompressed after the change: the stream is valid, only the manifest can tell."""
    path = build(tmp_path, OBJECTS, codec="zstd")
    raw = zstandard.ZstdDecompressor().stream_reader(path.read_bytes()).read()
    path.write_bytes(zstandard.ZstdCompressor().compress(raw.replace(b'{"x": 1}', b'{"x": 9}')))
    status, _, err = run(capsys, "verify", str(path))
    assert status == 1 and "member 'src/with space/ünï.json': SHA-256" in err and len(err.splitlines()) == 1


def test_missing_and_extra_members_and_wrong_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    listed = [("src", "a", b"1"), ("src", "b", b"22")]
    manifest = manifest_of(listed)
    manifest["objects"][1]["size"] = 3  # type: ignore[index]
    path = hand_made(tmp_path / "x.tar.zst", [("src/b", b"22"), ("src/extra", b"!")], manifest)
    status, _, err = run(capsys, "verify", str(path))
    assert status == 1
    assert sorted(err.splitlines()) == sorted([
        f"{path}: member 'src/b': 2 bytes, MANIFEST.json says 3",
        f"{path}: member 'src/extra': not listed in MANIFEST.json (extra)",
        f"{path}: member 'src/a': listed in MANIFEST.json but missing from the archive"])


def test_a_manifest_that_is_not_last(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = hand_made(tmp_path / "x.tar.zst", [("MANIFEST.json", b"{}"), ("src/a", b"1")], manifest_of([]))
    status, _, err = run(capsys, "verify", str(path))
    assert status == 1 and "is not the last member" in err


@pytest.mark.parametrize("codec", ["zstd", "gzip", "none"])
@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_a_truncated_archive_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str], codec: str,
                                         keep: float) -> None:
    path = build(tmp_path, OBJECTS, codec=codec)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    status, out, err = run(capsys, "verify", str(path))
    assert status == 1 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith(f"{path}: ") and "truncated" in err


def test_a_tar_cut_at_a_member_boundary_is_truncated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = build(tmp_path, OBJECTS[:1], codec="none")
    data = path.read_bytes()
    path.write_bytes(data[:512 + 1024])  # pax header + ustar header... then the member, no end blocks
    status, _, err = run(capsys, "verify", str(path))
    assert status == 1 and "truncated" in err


@pytest.mark.parametrize("cut", [1, 100, 512, 1024, 4096])
def test_an_uncompressed_archive_cut_in_its_record_padding_is_truncated(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str],
                                                                        cut: int) -> None:
    path = build(tmp_path, OBJECTS[:2], codec="none")
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    status, out, err = run(capsys, "verify", str(path))
    assert status == 1 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith(f"{path}: ") and "truncated" in err


@pytest.mark.parametrize("extra", [b"\x00", bytes(10240), b"appended"])
def test_bytes_after_the_last_record_are_a_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   extra: bytes) -> None:
    """The writer ends on a whole record: even zeros after it are not what it wrote."""
    path = build(tmp_path, OBJECTS[:2], codec="none")
    path.write_bytes(path.read_bytes() + extra)
    status, out, err = run(capsys, "verify", str(path))
    assert status == 1 and out == ""
    assert err == f"{path}: {len(extra)} bytes after the end of the archive's last record\n"


def test_a_changed_byte_in_a_members_padding_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = build(tmp_path, OBJECTS[:2], codec="none")
    data = bytearray(path.read_bytes())
    data[512 + len(OBJECTS[0][2]) + 1] = 0xFF  # after a.txt's 600 bytes: its block padding
    path.write_bytes(bytes(data))
    status, out, err = run(capsys, "verify", str(path))
    assert status == 1 and out == ""
    assert err == (f"{path}: non-zero bytes in the padding of member 'src/a.txt': "
                   "the archive was changed or is corrupt\n")


@pytest.mark.parametrize("content", [b"", b"garbage" * 1000, bytes(range(256)) * 50])
@pytest.mark.parametrize("suffix", [".tar.zst", ".tar.gz", ".tar"])
def test_garbage_is_a_problem_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes,
                                              suffix: str) -> None:
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(content)
    status, out, err = run(capsys, "verify", str(path))
    assert status == 1 and out == "" and err.startswith(f"{path}: ")


def test_unreadable_input_and_bad_usage_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "verify", str(tmp_path / "absent.tar.zst"))[0] == 2
    (tmp_path / "notes.txt").write_text("hello")
    status, _, err = run(capsys, "verify", str(tmp_path / "notes.txt"))
    assert status == 2 and "cannot tell the codec" in err
    assert run(capsys, "verify", "s3://bucket-only")[0] == 2
    with pytest.raises(SystemExit) as exited:
        main(["verify"])
    assert exited.value.code == 2
    with pytest.raises(SystemExit) as exited:
        main(["no-such-command"])
    assert exited.value.code == 2


def test_several_archives_worst_status_wins(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = build(tmp_path, OBJECTS[:2])
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b nope")
    status, out, err = run(capsys, "verify", str(good), str(bad))
    assert status == 1 and out.startswith(f"OK {good}") and err.startswith(f"{bad}: ")


def test_the_console_entry_point_exits_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "x.tar.zst"
    bad.write_bytes(b"\x28\xb5\x2f\xfd" + b"\xff" * 64)  # a zstd magic number, then nonsense
    done = subprocess.run([sys.executable, "-m", "aggregator.tools", "verify", str(bad)], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 1 and "Traceback" not in done.stderr and done.stderr.startswith(f"{bad}: ")
    json.dumps(done.stderr)
