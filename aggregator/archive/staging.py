"""A large body received whole into a temporary file before it becomes a tar member.

A member is written in one go once its header is out: a body that broke half-way would
leave the archive corrupt, and every object of the batch would fail with it. So a large
body (the fetch layer's ``Streamed``) is first copied to a file next to the archive spool,
in bounded chunks, hashed as it goes; only a body received to its declared size is handed
to the writer, which then copies a file that can no longer break (:meth:`ArchiveWriter.
add_staged <aggregator.archive.writer.ArchiveWriter.add_staged>`). A body that breaks, is
cancelled or does not fit fails that object alone, and its file is gone.

The file is anonymous (``O_TMPFILE`` where the OS has it, else unlinked at once): closing it,
or the process dying, frees its space; nothing is ever left behind in the directory.
"""

from __future__ import annotations

import errno
import hashlib
import tempfile
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import BinaryIO

from aggregator.archive.spool import HEADROOM, OutOfSpace, free_bytes
from aggregator.base.errors import FetchError

READ_CHUNK = 1 << 20  # bytes per read when the staged body is copied into the archive


class StagedBody:
    """``size`` bytes whose SHA-256 is ``sha256`` (hex), in a temporary file; close when done."""

    def __init__(self, file: BinaryIO, *, size: int, sha256: str) -> None:
        self._file = file
        self.size = size
        self.sha256 = sha256

    def chunks(self, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        """The body from its start, ``chunk_size`` bytes at a time."""
        self._file.seek(0)
        while chunk := self._file.read(chunk_size):
            yield chunk

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> StagedBody:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def stage(chunks: Iterable[bytes], *, size: int, directory: str, name: str = "body",
          free_space: Callable[[str], int] = free_bytes, too_late: Callable[[], bool] | None = None) -> StagedBody:
    """Copy ``chunks`` (``size`` bytes declared) into a temporary file in ``directory``.

    ``too_late`` is asked after each chunk: once it says yes, the body is given up
    (:class:`FetchError`) and the rest of it is never read.

    Raises, with nothing left on disk: :class:`OutOfSpace` when ``directory`` cannot hold
    ``size`` more bytes, :class:`FetchError` when the body gives more or fewer bytes than
    ``size`` or fails itself (a broken or cancelled GET), and whatever the file raises.
    """
    free = free_space(directory)
    if free - size < HEADROOM:
        raise OutOfSpace(f"{directory} has {free >> 20} MiB free; {name} needs {size >> 20} MiB to be staged")
    file: BinaryIO = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - owned by the StagedBody or closed here
    try:
        digest = hashlib.sha256()
        received = 0
        for chunk in chunks:
            received += len(chunk)
            if received > size:
                raise FetchError(f"{name}: body runs past its declared {size} bytes")
            digest.update(chunk)
            file.write(chunk)
            if too_late is not None and received < size and too_late():
                raise FetchError(f"{name}: given up after {received} of {size} bytes: its upload would end "
                                 f"past the deadline")
        if received != size:
            raise FetchError(f"{name}: body ends after {received} of its declared {size} bytes")
        file.flush()
    except OSError as e:
        file.close()
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutOfSpace(f"{directory} filled up while staging {name}") from e
        raise
    except BaseException:
        file.close()
        raise
    return StagedBody(file, size=size, sha256=digest.hexdigest())
