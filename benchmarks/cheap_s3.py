"""A cheap, read-only, in-memory S3 GET server: the load target that makes the client the
bottleneck (SeaweedFS and moto spend more CPU per GET than our client does).

It serves ``count`` deterministic objects under ``/{bucket}/{prefix}/NNNNNN.jsonl`` from
precomputed responses: Content-Length, Last-Modified, an MD5 ETag, and ``If-Match`` honoured
(412 otherwise), which is all a version-pinned GetObject needs. Signatures are not checked.
Each response is one ``transport.write`` of bytes built at start-up, so a GET costs the
server little more than the two system calls.

Run as ``python -m benchmarks.cheap_s3 PORT BUCKET PREFIX COUNT SIZE``; it prints ``ready``
when it listens and stops on SIGTERM. :class:`CheapS3` does that and gives the refs (with
the eTags the events would carry) to the benchmark that reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
from email.utils import formatdate
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from aggregator.base.events import ObjectRef
from benchmarks.harness import SMALL_SIZE, S3Server, small_bodies
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "cheap-source"
PREFIX = "small"

LAST_MODIFIED = formatdate(1_741_064_767, usegmt=True)  # 2025-03-04T05:06:07Z


def object_keys(prefix: str, count: int) -> list[str]:
    return [f"{prefix}/host-{i % 16:02d}/{i:06d}.jsonl" for i in range(count)]


def _responses(bucket: str, prefix: str, count: int, size: int) -> dict[bytes, tuple[bytes, bytes]]:
    """Encoded request path -> (the object's quoted eTag, the whole 200 response)."""
    table = {}
    for key, body in zip(object_keys(prefix, count), small_bodies(count, size), strict=True):
        etag = f'"{hashlib.md5(body).hexdigest()}"'.encode()
        head = (f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nLast-Modified: {LAST_MODIFIED}\r\n"
                f"ETag: {etag.decode()}\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
        table[f"/{bucket}/{quote(key, safe='/~')}".encode()] = (etag, head + body)
    return table


_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
_PRECONDITION = b"HTTP/1.1 412 Precondition Failed\r\nContent-Length: 0\r\n\r\n"


class _Protocol(asyncio.Protocol):
    def __init__(self, table: dict[bytes, tuple[bytes, bytes]]) -> None:
        self._table = table
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            request, buffer = buffer[:end], buffer[end + 4:]
            line, _, headers = request.partition(b"\r\n")
            target = line.split(b" ", 2)[1].split(b"?", 1)[0]
            found = self._table.get(target)
            if found is None:
                answer = _NOT_FOUND
            else:
                etag, answer = found
                lowered = headers.lower()
                at = lowered.find(b"if-match:")
                if at >= 0 and headers[at + 9:].split(b"\r\n", 1)[0].strip() != etag:
                    answer = _PRECONDITION
            assert self._transport is not None
            self._transport.write(answer)
        self._buffer = buffer


async def _serve(port: int, table: dict[bytes, tuple[bytes, bytes]]) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    server = await loop.create_server(lambda: _Protocol(table), "127.0.0.1", port, backlog=512)
    print("ready", flush=True)
    async with server:
        await stop


def main(argv: list[str]) -> None:
    port, bucket, prefix, count, size = int(argv[0]), argv[1], argv[2], int(argv[3]), int(argv[4])
    asyncio.run(_serve(port, _responses(bucket, prefix, count, size)))


class CheapS3:
    """The server as a child process in its own session, stopped by PID."""

    def __init__(self, *, count: int, size: int = SMALL_SIZE) -> None:
        self.count = count
        self.size = size
        self.port = free_port()
        self.server = S3Server(f"http://127.0.0.1:{self.port}")
        self.process: subprocess.Popen[bytes] | None = None
        bodies = small_bodies(count, size)
        self.refs = [ObjectRef(bucket=BUCKET, key=key, size=size, etag=hashlib.md5(body).hexdigest(),
                               version_id=None, sequencer=f"{i:016X}")
                     for i, (key, body) in enumerate(zip(object_keys(PREFIX, count), bodies, strict=True))]

    def __enter__(self) -> CheapS3:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.cheap_s3", str(self.port), BUCKET, PREFIX, str(self.count),
             str(self.size)], cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != b"ready":
            self.stop()
            raise RuntimeError("the cheap S3 server did not start")
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
