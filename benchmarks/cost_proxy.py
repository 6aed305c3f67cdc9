"""A counting reverse proxy on loopback: every request to the local AWS and MinIO servers,
by service and operation, with what it would be billed.

It sits in front of moto (the JSON protocols: DynamoDB, Secrets Manager, SQS) and in front
of the S3 server, and counts whatever client sends the requests (boto3, the CRT fetch, the
lean DynamoDB client, the seed reference), so the cost model does not depend on how the
code under test talks to its services. Requests are forwarded byte for byte (the helpers of
:mod:`tests.support.fault_proxy`), so SigV4 signatures still verify upstream.

It runs as its own process (``python -m benchmarks.cost_proxy --json URL --s3 URL
--minio-bucket B``), so that its CPU never competes for the GIL with the code measured;
it prints ``{"json": port, "s3": port}`` on its first line and serves until stdin closes.
S3 requests to a ``--minio-bucket`` count as MinIO (on-premise: no request price, their
request bytes are data out); the others as the AWS landing bucket. On either port,
``GET /__cost__/snapshot`` answers the counts so far and ``POST /__cost__/reset`` zeroes
them; nothing else is answered by the proxy itself.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import http.client
import json
import socket
import sys
import threading
import urllib.request
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from benchmarks.cost_model import dynamodb_units, s3_operation
from tests.support.fault_proxy import Request, _forward, _read_body, _read_head, _send_response

CONTROL = "/__cost__/"
_SERVICES = {"DynamoDB_20120810": "dynamodb", "secretsmanager": "secretsmanager", "AmazonSQS": "sqs"}


@dataclass
class Count:
    requests: int = 0
    wru: float = 0.0
    rru: float = 0.0
    items: int = 0
    failed_conditions: int = 0
    errors: int = 0
    request_bytes: int = 0
    response_bytes: int = 0
    unparsed: int = 0  # DynamoDB requests whose units could not be worked out (cost.measure refuses them)


class Counter:
    def __init__(self, minio_buckets: set[str]) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, Count] = {}
        self.minio_buckets = minio_buckets

    def reset(self) -> None:
        with self._lock:
            self._counts = {}

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {key: asdict(count) for key, count in sorted(self._counts.items())}

    def record(self, kind: str, request: Request, body: bytes, status: int, payload: bytes, head_bytes: int, *,
               response_headers: list[tuple[str, str]] | None = None) -> None:
        if kind == "json":
            target = request.header("X-Amz-Target") or ""
            prefix, _, operation = target.partition(".")
            service = _SERVICES.get(prefix, prefix or "unknown")
        else:
            operation = s3_operation(request.method, request.path, request.query, dict(request.headers))
            bucket = request.path.lstrip("/").split("/", 1)[0]
            service = "minio" if bucket in self.minio_buckets else "s3"
        units = None
        unparsed = False
        if service == "dynamodb":
            try:
                sent = json.loads(_decoded(body, request.headers) or b"{}")
            except ValueError:
                sent, unparsed = {}, True
            try:
                answer = json.loads(_decoded(payload, response_headers or []) or b"{}")
            except ValueError:
                answer = {}  # the request alone still prices a write; a read's answer sizes it
            try:
                units = dynamodb_units(operation, sent, status=status, response=answer)
            except (TypeError, KeyError, ValueError, AttributeError):
                unparsed = True
        with self._lock:
            count = self._counts.setdefault(f"{service} {operation}", Count())
            count.requests += 1
            count.request_bytes += head_bytes + len(body)
            count.response_bytes += len(payload)
            if status >= 400:
                count.errors += 1
            if unparsed:
                count.unparsed += 1
            if units is not None:
                count.wru += units.wru
                count.rru += units.rru
                count.items += units.items
                count.failed_conditions += units.failed_conditions


def _decoded(data: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
    """A body as JSON text, whatever content coding the client or server chose."""
    coding = next((v.strip().lower() for k, v in headers if k.lower() == "content-encoding"), "")
    if coding == "gzip" or data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if coding == "deflate":
        return zlib.decompress(data)
    return data


def _head_bytes(request: Request) -> int:
    line = f"{request.method} {request.target} HTTP/1.1\r\n"
    return len(line) + sum(len(k) + len(v) + 4 for k, v in request.headers) + 2


class CountingProxy:
    """Listeners (one per upstream) in this process; see the module docstring."""

    def __init__(self, upstreams: dict[str, str], *, minio_buckets: set[str]) -> None:
        self.counter = Counter(minio_buckets)
        self._upstreams = {kind: urlsplit(url) for kind, url in upstreams.items()}
        self._servers: dict[str, socket.socket] = {}
        self._stopping = threading.Event()

    @property
    def ports(self) -> dict[str, int]:
        return {kind: server.getsockname()[1] for kind, server in self._servers.items()}

    def start(self) -> CountingProxy:
        for kind in self._upstreams:
            server = socket.socket()
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", 0))
            server.listen(256)
            self._servers[kind] = server
            threading.Thread(target=self._accept, args=(kind, server), daemon=True, name=f"accept-{kind}").start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        for server in self._servers.values():
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            server.close()

    def _accept(self, kind: str, server: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(kind, conn), daemon=True).start()

    def _control(self, conn: socket.socket, request: Request) -> None:
        if request.path.endswith("/reset"):
            self.counter.reset()
        payload = json.dumps(self.counter.snapshot()).encode()
        _send_response(conn, request, 200, [("Content-Type", "application/json")], payload)

    def _serve(self, kind: str, conn: socket.socket) -> None:
        parts = self._upstreams[kind]
        upstream: http.client.HTTPConnection | None = None
        reader = conn.makefile("rb")
        try:
            while not self._stopping.is_set():
                request = _read_head(reader)
                if request is None:
                    return
                if (request.header("Expect") or "").lower() == "100-continue":
                    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = _read_body(reader, request)
                if request.path.startswith(CONTROL):
                    self._control(conn, request)
                    continue
                if upstream is None:
                    upstream = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80,
                                                          timeout=120)
                status, headers, payload = _forward(upstream, request, body)
                self.counter.record(kind, request, body, status, payload, _head_bytes(request),
                                    response_headers=headers)
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


# -- the parent's side ------------------------------------------------------------------------

class ProxyProcess:
    """The proxy as a child process; ``url(kind)`` to point clients at it."""

    def __init__(self, *, json_upstream: str, s3_upstream: str, minio_buckets: set[str]) -> None:
        self._argv = [sys.executable, "-m", "benchmarks.cost_proxy", "--json", json_upstream, "--s3", s3_upstream,
                      *(arg for bucket in sorted(minio_buckets) for arg in ("--minio-bucket", bucket))]
        self._process: Any = None
        self.ports: dict[str, int] = {}

    def url(self, kind: str) -> str:
        return f"http://127.0.0.1:{self.ports[kind]}"

    def __enter__(self) -> ProxyProcess:
        import subprocess
        from pathlib import Path

        root = Path(__file__).resolve().parents[1]
        self._process = subprocess.Popen(self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=root,
                                         start_new_session=True)
        line = self._process.stdout.readline()
        if not line:
            self._process.wait(timeout=10)
            raise RuntimeError(f"the counting proxy did not start (exit {self._process.returncode})")
        self.ports = json.loads(line)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
            try:
                self._process.wait(timeout=10)
            except Exception:
                self._process.kill()
                self._process.wait(timeout=10)
            self._process = None

    def _call(self, action: str) -> dict[str, dict[str, Any]]:
        method = "POST" if action == "reset" else "GET"
        request = urllib.request.Request(f"{self.url('json')}{CONTROL}{action}", method=method, data=b"" if
                                         method == "POST" else None)
        with urllib.request.urlopen(request, timeout=30) as answer:
            result: dict[str, dict[str, Any]] = json.loads(answer.read())
            return result

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return self._call("snapshot")

    def reset(self) -> None:
        self._call("reset")

    @contextlib.contextmanager
    def phase(self, into: dict[str, dict[str, Any]]) -> Iterator[None]:
        """Count only what the block sends: zero first, then ``into`` gets the counts."""
        self.reset()
        yield
        into.update(self.snapshot())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="counting reverse proxy (benchmarks.cost)")
    parser.add_argument("--json", required=True, help="moto's URL (DynamoDB, Secrets Manager, SQS)")
    parser.add_argument("--s3", required=True, help="the S3 server's URL (landing bucket and MinIO)")
    parser.add_argument("--minio-bucket", action="append", default=[])
    args = parser.parse_args(argv)
    proxy = CountingProxy({"json": args.json, "s3": args.s3}, minio_buckets=set(args.minio_bucket)).start()
    sys.stdout.write(json.dumps(proxy.ports) + "\n")
    sys.stdout.flush()
    sys.stdin.read()  # until the parent closes it (or dies)
    proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
