"""Where the archive is written before upload: memory first, then a file in /tmp.

The archive must be complete (and its SHA-256 known) before the upload starts, so that
publishing is atomic. Small archives never touch the disk; big ones spill to /tmp, whose
free space is checked against what is still to be written, so that a full disk fails the
batch clearly and early instead of as a half-written archive. A batch whose archive is
known to be bigger than the memory allowance (its events give the objects' sizes) goes to
disk at once: filling the memory first would only raise the peak RSS by that much before
the spill moved it out.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from types import TracebackType
from typing import BinaryIO

from aggregator.base.errors import RetryableError

_CHECK_EVERY = 8 << 20  # statvfs is cheap, but not per 8 KiB write
HEADROOM = 16 << 20  # never take the last few MiB: other writers (and staged bodies) share /tmp


class OutOfSpace(RetryableError):
    """/tmp cannot hold what is left of the archive."""


def free_bytes(directory: str) -> int:
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


class ArchiveSpool:
    """A write-then-read file: ``write`` while archiving, then ``rewind`` and read to upload.

    ``still_to_write`` is an upper bound of the bytes yet to come (the sources' sizes;
    compression only shrinks them); the disk check uses it once the spool is on disk.
    ``expected_size``, an upper bound of the whole archive when known, sends it to disk at
    once when it exceeds ``max_memory``.
    """

    def __init__(self, *, max_memory: int, directory: str | None = None, expected_size: int | None = None,
                 still_to_write: Callable[[], int] = lambda: 0,
                 free_space: Callable[[str], int] = free_bytes) -> None:
        self.directory = directory or tempfile.gettempdir()
        if expected_size is not None and expected_size > max_memory:
            max_memory = 0
        self._max_memory = max_memory
        # max_size=0 would mean "never spill" to SpooledTemporaryFile: 0 here means disk at once.
        self._file: BinaryIO = (
            tempfile.SpooledTemporaryFile(max_size=max_memory, dir=self.directory)  # type: ignore[assignment]  # noqa: SIM115
            if max_memory > 0 else tempfile.TemporaryFile(dir=self.directory)  # noqa: SIM115 - closed by close()
        )
        self._still_to_write = still_to_write
        self.free_space = free_space  # the disk probe; large bodies staged beside the spool use it too
        self.size = 0
        self._next_check = max_memory

    @property
    def on_disk(self) -> bool:
        return self.size > self._max_memory

    def capacity(self) -> int:
        """Bytes this spool can still take: memory, then the free disk less headroom."""
        return max(0, self._max_memory - self.size) + max(0, self.free_space(self.directory) - HEADROOM)

    def ensure_room(self, incoming: int) -> None:
        """Fail now if ``incoming`` more bytes could not fit once spilled to disk."""
        if self.size + incoming <= self._max_memory:
            return
        free = self.free_space(self.directory)
        if free - incoming < HEADROOM:
            raise OutOfSpace(
                f"{self.directory} has {free >> 20} MiB free; the archive needs up to "
                f"{incoming >> 20} MiB more"
            )

    def write(self, data: bytes | bytearray | memoryview) -> int:
        written = self._file.write(data)
        self.size += written
        if self.size >= self._next_check:
            self._next_check = self.size + _CHECK_EVERY
            self.ensure_room(self._still_to_write())
        return written

    def flush(self) -> None:
        self._file.flush()

    def rewind(self) -> BinaryIO:
        self._file.flush()
        self._file.seek(0)
        return self._file

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ArchiveSpool:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
