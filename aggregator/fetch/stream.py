"""A large body between the transport's event-loop thread and the archive writer.

The producer (the engine, on a loop thread) pushes chunks as they arrive; the consumer
(the writer) reads them. Flow control: each chunk taken out re-opens the HTTP window by
as many bytes, so the body moves only as fast as the writer reads it. The transport's
stream changes when a broken body is resumed with ``Range`` (:meth:`StreamState.attach`).
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Protocol

from aggregator.base.errors import FetchError, RetryableError

_POLL = 0.5  # the reader's longest wait before it checks the cancel event itself


class FetchCancelled(FetchError):
    """The fetch was cancelled before every object was handed over."""


class Window(Protocol):
    def update_window(self, size: int) -> None: ...


class StreamState:
    """One large body. ``owner`` is the engine's job (the engine finds its slot by it)."""

    def __init__(self, *, owner: object, size: int, window: Window | None, cancel: threading.Event,
                 on_abandon: Callable[[StreamState], None]) -> None:
        self.owner = owner
        self.size = size
        self.current = window  # the transport stream whose body is being read
        self._cancel = cancel
        self._on_abandon = on_abandon
        self._cond = threading.Condition(threading.Lock())
        self._buffer: deque[bytes] = deque()
        self.buffered = 0
        self.received = 0
        self.finished = False
        self.abandoned = False
        self._done = False
        self._error: RetryableError | None = None

    # -- producer (event-loop thread) ---------------------------------------------------

    def attach(self, window: Window | None) -> None:
        """A resumed request carries the rest of the body."""
        self.current = window

    def push(self, chunk: bytes) -> None:
        with self._cond:
            self._buffer.append(chunk)
            self.buffered += len(chunk)
            self.received += len(chunk)
            self._cond.notify()

    def finish(self) -> None:
        with self._cond:
            self._done = True
            self.current = None
            self._cond.notify()

    def fail(self, error: RetryableError) -> None:
        with self._cond:
            if not self._done and self._error is None:
                self._error = error
            self.current = None
            self._cond.notify()

    # -- consumer (writer thread) -------------------------------------------------------

    def abandon(self) -> None:
        """The reader gives up before the end: the engine frees the slot."""
        with self._cond:
            if self.finished or self.abandoned:
                return
            self.abandoned = True
            if not self._done and self._error is None:
                self._error = FetchError("stream abandoned before its end")
            self._cond.notify()
        self._on_abandon(self)

    def read(self, limit: int) -> bytes | None:
        """Up to about ``limit`` bytes; ``None`` at the end; raises the stream's error."""
        with self._cond:
            while not self._buffer and not self._done and self._error is None:
                if self._cancel.is_set():
                    self._error = FetchCancelled("fetch cancelled")
                    break
                self._cond.wait(_POLL)
            if self._buffer:
                pieces = []
                taken = 0
                while self._buffer and taken < limit:
                    piece = self._buffer.popleft()
                    pieces.append(piece)
                    taken += len(piece)
                self.buffered -= taken
                window = self.current
            elif self._error is not None:
                raise self._error
            else:
                self.finished = True
                return None
        if window is not None:
            with contextlib.suppress(Exception):  # a stream already gone: nothing to re-open
                window.update_window(taken)  # let as many bytes in as were taken out
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)


class Chunks(Iterator[bytes]):
    """``Streamed.chunks``: reads the body in pieces of about ``chunk_size`` bytes."""

    def __init__(self, state: StreamState, *, chunk_size: int) -> None:
        self.state = state
        self._chunk_size = chunk_size

    def __iter__(self) -> Chunks:
        return self

    def __next__(self) -> bytes:
        chunk = self.state.read(self._chunk_size)
        if chunk is None:
            raise StopIteration
        return chunk

    def close(self) -> None:
        self.state.abandon()
