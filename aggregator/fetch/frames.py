"""The framing of a child's pipe: small pickled heads, bodies as raw bytes.

Each frame is ``kind`` (1 byte), ``meta`` length and ``body`` length (4 bytes each,
little-endian), then the pickled meta, then the body. A large object is a ``STREAM``
frame with its head, a run of ``CHUNK`` frames and one ``STREAM_END`` (or
``STREAM_ERROR``): nothing else is interleaved on that pipe, because one thread writes it.
"""

from __future__ import annotations

import os
import pickle
import struct
from datetime import datetime
from typing import Any

from aggregator.base.objects import ObjectHead

HEADER = struct.Struct("<BII")

FETCHED = 1  # meta head_meta(index, head), body: the object
MISSING = 2  # meta index
FAILED = 3  # meta (index, message)
STREAM = 4  # meta head_meta(index, head); CHUNK frames follow
CHUNK = 5  # body: the next piece of the stream
STREAM_END = 6
STREAM_ERROR = 7  # meta message
DONE = 8  # no meta; nothing follows
CRASH = 9  # meta message: the child failed as a whole

_READ_SIZE = 1 << 20


def head_meta(index: int, head: ObjectHead) -> tuple[int, int, datetime, str, str | None]:
    # A plain tuple: pickling a slotted dataclass goes through dataclasses.fields() and
    # costs ~20x more per object than the tuple does.
    return index, head.size, head.last_modified, head.etag, head.version_id


def head_from_meta(meta: tuple[int, int, datetime, str, str | None]) -> ObjectHead:
    return ObjectHead(size=meta[1], last_modified=meta[2], etag=meta[3], version_id=meta[4])


def encode(kind: int, meta: Any = None, body: bytes = b"") -> list[bytes]:
    """The frame's parts, ready for ``os.writev``."""
    packed = pickle.dumps(meta, protocol=pickle.HIGHEST_PROTOCOL) if meta is not None else b""
    return [HEADER.pack(kind, len(packed), len(body)), packed, body]


def write_all(fd: int, parts: list[bytes]) -> None:
    """Write every byte of ``parts`` (``writev`` may stop short on a pipe)."""
    total = sum(len(p) for p in parts)
    written = os.writev(fd, parts)
    if written == total:
        return
    rest = memoryview(b"".join(parts))[written:]
    while rest:
        rest = rest[os.write(fd, rest):]


class FrameReader:
    """Reads frames from a non-seekable fd, many frames per ``read`` when they are small."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.eof = False
        self._buf = bytearray()
        self._pos = 0

    def fileno(self) -> int:
        return self.fd

    def fill(self) -> None:
        """One ``read`` of what is available (call it when the fd is readable)."""
        data = os.read(self.fd, _READ_SIZE)
        if not data:
            self.eof = True
            return
        if self._pos and self._pos * 2 >= len(self._buf):
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    def has_frame(self) -> bool:
        available = len(self._buf) - self._pos
        if available < HEADER.size:
            return False
        _, meta_len, body_len = HEADER.unpack_from(self._buf, self._pos)
        return bool(available >= HEADER.size + meta_len + body_len)

    def next(self) -> tuple[int, Any, bytes] | None:
        """The next complete frame, or None until more bytes arrive."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < HEADER.size:
            return None
        kind, meta_len, body_len = HEADER.unpack_from(buf, pos)
        start = pos + HEADER.size
        end = start + meta_len + body_len
        if len(buf) < end:
            return None
        view = memoryview(buf)
        try:
            meta = pickle.loads(view[start:start + meta_len]) if meta_len else None
            body = bytes(view[start + meta_len:end])
        finally:
            view.release()
        self._pos = end
        if end == len(buf):
            self._buf.clear()
            self._pos = 0
        return kind, meta, body
