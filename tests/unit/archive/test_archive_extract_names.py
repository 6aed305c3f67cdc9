"""Keys S3 accepts whose member names would be too long or would collide on extraction
(CONTRACT.md section 5: every member extracts with GNU tar and bsdtar)."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aggregator.archive import ArchiveWriter
from aggregator.base.events import ObjectRef
from aggregator.base.objects import Fetched, ObjectHead

CREATED_AT = datetime(2026, 12, 6, 18, 0, 0, tzinfo=UTC)


def _tar_of(objects: list[tuple[str, bytes]]) -> bytes:
    sink = io.BytesIO()
    writer = ArchiveWriter(sink, codec="none", archive_id="20261206T180000Z-review", created_at=CREATED_AT)
    for key, body in objects:
        etag = hashlib.md5(body).hexdigest()
        ref = ObjectRef(bucket="src", key=key, size=len(body), etag=etag, version_id=None, sequencer="01")
        writer.add(Fetched(ref=ref, head=ObjectHead(len(body), CREATED_AT, etag, None), body=body))
    writer.finish()
    return sink.getvalue()


# S3 takes any UTF-8 key up to 1,024 bytes, so one segment may be longer than the 255 bytes
# a Linux, macOS or Windows file name can hold; escaping can make a short one that long.
LONG_KEYS = {
    "plain-300": "logs/" + "x" * 300 + ".json",
    "escaped-to-300": "logs/" + "\x01" * 100,
}


@pytest.mark.parametrize("tool", ["tar", "bsdtar"])
@pytest.mark.parametrize("case", sorted(LONG_KEYS))
def test_a_key_with_a_segment_longer_than_a_file_name_still_extracts(tmp_path: Path, tool: str, case: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    body = b"payload"
    data = _tar_of([(LONG_KEYS[case], body), ("short.txt", b"ok")])
    done = subprocess.run([tool, "-x", "-f", "-", "-C", str(tmp_path)], input=data, capture_output=True,
                          check=False)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert done.returncode == 0, done.stderr.decode(errors="replace")[:300]
    assert sorted(p.read_bytes() for p in files) == sorted([body, b"ok", _manifest(data)])


def _manifest(data: bytes) -> bytes:
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile("MANIFEST.json")
        assert member is not None
        return member.read()


def test_keys_differing_only_in_case_get_names_distinct_on_case_insensitive_file_systems() -> None:
    from aggregator.base.names import MemberNames

    names = MemberNames()
    members = [names.assign("src", key) for key in ("data/Report.csv", "data/report.csv", "Data/x", "data/y")]
    folded = [name.casefold() for name in members]
    assert len(set(folded)) == len(folded)
    # Folders too: "Data/" and "data/" are one folder there, which is harmless only if no file collides.


# The longest member names a 1,024-byte key can give: several shortened segments, and many
# segments each escaped to just under the limit (83 bytes, 245 escaped: 12 of them make a
# name near 3,000 bytes, within Linux's 4,096-byte PATH_MAX even below a deep target folder).
DEEP_KEYS = {
    "four-shortened": "/".join(f"{i}" + "\x01" * 254 for i in range(4)),
    "twelve-at-the-limit": "/".join("\x01" * 81 + f"{i:02d}" for i in range(12)),
    "shortened-versions": "d" * 300 + "/" + "f" * 300,
}


@pytest.mark.parametrize("tool", ["tar", "bsdtar"])
@pytest.mark.parametrize("case", sorted(DEEP_KEYS))
def test_the_longest_member_names_extract(tmp_path: Path, tool: str, case: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    key = DEEP_KEYS[case]
    assert len(key.encode()) <= 1024
    bodies = [b"first", b"second", b"third"]  # three versions of one key: %v2 and %v3 suffixes too
    data = _tar_of([(key, body) for body in bodies])
    target = tmp_path / ("deep-target-" + "t" * 40)
    target.mkdir()
    done = subprocess.run([tool, "-x", "-f", "-", "-C", str(target)], input=data, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[:300]
    files = {str(p.relative_to(target)): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert sorted(files.values()) == sorted([*bodies, _manifest(data)])
    assert all(len(segment.encode()) <= 255 for name in files for segment in name.split("/"))
