"""``extract ARCHIVE DIR``: every object to ``DIR/{bucket}/{key}``, verified, never outside DIR.

The archive is read once. Members go to numbered files in a private folder inside DIR
while they are hashed; only when the whole archive has passed :mod:`.archives`' checks
(checksum, tar structure, manifest) are they moved to their places, so a corrupt,
truncated or tampered archive leaves nothing behind but its problem lines (exit 1).

A place is ``DIR/{bucket}/{key}`` (the manifest's original key, not the member name)
when every segment is safe under this OS's rules (:mod:`.paths`), every folder on the
way is a real folder (never a symbolic link, never a file), and the file does not exist
yet. Otherwise the object goes to ``DIR/_renamed/{n}_{plain name}`` and one line
``{"bucket", "key", "path"}`` is appended to ``DIR/RENAMED.jsonl``. Files are created
exclusively (a hard link, else ``O_EXCL | O_NOFOLLOW``): nothing existing is overwritten.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import stat
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TextIO

from aggregator.tools import archives, paths
from aggregator.tools.common import EXIT_OK, Environment, Problems, UsageError

RENAMED_FILE = "RENAMED.jsonl"
RENAMED_DIR = "_renamed"
# Names the layout itself uses: never a bucket's folder (case-insensitive file systems too).
_RESERVED_TOP = {RENAMED_FILE.casefold(), RENAMED_DIR.casefold()}
_RENAME_ATTEMPTS = 100


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("extract", help="unpack one archive safely, original keys restored",
                                   description=__doc__)
    parser.add_argument("archive", metavar="ARCHIVE", help="a local file or s3://BUCKET/KEY on MinIO")
    parser.add_argument("directory", metavar="DIR", help="where to unpack (created if missing)")
    parser.add_argument("--codec", choices=("zstd", "gzip", "none"),
                        help="the codec, when the name does not end in .tar.zst, .tar.gz or .tar")
    parser.add_argument("--path-rules", choices=("auto", "posix", "windows"), default="auto",
                        help="whose file name rules decide what is safe (default: this OS's)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, env: Environment, *, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    rules: paths.Rules = paths.this_os() if args.path_rules == "auto" else args.path_rules
    source = archives.resolve(args.archive, env)
    target = _target(args.directory)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=target))
    try:
        staged: dict[str, Path] = {}

        def sink(index: int, name: str) -> IO[bytes]:
            path = staging / f"{index:08d}"
            staged.setdefault(name, path)
            return path.open("xb")

        result = archives.check(source, codec=args.codec, sink=sink)
        problems = Problems()
        for line in result.problems:
            problems.add(line)
        if not result.ok:
            return problems.exit_status
        placed, renamed = _place_all(target, result, staged, rules)
        if renamed:
            _append_renamed(target, renamed)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    note = f"; {len(renamed)} renamed, listed in {target / RENAMED_FILE}" if renamed else ""
    print(f"extracted {placed} objects from {args.archive} into {target}{note}", file=out, flush=True)
    return EXIT_OK


def _target(directory: str) -> Path:
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{directory}: cannot create the directory: {e.strerror or e}") from e
    if not path.is_dir():
        raise UsageError(f"{directory}: not a directory")
    return path.resolve()


def _place_all(target: Path, result: archives.ArchiveCheck, staged: dict[str, Path],
               rules: paths.Rules) -> tuple[int, list[dict[str, str]]]:
    renamed: list[dict[str, str]] = []
    placed = 0
    for index, entry in enumerate(archives.entries(result)):
        bucket, key, member = entry["bucket"], entry["key"], entry["member"]
        data = staged[member]
        mtime = _mtime(entry.get("last_modified"))
        segments = paths.safe_segments(bucket, key, rules)
        if segments is not None and segments[0].casefold() in _RESERVED_TOP:
            segments = None
        if segments is None or not _place(target, segments, data, mtime):
            n = index
            for _attempt in range(_RENAME_ATTEMPTS):
                if _place(target, [RENAMED_DIR, paths.plain_name(n, key)], data, mtime):
                    break
                n += len(staged) + 1  # taken by an earlier run: try a number this run cannot use
            else:
                raise UsageError(f"{target / RENAMED_DIR}: cannot create files there (not a folder, or not writable)")
            renamed.append({"bucket": bucket, "key": key, "path": f"{RENAMED_DIR}/{paths.plain_name(n, key)}"})
        placed += 1
    return placed, renamed


def _place(target: Path, segments: list[str], data: Path, mtime: float | None) -> bool:
    """Put ``data`` at ``target/segments`` if every folder is a real one and the file is new."""
    folder = target
    for segment in segments[:-1]:
        folder = folder / segment
        try:
            os.mkdir(folder)
        except FileExistsError:
            pass
        except OSError:
            return False
        # lstat, not stat: a symbolic link planted on the way is never followed.
        try:
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                return False
        except OSError:
            return False
    final = folder / segments[-1]
    if os.path.lexists(final):
        return False
    try:
        os.link(data, final, follow_symlinks=False)
    except FileExistsError:
        return False
    except OSError:
        if not _copy_exclusive(data, final):
            return False
    if mtime is not None:
        with contextlib.suppress(OSError):
            os.utime(final, (mtime, mtime), follow_symlinks=False)
    return True


def _copy_exclusive(data: Path, final: Path) -> bool:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(final, flags, 0o644)
    except OSError:
        return False
    with os.fdopen(fd, "wb") as out, data.open("rb") as source:
        shutil.copyfileobj(source, out)
    return True


def _append_renamed(target: Path, renamed: list[dict[str, str]]) -> None:
    path = target / RENAMED_FILE
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        raise UsageError(f"{path}: cannot write: {e.strerror or e}") from e
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        for line in renamed:
            out.write(json.dumps(line) + "\n")


def _mtime(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
