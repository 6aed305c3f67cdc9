"""The JSON lines a child process writes on a pipe: the local Lambda sandbox's and the test
harness's channel back from the function's process."""

from __future__ import annotations

import json
import os
import select
import time
from typing import Any


class JsonLines:
    """Reads one JSON line at a time from ``fd`` (owned: ``close`` closes it)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = b""

    def read(self, deadline: float) -> dict[str, Any] | None:
        """The next line's object; None at the ``time.monotonic()`` deadline, {} once the
        writer is gone (end of file)."""
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([self.fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return {}
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        message: dict[str, Any] = json.loads(line)
        return message

    def close(self) -> None:
        os.close(self.fd)
