"""Staging a large body whole before it becomes a member: all of it, hashed, or nothing left."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aggregator.archive.spool import HEADROOM, OutOfSpace
from aggregator.archive.staging import stage
from aggregator.archive.writer import ArchiveWriter
from aggregator.base.errors import FetchError
from aggregator.base.events import ObjectRef
from aggregator.base.objects import ObjectHead
from aggregator.fetch import FetchCancelled

BODY = bytes(range(256)) * 4096  # 1 MiB
WHEN = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
PLENTY = 1 << 40


def pieces(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_whole_body_is_staged_with_its_hash_and_read_back(tmp_path: Path) -> None:
    with stage(pieces(BODY), size=len(BODY), directory=str(tmp_path), free_space=lambda _: PLENTY) as body:
        assert body.size == len(BODY) and body.sha256 == hashlib.sha256(BODY).hexdigest()
        assert b"".join(body.chunks(100_000)) == BODY
        assert b"".join(body.chunks()) == BODY  # from the start again
        assert list(tmp_path.iterdir()) == []  # anonymous: nothing to leave behind


def broken(data: bytes, error: Exception) -> Iterator[bytes]:
    yield data[: len(data) // 3]
    raise error


@pytest.mark.parametrize("chunks, error", [
    (broken(BODY, FetchError("connection reset mid-body")), "connection reset"),
    (broken(BODY, FetchCancelled("fetch cancelled")), "cancelled"),
    (pieces(BODY[:-1]), "ends after"),
    (pieces(BODY + b"x"), "runs past"),
], ids=["breaks", "cancelled", "short", "long"])
def test_a_body_that_is_not_received_whole_raises_and_leaves_nothing(
        tmp_path: Path, chunks: Iterator[bytes], error: str) -> None:
    before = open_fds()
    with pytest.raises(FetchError, match=error):
        stage(chunks, size=len(BODY), directory=str(tmp_path), free_space=lambda _: PLENTY)
    assert open_fds() == before and list(tmp_path.iterdir()) == []


def test_a_body_the_disk_cannot_hold_is_refused_before_any_byte(tmp_path: Path) -> None:
    taken: list[bytes] = []

    def chunks() -> Iterator[bytes]:
        taken.append(b"")
        yield BODY

    with pytest.raises(OutOfSpace):
        stage(chunks(), size=len(BODY), directory=str(tmp_path), free_space=lambda _: HEADROOM + len(BODY) - 1)
    assert taken == []


def test_a_staged_body_becomes_a_member_with_the_hash_taken_while_staging(tmp_path: Path) -> None:
    ref = ObjectRef("landing", "big.bin", len(BODY), "e", None, "01")
    head = ObjectHead(size=len(BODY), last_modified=WHEN, etag="e", version_id=None)
    sink = io.BytesIO()
    with ArchiveWriter(sink, codec="none", archive_id="a", created_at=WHEN) as writer, \
            stage(pieces(BODY), size=len(BODY), directory=str(tmp_path), free_space=lambda _: PLENTY) as body:
        entry = writer.add_staged(ref, head, body)
        writer.finish()
    assert entry.sha256 == hashlib.sha256(BODY).hexdigest() and entry.size == len(BODY)
    with tarfile.open(fileobj=io.BytesIO(sink.getvalue())) as tar:
        member = tar.extractfile("landing/big.bin")
        assert member is not None and member.read() == BODY


def test_a_staged_body_whose_size_is_not_its_heads_is_refused_and_the_writer_goes_on(tmp_path: Path) -> None:
    ref = ObjectRef("landing", "big.bin", len(BODY), "e", None, "01")
    head = ObjectHead(size=len(BODY) + 1, last_modified=WHEN, etag="e", version_id=None)
    with ArchiveWriter(io.BytesIO(), codec="none", archive_id="a", created_at=WHEN) as writer, \
            stage(pieces(BODY), size=len(BODY), directory=str(tmp_path), free_space=lambda _: PLENTY) as body:
        with pytest.raises(FetchError):
            writer.add_staged(ref, head, body)
        assert not writer.broken and writer.object_count == 0


def test_a_body_whose_upload_would_end_too_late_is_given_up_without_reading_the_rest(tmp_path: Path) -> None:
    read: list[int] = []

    def counted() -> Iterator[bytes]:
        for chunk in pieces(BODY):
            read.append(len(chunk))
            yield chunk

    asked = iter([False, False, True])
    before = open_fds()
    with pytest.raises(FetchError, match="given up after 196608 of 1048576 bytes"):
        stage(counted(), size=len(BODY), directory=str(tmp_path), free_space=lambda _: PLENTY,
              too_late=lambda: next(asked))
    assert len(read) == 3  # the body's stream is left to its owner, unread past that
    assert open_fds() == before and list(tmp_path.iterdir()) == []
