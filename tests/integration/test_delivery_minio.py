"""Delivery against a server that checks signatures and checksums: SeaweedFS (the MinIO
stand-in), or a real MinIO when MINIO_TEST_ENDPOINT is set (see ``minio_target``).

What goes in: the code under test (secret from a Secrets Manager server process, client
from ``aggregator.clients``, ``MinioTarget.publish``). What checks: an independent client
(the ``minio`` SDK) reads the object back and hashes it; a plain boto3 client lists
multipart uploads. Faults: a closed port, a server that never answers, wrong then rotated
credentials, a connection reset mid-upload by a loopback proxy, a spool that fails
mid-read, a wrong digest, and an untrusted certificate.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import socket
import struct
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
import urllib3
from botocore.config import Config
from minio import Minio

from aggregator import clients
from aggregator.base.errors import DeliveryError
from aggregator.delivery.publish import METADATA_KEY, DeliveryAuthError, MinioTarget, Publication, PublishOutcome
from aggregator.delivery.secret import MinioSecret, MinioSecretProvider
from tests.conftest import S3Target
from tests.support.servers import MotoServer, SeaweedS3, free_port
from tests.support.tls import TlsFiles, make_ca, make_tls

pytestmark = [pytest.mark.servers, pytest.mark.timeout(120)]

MiB = 1024 * 1024
PART = 5 * MiB
KEY = "archives/2025/03/04/05/test.tar.zst"


# --- fixtures -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One S3 endpoint the code under test can reach, plus what the checkers need."""

    url: str
    access_key: str
    secret_key: str
    ca: TlsFiles | None = None

    def secret(self, bucket: str, **changes: Any) -> dict[str, Any]:
        document = {"endpoint_url": self.url, "access_key": self.access_key, "secret_key": self.secret_key,
                    "bucket": bucket}
        if self.ca:
            document["ca_bundle"] = self.ca.ca_pem
        document.update(changes)
        return document

    def reader(self) -> Minio:
        """The independent client: the minio SDK, not boto3."""
        parts = urlsplit(self.url)
        http_client = None
        if self.ca:
            http_client = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(self.ca.ca_path))
        return Minio(parts.netloc, access_key=self.access_key, secret_key=self.secret_key,
                     secure=parts.scheme == "https", http_client=http_client)

    def lister(self) -> Any:
        """A plain boto3 client for what the minio SDK does not offer publicly."""
        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, aws_session_token=None, region_name="us-east-1",
                            verify=str(self.ca.ca_path) if self.ca else None,
                            config=Config(s3={"addressing_style": "path"}))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SeaweedS3, TlsFiles]]:
    """A separate SeaweedFS serving HTTPS with a certificate from a private CA."""
    tls = make_tls(tmp_path_factory.mktemp("tls"))
    with SeaweedS3(access_key="tls-access-key", secret_key="tls-secret-key-0123456789",
                   tls=(tls.cert_path, tls.key_path)) as server:
        yield server, tls


@pytest.fixture
def http_endpoint(minio_target: S3Target) -> Endpoint:
    return Endpoint(minio_target.endpoint_url, minio_target.access_key, minio_target.secret_key)


@pytest.fixture
def https_endpoint(tls_server: tuple[SeaweedS3, TlsFiles]) -> Endpoint:
    server, tls = tls_server
    return Endpoint(server.endpoint_url, server.access_key, server.secret_key, ca=tls)


@pytest.fixture(params=["http", "https"])
def endpoint(request: pytest.FixtureRequest) -> Endpoint:
    fixture_name = "http_endpoint" if request.param == "http" else "https_endpoint"
    value: Endpoint = request.getfixturevalue(fixture_name)
    return value


def new_bucket(endpoint: Endpoint) -> str:
    bucket = f"deliver-{uuid.uuid4().hex[:16]}"
    endpoint.reader().make_bucket(bucket)
    return bucket


