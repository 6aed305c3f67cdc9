"""A progress indicator on stderr for long listings, without a dependency.

On a terminal: one line rewritten in place at most five times a second. Elsewhere (a log
file, CI): a plain line every ``interval_s``, so a long run still shows it is alive, and
nothing at all for a run shorter than that.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    def __init__(self, label: str, *, stream: TextIO | None = None, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._label = label
        self._stream = stream or sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._interval = 0.2 if self._tty else interval_s
        self._clock = clock
        self._started = clock()
        self._last = self._started
        self._shown = False
        self.listed_count = 0
        self.checked_count = 0

    def listed(self, n: int) -> None:
        self.listed_count += n
        self._maybe_show()

    def checked(self, n: int) -> None:
        self.checked_count += n
        self._maybe_show()

    def _maybe_show(self) -> None:
        now = self._clock()
        if now - self._last < self._interval:
            return
        self._last = now
        rate = self.checked_count / max(now - self._started, 1e-9)
        text = (f"{self._label}: listed {self.listed_count:,} object versions, checked {self.checked_count:,} "
                f"({rate:,.0f}/s)")
        if self._tty:
            self._stream.write("\r" + text + "\x1b[K")
        else:
            self._stream.write(text + "\n")
        self._stream.flush()
        self._shown = True

    def done(self) -> None:
        if self._tty and self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
