"""The archive spool: memory first, then /tmp, and a clear failure before the disk fills."""

from __future__ import annotations

import pytest

from aggregator.archive.spool import ArchiveSpool, OutOfSpace


def test_small_archives_stay_in_memory_and_read_back(tmp_path) -> None:
    with ArchiveSpool(max_memory=1024, directory=str(tmp_path)) as spool:
        spool.write(b"abc" * 10)
        assert not spool.on_disk and spool.rewind().read() == b"abc" * 10
    assert list(tmp_path.iterdir()) == []


def test_zero_memory_means_disk_at_once(tmp_path) -> None:
    with ArchiveSpool(max_memory=0, directory=str(tmp_path)) as spool:
        spool.write(b"x" * 100)
        assert spool.on_disk
        assert spool._file.fileno() >= 0  # a real file, not a buffer that never spills
        assert spool.rewind().read() == b"x" * 100


def test_a_disk_that_cannot_hold_the_rest_fails_early(tmp_path) -> None:
    free = {"bytes": 40 << 20}
    spool = ArchiveSpool(max_memory=1 << 20, directory=str(tmp_path), still_to_write=lambda: 100 << 20,
                         free_space=lambda _: free["bytes"])
    with spool, pytest.raises(OutOfSpace, match="MiB free"):
        spool.ensure_room(100 << 20)
    free["bytes"] = 1 << 40
    with ArchiveSpool(max_memory=1 << 20, directory=str(tmp_path), still_to_write=lambda: 100 << 20,
                      free_space=lambda _: free["bytes"]) as roomy:
        roomy.ensure_room(100 << 20)  # plenty of room: no error


def test_the_disk_is_rechecked_while_writing(tmp_path) -> None:
    free = {"bytes": 1 << 40}
    with ArchiveSpool(max_memory=1 << 20, directory=str(tmp_path), still_to_write=lambda: 64 << 20,
                      free_space=lambda _: free["bytes"]) as spool:
        spool.write(b"\0" * (2 << 20))
        free["bytes"] = 20 << 20  # someone else filled /tmp meanwhile
        with pytest.raises(OutOfSpace):
            for _ in range(10):
                spool.write(b"\0" * (2 << 20))


def test_an_archive_known_to_be_too_big_for_memory_goes_to_disk_at_once(tmp_path) -> None:
    with ArchiveSpool(max_memory=1024, directory=str(tmp_path), expected_size=4096,
                      free_space=lambda _: 100 << 20) as spool:
        spool.write(b"x" * 10)
        assert spool.on_disk and spool._file.fileno() >= 0
        assert spool.capacity() == (100 << 20) - (16 << 20)  # the disk less its headroom, no memory share
        assert spool.rewind().read() == b"x" * 10
    with ArchiveSpool(max_memory=1024, directory=str(tmp_path), expected_size=1024) as fits:
        fits.write(b"x" * 10)
        assert not fits.on_disk