@pytest.fixture
def secrets(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A Secrets Manager server process, reached the production way: the client factory
    with the SDK's endpoint variable, and the provider through Powertools."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto_server.endpoint_url)
    return clients.secretsmanager_client(clients.aws_session())


@dataclass
class Harness:
    secrets: Any
    secret_id: str
    provider: MinioSecretProvider
    target: MinioTarget
    built: list[MinioSecret]

    def rotate(self, document: dict[str, Any]) -> None:
        self.secrets.put_secret_value(SecretId=self.secret_id, SecretString=json.dumps(document))


def harness(secrets: Any, document: dict[str, Any], *, read_timeout: float = 10.0) -> Harness:
    secret_id = f"minio/{uuid.uuid4().hex}"
    secrets.create_secret(Name=secret_id, SecretString=json.dumps(document))
    provider = MinioSecretProvider(secrets, secret_id)
    built: list[MinioSecret] = []

    def factory(secret: MinioSecret) -> Any:
        built.append(secret)
        return clients.minio_client(secret, max_pool=4, connect_timeout=2.0, read_timeout=read_timeout)

    return Harness(secrets, secret_id, provider, MinioTarget(provider, factory), built)


def archive_bytes(size: int) -> tuple[bytes, str]:
    # Incompressible and position-dependent, so a misplaced part cannot go unnoticed.
    seed = uuid.uuid4().bytes
    blocks = (hashlib.sha256(seed + i.to_bytes(8, "big")).digest() for i in range(size // 32 + 1))
    data = b"".join(blocks)[:size]
    return data, hashlib.sha256(data).hexdigest()


def publish(target: MinioTarget, data: bytes, sha: str, *, key: str = KEY, source: Any = None) -> Publication:
    """Publish, raising the outcome's reason unless published (the old tests' shape)."""
    publication = target.publish(key=key, source=source or io.BytesIO(data), size=len(data), sha256_hex=sha,
                                 manifest=b'{"objects": []}', part_bytes=PART)
    if publication.outcome is not PublishOutcome.PUBLISHED:
        error = DeliveryAuthError if publication.auth_refused else DeliveryError
        raise error(f"{publication.outcome.value}: {publication.reason}")
    return publication


def assert_archive(endpoint: Endpoint, bucket: str, key: str, data: bytes, sha: str) -> None:
    reader = endpoint.reader()
    stat = reader.stat_object(bucket, key)
    assert stat.metadata is not None
    assert stat.metadata.get(f"x-amz-meta-{METADATA_KEY}") == sha
    assert stat.size == len(data)
    response = reader.get_object(bucket, key)
    try:
        downloaded = response.read()
    finally:
        response.close()
        response.release_conn()
    assert hashlib.sha256(downloaded).hexdigest() == sha
    assert downloaded == data


def assert_nothing_left(endpoint: Endpoint, bucket: str, key: str = KEY) -> None:
    lister = endpoint.lister()
    listed = lister.list_objects_v2(Bucket=bucket).get("Contents", [])
    assert [o["Key"] for o in listed if o["Key"] == key] == []
    assert lister.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


# --- happy paths, HTTP and HTTPS -------------------------------------------------------------


@pytest.mark.parametrize("size", [1000, 12 * MiB], ids=["single-put", "multipart"])
def test_publish_and_read_back_independently(endpoint: Endpoint, secrets: Any, size: int) -> None:
    bucket = new_bucket(endpoint)
    h = harness(secrets, endpoint.secret(bucket))
    data, sha = archive_bytes(size)
    publish(h.target, data, sha)
    assert_archive(endpoint, bucket, KEY, data, sha)
    assert h.target.exists(KEY)
    assert not h.target.exists(KEY + ".other")
    assert_nothing_left(endpoint, bucket, key="not-this-key")  # and no multipart upload lingers


def test_open_object_streams_the_archive(http_endpoint: Endpoint, secrets: Any) -> None:
    bucket = new_bucket(http_endpoint)
    h = harness(secrets, http_endpoint.secret(bucket))
    data, sha = archive_bytes(3 * MiB + 17)
    publish(h.target, data, sha)
    body = h.target.open_object(KEY)
    assert body is not None
    with body:
        assert hashlib.sha256(body.read()).hexdigest() == sha
    assert h.target.open_object("archives/missing.tar.zst") is None


# --- TLS fails closed -------------------------------------------------------------------------


@pytest.mark.parametrize("trust", ["other-ca", "no-ca"])
def test_untrusted_certificate_fails_closed(https_endpoint: Endpoint, secrets: Any, trust: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    bucket = new_bucket(https_endpoint)
    document = https_endpoint.secret(bucket)
    if trust == "other-ca":
        document["ca_bundle"] = make_ca("some other CA").pem
    else:
        del document["ca_bundle"]
    h = harness(secrets, document)
    data, sha = archive_bytes(1000)
    with pytest.raises(DeliveryError, match="SSLError"):
        publish(h.target, data, sha)
    assert_nothing_left(https_endpoint, bucket)


# --- MinIO down --------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_closed_port_fails_with_delivery_error(secrets: Any) -> None:
    h = harness(secrets, {"endpoint_url": f"http://127.0.0.1:{free_port()}", "access_key": "down-access-key",
                          "secret_key": "down-secret-key-0123", "bucket": "deliver-down"})
    data, sha = archive_bytes(1000)
    with pytest.raises(DeliveryError, match="EndpointConnectionError"):
        publish(h.target, data, sha)


@pytest.mark.timeout(120)
def test_server_stopped_between_publishes_fails_with_delivery_error(secrets: Any) -> None:
    with SeaweedS3(access_key="down-access-key", secret_key="down-secret-key-0123456789") as server:
        endpoint = Endpoint(server.endpoint_url, server.access_key, server.secret_key)
        bucket = new_bucket(endpoint)
        h = harness(secrets, endpoint.secret(bucket))
        data, sha = archive_bytes(12 * MiB)
        publish(h.target, data, sha)  # the client now holds pooled connections
    with pytest.raises(DeliveryError):
        publish(h.target, data, sha, key=KEY + ".after-stop")


@pytest.mark.timeout(60)
def test_server_that_never_answers_times_out(secrets: Any) -> None:
    with SilentServer() as silent:
        h = harness(secrets, {"endpoint_url": f"http://127.0.0.1:{silent.port}", "access_key": "silent-access-key",
                              "secret_key": "silent-secret-key-0123", "bucket": "deliver-silent"}, read_timeout=1.0)
        data, sha = archive_bytes(1000)
        with pytest.raises(DeliveryError, match="Timeout"):
            publish(h.target, data, sha)
    assert silent.accepted >= 1


class SilentServer:
    """Accepts TCP connections and reads forever without answering."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.listener.close()
        for conn in self._conns:
            conn.close()


# --- credentials: wrong, then rotated -------------------------------------------------------------


def test_wrong_credentials_then_rotated_secret_succeeds(http_endpoint: Endpoint, secrets: Any) -> None:
    bucket = new_bucket(http_endpoint)
    h = harness(secrets, http_endpoint.secret(bucket, secret_key="stale-secret-key-000000"))
    assert h.provider.get().secret_key == "stale-secret-key-000000"  # cached: 5 minutes to go
    h.rotate(http_endpoint.secret(bucket))
    data, sha = archive_bytes(12 * MiB)
    publish(h.target, data, sha)  # refused, refreshed at once, retried
    assert [s.secret_key for s in h.built] == ["stale-secret-key-000000", http_endpoint.secret_key]
    assert_archive(http_endpoint, bucket, KEY, data, sha)
    assert_nothing_left(http_endpoint, bucket, key="none")


def test_wrong_access_key_without_rotation_is_an_auth_error(http_endpoint: Endpoint, secrets: Any) -> None:
    bucket = new_bucket(http_endpoint)
    h = harness(secrets, http_endpoint.secret(bucket, access_key="unknown-access-key"))
    data, sha = archive_bytes(1000)
    with pytest.raises(DeliveryAuthError, match="InvalidAccessKeyId"):
        publish(h.target, data, sha)
    assert len(h.built) == 1  # the refreshed secret was the same: no pointless retry
    assert_nothing_left(http_endpoint, bucket)


# --- uploads cut mid-stream ------------------------------------------------------------------------


class CuttingProxy:
    """A loopback TCP proxy that resets any connection after it forwarded ``cut_after``
    bytes towards the server: the server sees a body cut short, the client a reset."""

    def __init__(self, upstream: tuple[str, int], *, cut_after: int) -> None:
        self.upstream = upstream
        self.cut_after = cut_after
        self.cuts = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def __enter__(self) -> CuttingProxy:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.listener.close()
        with self._lock:
            for sock in self._sockets:
                _close(sock)
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            with self._lock:
                self._sockets += [client, server]
            self._spawn(self._pump, client, server, True)
            self._spawn(self._pump, server, client, False)

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        forwarded = 0
        try:
            while data := source.recv(65536):
                if upstream and forwarded + len(data) > self.cut_after:
                    sink.sendall(data[: self.cut_after - forwarded])
                    self.cuts += 1
                    _reset(source)
                    _reset(sink)
                    return
                sink.sendall(data)
                forwarded += len(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            _close(source)
            _close(sink)


def _reset(sock: socket.socket) -> None:
    """Close with RST (linger 0); SHUT_RD first wakes the other pump blocked in recv."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)
    _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


@pytest.mark.parametrize(("size", "cut_after"), [(4 * MiB, MiB), (12 * MiB, 3 * MiB)],
                         ids=["single-put", "multipart"])
def test_connection_reset_mid_upload_leaves_nothing(http_endpoint: Endpoint, secrets: Any, size: int,
                                                    cut_after: int) -> None:
    upstream = urlsplit(http_endpoint.url)
    if upstream.scheme != "http":
        pytest.skip("the proxy forwards plain HTTP only")
    bucket = new_bucket(http_endpoint)
    with CuttingProxy((upstream.hostname or "127.0.0.1", upstream.port or 80), cut_after=cut_after) as proxy:
        h = harness(secrets, http_endpoint.secret(bucket, endpoint_url=f"http://127.0.0.1:{proxy.port}"))
        data, sha = archive_bytes(size)
        with pytest.raises(DeliveryError):
            publish(h.target, data, sha)
        assert proxy.cuts >= 1
    assert_nothing_left(http_endpoint, bucket)


class FailingSpool(io.BytesIO):
    """A spool whose disk fails part-way: short reads up to ``fail_at``, then an error."""

    def __init__(self, data: bytes, fail_at: int) -> None:
        super().__init__(data)
        self.fail_at = fail_at

    def read(self, size: int | None = -1) -> bytes:
        position = self.tell()
        if position >= self.fail_at:
            raise OSError("I/O error")
        wanted = self.fail_at - position if size is None or size < 0 else min(size, self.fail_at - position)
        return super().read(wanted)


def test_spool_failing_mid_upload_aborts(http_endpoint: Endpoint, secrets: Any) -> None:
    bucket = new_bucket(http_endpoint)
    h = harness(secrets, http_endpoint.secret(bucket))
    data, sha = archive_bytes(12 * MiB)
    with pytest.raises(DeliveryError, match="spool"):
        publish(h.target, data, sha, source=FailingSpool(data, 7 * MiB))
    assert_nothing_left(http_endpoint, bucket)


# --- wrong digest -----------------------------------------------------------------------------------


def test_wrong_sha256_is_refused_by_the_server(endpoint: Endpoint, secrets: Any) -> None:
    bucket = new_bucket(endpoint)
    h = harness(secrets, endpoint.secret(bucket))
    data, _ = archive_bytes(1000)
    with pytest.raises(DeliveryError, match="BadDigest"):
        publish(h.target, data, hashlib.sha256(b"something else").hexdigest())
    assert_nothing_left(endpoint, bucket)


def test_wrong_sha256_on_multipart_is_never_completed(http_endpoint: Endpoint, secrets: Any) -> None:
    bucket = new_bucket(http_endpoint)
    h = harness(secrets, http_endpoint.secret(bucket))
    data, _ = archive_bytes(12 * MiB)
    with pytest.raises(DeliveryError, match="declared SHA-256"):
        publish(h.target, data, hashlib.sha256(b"something else").hexdigest())
    assert_nothing_left(http_endpoint, bucket)


# --- credentials never in logs ------------------------------------------------------------------------


def test_credentials_never_appear_in_logs_or_errors(http_endpoint: Endpoint, secrets: Any,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    bucket = new_bucket(http_endpoint)
    wrong_access, wrong_secret = "wrong-access-key-4242", "wrong-secret-key-4242-zz"
    h = harness(secrets, http_endpoint.secret(bucket, access_key=wrong_access, secret_key=wrong_secret))
    data, sha = archive_bytes(6 * MiB)
    errors: list[BaseException] = []
    with caplog.at_level(logging.DEBUG):
        try:
            publish(h.target, data, sha)
        except DeliveryError as e:
            errors.append(e)
        h.rotate(http_endpoint.secret(bucket))
        publish(h.target, data, sha, key=KEY + ".2")  # refused with the cached secret, then retried
        logging.getLogger("aggregator").info("secret in use: %r", h.provider.get())
    assert len(errors) == 1
    assert "Sending http request" in caplog.text  # the SDK's DEBUG wire log was captured
    chained = []
    for error in errors:
        current: BaseException | None = error
        while current is not None:
            chained += [str(current), repr(current)]
            current = current.__cause__ or current.__context__
    everything = caplog.text + "\n".join(chained) + "\n".join(
        str(getattr(r, "args", "")) for r in caplog.records)
    for value in (wrong_access, wrong_secret, http_endpoint.access_key, http_endpoint.secret_key):
        assert value not in everything
    assert_archive(http_endpoint, bucket, KEY + ".2", data, sha)


# --- support ---------------------------------------------------------------------------------------------


def test_tls_fixture_files(tls_server: tuple[SeaweedS3, TlsFiles]) -> None:
    _, tls = tls_server
    assert Path(tls.key_path).stat().st_mode & 0o077 == 0
    assert tls.ca_pem.startswith("-----BEGIN CERTIFICATE-----")

