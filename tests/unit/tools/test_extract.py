"""extract: original keys restored where safe, hostile names renamed inside DIR and listed in
RENAMED.jsonl, nothing ever written outside DIR, and nothing at all from a bad archive."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from aggregator.tools.__main__ import main
from tests.unit.tools.conftest import LAST_MODIFIED, build

HOSTILE = [
    ("src", "plain/ok.txt", b"ok"),
    ("src", "../../escape.txt", b"climb"),
    ("src", "a/../../../escape2.txt", b"climb2"),
    ("src", "/absolute.txt", b"abs"),
    ("src", "a//double", b"double"),
    ("src", "./dot", b"dot"),
    ("src", "..", b"dotdot"),
    ("src", "C:\\Windows\\evil.dll", b"drive"),
    ("src", "CON", b"device"),
    ("src", "nul.txt", b"device2"),
    ("src", "trailing.", b"trailing dot"),
    ("src", "back\\slash", b"backslash"),
    ("src", "ctl\x01char", b"control"),
    ("src", "\u202egnp.exe", b"bidi"),
    ("src", "same", b"file first"),
    ("src", "same/below", b"then a folder of the same name"),
    ("src", "plain/ok.txt", b"second version, same key"),
    ("src", "ünïcode dir/ök.txt", b"unicode"),
]


def outside_files(root: Path, target: Path) -> list[Path]:
    return [p for p in root.rglob("*") if target not in p.parents and p != target and p.is_file()
            and p.suffix not in (".zst",)]


@pytest.mark.parametrize("rules", ["posix", "windows"])
def test_hostile_keys_stay_inside_and_every_object_is_somewhere(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               rules: str) -> None:
    archive = build(tmp_path, HOSTILE)
    target = tmp_path / "out" / "here"
    status = main(["extract", str(archive), str(target), "--path-rules", rules])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert outside_files(tmp_path, target) == []
    renamed = [json.loads(line) for line in (target / "RENAMED.jsonl").read_text().splitlines()]
    by_path = {r["path"]: (r["bucket"], r["key"]) for r in renamed}
    found: list[tuple[str, str, bytes]] = []
    kept: set[tuple[str, str]] = set()
    for path in target.rglob("*"):
        if path.is_symlink():
            pytest.fail(f"symlink created: {path}")
        if not path.is_file() or path.name == "RENAMED.jsonl":
            continue
        relative = path.relative_to(target).as_posix()
        if relative in by_path:
            bucket, key = by_path[relative]
        else:
            bucket, key = relative.split("/", 1)
            kept.add((bucket, key))
        found.append((bucket, key, path.read_bytes()))
    assert sorted(found) == sorted(HOSTILE)
    assert ("src", "plain/ok.txt") in kept and ("src", "ünïcode dir/ök.txt") in kept
    assert ("src", "../../escape.txt") not in kept and ("src", "a//double") not in kept
    if rules == "windows":
        assert not kept & {("src", "CON"), ("src", "nul.txt"), ("src", "trailing."), ("src", "back\\slash"),
                           ("src", "C:\\Windows\\evil.dll")}
    else:
        assert ("src", "back\\slash") in kept
    assert f"renamed, listed in {target / 'RENAMED.jsonl'}" in out
    assert (target / "src/plain/ok.txt").read_bytes() == b"ok"  # the first version keeps the key


def test_a_planted_symlink_is_never_followed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = build(tmp_path, [("src", "dir/file.txt", b"data"), ("src", "link/x", b"x")])
    target, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (target / "src").mkdir(parents=True)
    elsewhere.mkdir()
    os.symlink(elsewhere, target / "src" / "dir")
    os.symlink(elsewhere / "x", target / "src" / "link")
    assert main(["extract", str(archive), str(target)]) == 0
    capsys.readouterr()
    assert list(elsewhere.iterdir()) == []
    renamed = [json.loads(line) for line in (target / "RENAMED.jsonl").read_text().splitlines()]
    assert {r["key"] for r in renamed} == {"dir/file.txt", "link/x"}
    assert all((target / r["path"]).is_file() and not (target / r["path"]).is_symlink() for r in renamed)


def test_existing_files_are_never_overwritten_and_a_second_run_appends(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    objects = [("src", "a.txt", b"new"), ("src", "CON", b"device")]
    archive = build(tmp_path, objects)
    target = tmp_path / "out"
    (target / "src").mkdir(parents=True)
    (target / "src" / "a.txt").write_bytes(b"mine")
    assert main(["extract", str(archive), str(target), "--path-rules", "windows"]) == 0
    assert main(["extract", str(archive), str(target), "--path-rules", "windows"]) == 0
    capsys.readouterr()
    assert (target / "src" / "a.txt").read_bytes() == b"mine"
    renamed = [json.loads(line) for line in (target / "RENAMED.jsonl").read_text().splitlines()]
    assert len(renamed) == 4 and len({r["path"] for r in renamed}) == 4
    for r in renamed:
        assert (target / r["path"]).read_bytes() == dict(((b, k), d) for b, k, d in objects)[(r["bucket"], r["key"])]


def test_a_tampered_archive_extracts_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = build(tmp_path, [("src", "a.txt", b"alpha" * 50), ("src", "b.txt", b"beta")], codec="none")
    data = archive.read_bytes()
    archive.write_bytes(data.replace(b"beta", b"BETA"))
    target = tmp_path / "out"
    assert main(["extract", str(archive), str(target)]) == 1
    _, err = capsys.readouterr()
    assert "member 'src/b.txt': SHA-256" in err and "Traceback" not in err
    assert list(target.iterdir()) == []


def test_a_truncated_archive_extracts_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = build(tmp_path, [("src", "a.txt", os.urandom(200_000))])
    archive.write_bytes(archive.read_bytes()[:-100])
    target = tmp_path / "out"
    assert main(["extract", str(archive), str(target)]) == 1
    assert "truncated" in capsys.readouterr().err
    assert list(target.iterdir()) == []


def test_bytes_and_times_are_restored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = os.urandom(3_000_000)
    archive = build(tmp_path, [("src", "big/blob.bin", body)], codec="gzip")
    assert main(["extract", str(archive), str(tmp_path / "out")]) == 0
    capsys.readouterr()
    path = tmp_path / "out" / "src" / "big" / "blob.bin"
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(body).digest()
    assert path.stat().st_mtime == LAST_MODIFIED.timestamp()  # the manifest's last_modified
    assert not (tmp_path / "out" / "RENAMED.jsonl").exists()


def test_a_target_that_is_a_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = build(tmp_path, [("src", "a", b"1")])
    (tmp_path / "file").write_text("x")
    assert main(["extract", str(archive), str(tmp_path / "file")]) == 2
    assert "Traceback" not in capsys.readouterr().err
