"""A fake transport for the fetch engine: an in-memory S3 behind an event-loop thread.

No sockets. Like the CRT, it calls the handler from its own thread, honours the flow
control window of each stream, and can be scripted to fail: per object, a list of
*faults* is consumed one per request (an HTTP status, a connection reset before or in
the middle of the body, a stall, a truncated body).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from urllib.parse import parse_qs, unquote, urlsplit

from aggregator.fetch.protocol import GetTarget
from aggregator.fetch.transport import Connection, Handler, Stream
from aggregator.sdk.endpoints import Origin

MODIFIED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class Reset(Exception):
    """What the transport reports for a connection broken by the peer."""


@dataclass
class Fault:
    status: int = 0  # an HTTP error status to answer with (0: none)
    code: str = ""  # its error <Code>
    reset_after: int | None = None  # break the connection after this many body bytes
    stall: bool = False  # send nothing after the head (a read timeout)
    truncate_to: int | None = None  # send fewer bytes than Content-Length, then end "normally"


@dataclass
class StoredObject:
    body: bytes
    etag: str
    version_id: str | None = None
    faults: deque[Fault] = field(default_factory=deque)


@dataclass
class Seen:
    host: str
    path: str
    headers: dict[str, str]


class FakeS3:
    """Buckets of keys, each key a list of versions (the last one is current)."""

    def __init__(self, *, chunk: int = 64 * 1024) -> None:
        self.objects: dict[tuple[str, str], list[StoredObject]] = {}
        self.requests: list[Seen] = []
        self.chunk = chunk
        self.lock = threading.Lock()
        self.connects = 0

    def put(self, bucket: str, key: str, body: bytes, *, etag: str | None = None,
            version_id: str | None = None, faults: list[Fault] | None = None) -> StoredObject:
        obj = StoredObject(body, etag or f"etag-{len(body)}-{hash(body) & 0xFFFF:x}", version_id,
                           deque(faults or ()))
        self.objects.setdefault((bucket, key), []).append(obj)
        return obj

    def delete(self, bucket: str, key: str) -> None:
        self.objects.pop((bucket, key), None)

    def respond(self, host: str, path: str, headers: dict[str, str]
                ) -> tuple[int, list[tuple[str, str]], bytes, Fault | None]:
        with self.lock:
            self.requests.append(Seen(host, path, headers))
        parts = urlsplit(path)
        bucket, _, key = unquote(parts.path).lstrip("/").partition("/")
        query = parse_qs(parts.query)
        versions = self.objects.get((bucket, key))
        if not versions:
            return _error(404, "NoSuchKey")
        if "versionId" in query:
            wanted = query["versionId"][0]
            matches = [v for v in versions if v.version_id == wanted]
            if not matches:
                return _error(400, "InvalidArgument") if wanted.startswith("bad") else _error(404, "NoSuchVersion")
            obj = matches[0]
        else:
            obj = versions[-1]
        fault = obj.faults.popleft() if obj.faults else None
        if fault is not None and fault.status:
            return (*_error(fault.status, fault.code)[:3], None)
        if_match = headers.get("If-Match")
        if if_match and if_match.strip('"') != obj.etag:
            return _error(412, "PreconditionFailed")
        body = obj.body
        status = 200
        head = [("Last-Modified", format_datetime(MODIFIED, usegmt=True)), ("ETag", f'"{obj.etag}"')]
        if obj.version_id:
            head.append(("x-amz-version-id", obj.version_id))
        if "Range" in headers:
            start = int(headers["Range"].removeprefix("bytes=").rstrip("-"))
            head.append(("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}"))
            body = body[start:]
            status = 206
        head.append(("Content-Length", str(len(body))))
        return status, head, body, fault


def _error(status: int, code: str) -> tuple[int, list[tuple[str, str]], bytes, Fault | None]:
    body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>m</Message></Error>".encode()
    return status, [("Content-Length", str(len(body)))], body, None


class FakeTransport:
    """Runs every callback on one event-loop thread, as the CRT does."""

    def __init__(self, server: FakeS3, *, window: int, fail_connects: int = 0, stale_after: int | None = None) -> None:
        self.server = server
        self.window = window
        self.fail_connects = fail_connects
        self.stale_after = stale_after  # the server drops idle connections after this many responses
        self._tasks: deque[Callable[[], None]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.connections: list[FakeConnection] = []
        self._thread = threading.Thread(target=self._loop, name="fake-event-loop", daemon=True)
        self._thread.start()

    def post(self, task: Callable[[], None]) -> None:
        with self._cond:
            self._tasks.append(task)
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._tasks and not self._closed:
                    self._cond.wait()
                if not self._tasks:
                    return
                task = self._tasks.popleft()
            task()

    def connect(self, origin: Origin, on_done: Callable[[Connection | None, BaseException | None], None]) -> None:
        host = origin.host
        self.server.connects += 1
        if self.fail_connects:
            self.fail_connects -= 1
            self.post(lambda: on_done(None, Reset("connection refused")))
            return
        conn = FakeConnection(self, host)
        self.connections.append(conn)
        self.post(lambda: on_done(conn, None))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(5)


class FakeConnection:
    def __init__(self, transport: FakeTransport, host: str) -> None:
        self.transport = transport
        self.host = host
        self.signed_regions: list[str] = []
        self.open = True
        self.served = 0
        self.active: FakeStream | None = None

    def is_open(self) -> bool:
        return self.open

    def request(self, target: GetTarget, headers: list[tuple[str, str]], handler: Handler) -> Stream:
        path = target.path
        self.signed_regions.append(target.signing_region)
        if not self.open:
            raise Reset("connection closed")
        stream = FakeStream(self, handler, self.transport.window)
        self.active = stream
        stale = self.transport.stale_after
        if stale is not None and self.served >= stale:
            # Looks open from here, but the server closed it: the request dies unanswered.
            self.open = False
            self.transport.post(lambda: stream.end(Reset("connection closed by peer")))
            return stream
        self.served += 1
        self.transport.post(lambda: stream.start(path, dict(headers)))
        return stream

    def close(self) -> None:
        if self.open:
            self.open = False
            stream = self.active
            if stream is not None:
                self.transport.post(lambda: stream.end(Reset("connection closed")))


class FakeStream:
    def __init__(self, conn: FakeConnection, handler: Handler, window: int) -> None:
        self.conn = conn
        self.handler = handler
        self.window = window
        self.body = b""
        self.sent = 0
        self.fault: Fault | None = None
        self.done = False
        self.lock = threading.Lock()

    def start(self, path: str, headers: dict[str, str]) -> None:
        if self.done:
            return
        status, head, body, fault = self.conn.transport.server.respond(self.conn.host, path, headers)
        self.body, self.fault = body, fault
        self.handler.on_response(self, status, head)
        self.pump()

    def pump(self) -> None:
        """Send as much body as the window allows (on the loop thread)."""
        if self.done:
            return
        fault = self.fault
        limit = len(self.body)
        if fault is not None and fault.stall:
            return
        if fault is not None and fault.truncate_to is not None:
            limit = min(limit, fault.truncate_to)
        if fault is not None and fault.reset_after is not None:
            limit = min(limit, fault.reset_after)
        while self.sent < limit:
            with self.lock:
                n = min(self.window, limit - self.sent, self.conn.transport.server.chunk)
                if n <= 0:
                    return  # wait for update_window
                self.window -= n
            chunk = self.body[self.sent:self.sent + n]
            self.sent += n
            self.handler.on_body(chunk)
        if fault is not None and fault.reset_after is not None and self.sent < len(self.body):
            self.conn.open = False
            self.end(Reset("connection reset by peer"))
        else:
            self.end(None)

    def end(self, error: BaseException | None) -> None:
        if self.done:
            return
        self.done = True
        if self.conn.active is self:
            self.conn.active = None
        self.handler.on_complete(error)

    def update_window(self, size: int) -> None:
        with self.lock:
            self.window += size
        self.conn.transport.post(self.pump)
