"""Network faults between the fetch layer and a real S3 server (SeaweedFS, which checks
signatures): a loopback TCP proxy that breaks or stalls the first responses.

What checks: the bytes fetched equal the bytes an independent boto3 client stored, and
the proxy's log of requests shows the Range resume (or the retry) that healed the fault.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from aggregator.base.events import ObjectRef
from aggregator.base.objects import Fetched, Streamed
from aggregator.fetch import SourceConfig, fetch_objects
from tests.support.servers import SeaweedS3

pytestmark = [pytest.mark.servers, pytest.mark.timeout(180)]

MiB = 1 << 20


class FaultProxy:
    """Forwards 127.0.0.1:port to the server. The first ``faulty`` connections misbehave:
    ``cut`` resets the connection after that many response bytes, ``stall`` forwards the
    request but never a byte of the response."""

    def __init__(self, upstream_port: int, *, faulty: int, cut: int | None = None, stall: bool = False) -> None:
        self.upstream_port = upstream_port
        self.faulty = faulty
        self.cut = cut
        self.stall = stall
        self.requests: list[bytes] = []  # the head of every request, in order
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        # shutdown() wakes the threads blocked in accept() and recv(); close() alone would not.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self._thread.join(5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self.connections += 1
                faulty = self.connections <= self.faulty
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump_requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump_responses, args=(upstream, client, faulty), daemon=True).start()

    def _pump_requests(self, client: socket.socket, upstream: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if data[:4] == b"GET ":
                    with self._lock:
                        self.requests.append(data.split(b"\r\n\r\n", 1)[0])
                upstream.sendall(data)

    def _pump_responses(self, upstream: socket.socket, client: socket.socket, faulty: bool) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                if faulty and self.stall:
                    continue  # swallow: the client sees a silent server
                if faulty and self.cut is not None and sent + len(data) > self.cut:
                    client.sendall(data[: self.cut - sent])
                    # End the connection in the middle of the body. shutdown() acts at once
                    # (close() would wait for the other pump's recv on the same socket).
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    client.shutdown(socket.SHUT_RDWR)
                    upstream.shutdown(socket.SHUT_RDWR)
                    return
                client.sendall(data)
                sent += len(data)


@pytest.fixture(scope="module")
def stored(seaweed: SeaweedS3) -> dict[str, Any]:
    client = boto3.client("s3", endpoint_url=seaweed.endpoint_url, region_name="eu-west-2",
                          aws_access_key_id=seaweed.access_key, aws_secret_access_key=seaweed.secret_key)
    bucket = f"faults-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    big, small = os.urandom(20 * MiB), os.urandom(64 * 1024)
    refs = {}
    for key, body in (("big", big), ("small", small)):
        etag = client.put_object(Bucket=bucket, Key=key, Body=body)["ETag"].strip('"')
        refs[key] = ObjectRef(bucket, key, len(body), etag, None, "01")
    return {"refs": refs, "bodies": {"big": big, "small": small}, "port": int(seaweed.endpoint_url.rsplit(":", 1)[1]),
            "keys": (seaweed.access_key, seaweed.secret_key)}


def _source(proxy: FaultProxy, stored: dict[str, Any], *, read_timeout: float = 10.0) -> SourceConfig:
    access, secret = stored["keys"]
    return SourceConfig(f"http://127.0.0.1:{proxy.port}", "eu-west-2", access, secret, None,
                        read_timeout=read_timeout)


def _read(results: Iterator[Any]) -> dict[str, tuple[str, bytes]]:
    out = {}
    for result in results:
        if isinstance(result, Streamed):
            out[result.ref.key] = ("Streamed", b"".join(result.chunks))
        else:
            assert isinstance(result, Fetched), result
            out[result.ref.key] = ("Fetched", result.body)
    return out


def test_a_stream_reset_mid_body_resumes_with_range(stored: dict[str, Any]) -> None:
    with FaultProxy(stored["port"], faulty=2, cut=3 * MiB) as proxy:
        with fetch_objects([stored["refs"]["big"]], source=_source(proxy, stored), workers=1, processes=1,
                           queue_depth=1) as results:
            got = _read(results)
        assert got == {"big": ("Streamed", stored["bodies"]["big"])}
        ranges = [line for request in proxy.requests for line in request.split(b"\r\n")
                  if line.lower().startswith(b"range:")]
        assert len(proxy.requests) == 3 and len(ranges) == 2  # two resumes after two resets
        assert all(b"if-match" in request.lower() for request in proxy.requests)


def test_a_small_object_reset_mid_body_is_fetched_again(stored: dict[str, Any]) -> None:
    with FaultProxy(stored["port"], faulty=1, cut=20_000) as proxy:
        with fetch_objects([stored["refs"]["small"]], source=_source(proxy, stored), workers=1, processes=1,
                           queue_depth=1) as results:
            got = _read(results)
        assert got == {"small": ("Fetched", stored["bodies"]["small"])}
        assert len(proxy.requests) == 2


@pytest.mark.parametrize("processes", [1, 2])
def test_a_silent_server_times_out_and_the_get_is_retried(stored: dict[str, Any], processes: int) -> None:
    refs = [stored["refs"]["small"], stored["refs"]["big"]]
    with FaultProxy(stored["port"], faulty=2, stall=True) as proxy:
        with fetch_objects(refs, source=_source(proxy, stored, read_timeout=1.0), workers=2, processes=processes,
                           queue_depth=2) as results:
            got = _read(results)
        assert got == {"small": ("Fetched", stored["bodies"]["small"]), "big": ("Streamed", stored["bodies"]["big"])}
        assert proxy.connections >= 4
