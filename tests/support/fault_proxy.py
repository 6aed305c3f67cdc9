"""A loopback HTTP/1.1 proxy in front of one test server, with faults chosen per request.

The code under test is pointed at the proxy (``AWS_ENDPOINT_URL_S3``, the MinIO secret's
``endpoint_url`` ...) and the test decides, request by request, what the proxy does::

    with FaultProxy(moto.endpoint_url) as proxy:
        proxy.add(lambda r: r.method == "GET" and r.key == "bucket/a", slow_down(), times=2)
        ...  # the first two GETs of bucket/a get 503 SlowDown, everything else goes through

Requests are forwarded byte for byte (headers in their order, the signed ``Host``
unchanged), so SigV4 signatures still verify upstream. Faults:

* ``respond``: answer without asking upstream (a 503 SlowDown, a 500, a DynamoDB error);
* ``answer_lost``: forward, let upstream act on it, then answer with an error instead;
* ``reset``: read ``after_body`` bytes of the request body, then reset the connection;
* ``drop``: read the request, then close the connection without an answer;
* ``truncate``: forward, send the response head and only part of its body, then close;
* ``slow``: forward, then dribble the response body in small pieces;
* ``delay``: wait, then forward.

Every request is logged as ``(method, target, fault)`` in :attr:`FaultProxy.log`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import unquote, urlsplit

_MAX_HEAD = 64 * 1024


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # path and query, as sent
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((value for key, value in self.headers if key.lower() == lowered), None)

    @property
    def path(self) -> str:
        return unquote(self.target.split("?", 1)[0])

    @property
    def key(self) -> str:
        """``bucket/key`` of a path-style S3 request (decoded)."""
        return self.path.lstrip("/")

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""

    @property
    def operation(self) -> str:
        """The JSON protocol's operation (DynamoDB, Secrets Manager): ``X-Amz-Target``'s suffix."""
        return (self.header("X-Amz-Target") or "").rsplit(".", 1)[-1]

    @property
    def is_object_get(self) -> bool:
        """A GetObject of a path-style request (not a bucket listing)."""
        return self.method == "GET" and "/" in self.key.strip("/") and "list-type" not in self.query


@dataclass(frozen=True)
class Fault:
    kind: str  # respond | answer_lost | reset | drop | truncate | slow | delay
    status: int = 500
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | Callable[[bytes], bytes] = b""
    after_body: int = 0  # reset: request body bytes read first
    fraction: float = 0.5  # truncate: share of the response body sent
    chunk: int = 512  # slow: bytes per piece
    pause: float = 0.02  # slow: seconds between pieces
    seconds: float = 0.0  # delay

    @property
    def label(self) -> str:
        return f"{self.kind} {self.status}" if self.kind in ("respond", "answer_lost") else self.kind


def s3_error(status: int, code: str) -> Fault:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>injected by the test '
            f"proxy</Message><RequestId>0</RequestId></Error>").encode()
    return Fault("respond", status=status, headers=(("Content-Type", "application/xml"),), body=body)


def slow_down() -> Fault:
    return s3_error(503, "SlowDown")


def json_error(status: int, code: str, *, service: str = "com.amazonaws.dynamodb.v20120810") -> Fault:
    body = json.dumps({"__type": f"{service}#{code}", "message": "injected by the test proxy"}).encode()
    return Fault("respond", status=status, headers=(("Content-Type", "application/x-amz-json-1.0"),
                                                    ("x-amzn-ErrorType", f"{code}:")), body=body)


def transaction_conflict() -> Fault:
    """A TransactWriteItems cancelled with TransactionConflict for every item it holds."""

    def body(request_body: bytes) -> bytes:
        items = json.loads(request_body or b"{}").get("TransactItems", [])
        return json.dumps({
            "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
            "Message": "Transaction cancelled, please refer cancellation reasons for specific reasons",
            "CancellationReasons": [{"Code": "TransactionConflict", "Message": "injected"} for _ in items],
        }).encode()

    return Fault("respond", status=400, headers=(("Content-Type", "application/x-amz-json-1.0"),
                                                 ("x-amzn-ErrorType", "TransactionCanceledException:")), body=body)


@dataclass
class _Rule:
    match: Callable[[Request], bool]
    fault: Fault
    times: int | None  # None: every matching request
    per: Callable[[Request], str] | None  # count ``times`` separately per this value
    fired: dict[str, int] = field(default_factory=dict)

    def take(self, request: Request) -> bool:
        if not self.match(request):
            return False
        bucket = self.per(request) if self.per else ""
        count = self.fired.get(bucket, 0)
        if self.times is not None and count >= self.times:
            return False
        self.fired[bucket] = count + 1
        return True


class FaultProxy:
    def __init__(self, upstream_url: str, *, name: str = "proxy") -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("the fault proxy forwards plain http only")
        self.name = name
        self._upstream = (parts.hostname, parts.port or 80)
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self.log: list[tuple[str, str, str]] = []
        self._server: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- rules ----------------------------------------------------------------------------
    def add(self, match: Callable[[Request], bool], fault: Fault, *, times: int | None = None,
            per: Callable[[Request], str] | None = None) -> None:
        """Apply ``fault`` to requests ``match`` accepts: ``times`` of them (per ``per`` value)."""
        with self._lock:
            self._rules.append(_Rule(match, fault, times, per))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def faults_applied(self) -> list[tuple[str, str, str]]:
        with self._lock:
            return [entry for entry in self.log if entry[2] != "forward"]

    def _choose(self, request: Request) -> Fault | None:
        with self._lock:
            fault = next((rule.fault for rule in self._rules if rule.take(request)), None)
            self.log.append((request.method, request.target, fault.label if fault else "forward"))
            return fault

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._stopping.clear()
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(128)
        self.port = server.getsockname()[1]
        self._server = server
        thread = threading.Thread(target=self._accept, args=(server,), name=f"{self.name}-accept", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
            self._server = None
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def down(self) -> None:
        """The server is down: connections to the port are refused until :meth:`up`."""
        self.stop()

    def up(self) -> None:
        """Listen again on the same port."""
        self.start()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def _accept(self, server: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), name=f"{self.name}-conn", daemon=True)
            with self._lock:
                self._connections.add(conn)
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
            thread.start()

    # -- one client connection ---------------------------------------------------------------
    def _serve(self, conn: socket.socket) -> None:
        upstream: http.client.HTTPConnection | None = None
        reader = conn.makefile("rb")
        try:
            while not self._stopping.is_set():
                request = _read_head(reader)
                if request is None:
                    return
                if (request.header("Expect") or "").lower() == "100-continue":
                    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                fault = self._choose(request)
                if fault is not None and fault.kind == "reset":
                    _read_body(reader, request, limit=fault.after_body)
                    _reset(conn, reader)
                    return
                body = _read_body(reader, request)
                if fault is not None and fault.kind == "drop":
                    return
                if fault is not None and fault.kind == "respond":
                    payload = fault.body(body) if callable(fault.body) else fault.body
                    _send_response(conn, request, fault.status, list(fault.headers), payload)
                    continue
                if fault is not None and fault.kind == "delay":
                    time.sleep(fault.seconds)
                if upstream is None:
                    upstream = http.client.HTTPConnection(*self._upstream, timeout=120)
                status, headers, payload = _forward(upstream, request, body)
                if fault is not None and fault.kind == "answer_lost":
                    error = fault.body(body) if callable(fault.body) else fault.body
                    _send_response(conn, request, fault.status, list(fault.headers), error)
                    continue
                if fault is not None and fault.kind == "truncate":
                    cut = int(len(payload) * fault.fraction)
                    _send_head(conn, request, status, headers, len(payload))
                    conn.sendall(payload[:cut])
                    return
                if fault is not None and fault.kind == "slow":
                    _send_head(conn, request, status, headers, len(payload))
                    for start in range(0, len(payload), fault.chunk):
                        conn.sendall(payload[start:start + fault.chunk])
                        time.sleep(fault.pause)
                    continue
                _send_response(conn, request, status, headers, payload)
                if (request.header("Connection") or "").lower() == "close":
                    return
        except (OSError, http.client.HTTPException, ValueError):
            return
        finally:
            if upstream is not None:
                upstream.close()
            with contextlib.suppress(OSError):
                reader.close()
            with contextlib.suppress(OSError):
                conn.close()
            with self._lock:
                self._connections.discard(conn)


def _read_head(reader: object) -> Request | None:
    lines: list[bytes] = []
    size = 0
    while True:
        line = reader.readline(_MAX_HEAD)  # type: ignore[attr-defined]
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            if not lines:
                continue
            break
        size += len(line)
        if size > _MAX_HEAD:
            raise ValueError("request head too large")
        lines.append(line)
    method, target, _ = lines[0].decode("latin-1").split(" ", 2)
    headers = []
    for raw in lines[1:]:
        name, _, value = raw.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    return Request(method=method, target=target, headers=tuple(headers))


def _read_body(reader: object, request: Request, *, limit: int | None = None) -> bytes:
    read = reader.read  # type: ignore[attr-defined]
    if (request.header("Transfer-Encoding") or "").lower() == "chunked":
        # Kept as sent (chunk framing included): forwarded as it came.
        parts = []
        while True:
            size_line = reader.readline()  # type: ignore[attr-defined]
            parts.append(size_line)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:
                    trailer = reader.readline()  # type: ignore[attr-defined]
                    parts.append(trailer)
                    if trailer in (b"\r\n", b"\n", b""):
                        return b"".join(parts)
            parts.append(read(size + 2))
            if limit is not None and sum(map(len, parts)) >= limit:
                return b"".join(parts)
    length = int(request.header("Content-Length") or 0)
    if limit is not None:
        length = min(length, limit)
    return bytes(read(length)) if length else b""


def _forward(upstream: http.client.HTTPConnection, request: Request,
             body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    for attempt in (1, 2):
        try:
            upstream.putrequest(request.method, request.target, skip_host=True, skip_accept_encoding=True)
            for name, value in request.headers:
                if name.lower() != "expect":
                    upstream.putheader(name, value)
            upstream.endheaders(body if body else None)
            response = upstream.getresponse()
            payload = response.read()
            return response.status, list(response.getheaders()), payload
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            upstream.close()  # a kept-alive connection the server closed: once more on a new one
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


_REASONS = {200: "OK", 204: "No Content", 206: "Partial Content", 304: "Not Modified", 400: "Bad Request",
            403: "Forbidden", 404: "Not Found", 412: "Precondition Failed", 500: "Internal Server Error",
            503: "Service Unavailable"}


def _send_head(conn: socket.socket, request: Request, status: int, headers: list[tuple[str, str]],
               length: int) -> None:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    for name, value in headers:
        if name.lower() in ("transfer-encoding", "connection", "content-length", "keep-alive"):
            continue
        lines.append(f"{name}: {value}")
    if request.method == "HEAD":
        # A HEAD answer describes the object: keep upstream's length, send no body.
        original = next((v for k, v in headers if k.lower() == "content-length"), None)
        if original is not None:
            lines.append(f"Content-Length: {original}")
    elif status not in (204, 304):
        lines.append(f"Content-Length: {length}")
    conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


def _send_response(conn: socket.socket, request: Request, status: int, headers: list[tuple[str, str]],
                   payload: bytes) -> None:
    _send_head(conn, request, status, headers, len(payload))
    if request.method != "HEAD" and status not in (204, 304) and payload:
        conn.sendall(payload)


def _reset(conn: socket.socket, reader: object) -> None:
    """Close with RST instead of FIN: the peer sees 'connection reset by peer'."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        reader.close()  # type: ignore[attr-defined]  # the socket closes with its last file
    conn.close()
