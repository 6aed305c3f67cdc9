"""publish_archive and MinioTarget against an in-memory S3 fake that checks checksums.

The fake behaves like a strict server: it verifies ``ChecksumSHA256`` on PutObject and
UploadPart (BadDigest otherwise), keeps multipart uploads invisible until completed, and
can be told to fail chosen calls. Real servers are in tests/integration.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from aggregator.base.errors import DeliveryError, OutOfTime, RetryableError
from aggregator.delivery.publish import (
    METADATA_KEY,
    MIN_PART_BYTES,
    DeliveryAuthError,
    MinioTarget,
    map_client_error,
    publish_archive,
)
from aggregator.delivery.secret import MinioSecret

MiB = 1024 * 1024


def client_error(code: str, status: int, operation: str = "PutObject") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "server text"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


@dataclass
class Upload:
    key: str
    metadata: dict[str, str]
    parts: dict[int, bytes] = field(default_factory=dict)


class FakeS3:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], tuple[bytes, dict[str, str]]] = {}
        self.uploads: dict[str, Upload] = {}
        self.calls: list[str] = []
        self.failures: dict[str, list[BaseException | Callable[[], None]]] = {}
        self.drop_metadata = False
        self.max_part_in_flight = 0

    def _maybe_fail(self, name: str) -> None:
        self.calls.append(name)
        queue = self.failures.get(name)
        if queue:
            failure = queue.pop(0)
            if isinstance(failure, BaseException):
                raise failure
            failure()

    @staticmethod
    def _check(body: bytes, checksum: str) -> None:
        if base64.b64encode(hashlib.sha256(body).digest()).decode() != checksum:
            raise client_error("BadDigest", 400)

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, Metadata: dict[str, str],
                   ChecksumSHA256: str) -> dict[str, Any]:
        self._maybe_fail("PutObject")
        assert isinstance(Body, bytes)
        self._check(Body, ChecksumSHA256)
        self.objects[(Bucket, Key)] = (Body, {} if self.drop_metadata else dict(Metadata))
        return {"ETag": '"x"'}

    def create_multipart_upload(self, *, Bucket: str, Key: str, Metadata: dict[str, str],
                                ChecksumAlgorithm: str) -> dict[str, Any]:
        self._maybe_fail("CreateMultipartUpload")
        assert ChecksumAlgorithm == "SHA256"
        upload_id = f"upload-{len(self.uploads) + 1}"
        self.uploads[upload_id] = Upload(Key, dict(Metadata))
        return {"UploadId": upload_id}

    def upload_part(self, *, Bucket: str, Key: str, UploadId: str, PartNumber: int, Body: bytes,
                    ChecksumSHA256: str) -> dict[str, Any]:
        self._maybe_fail("UploadPart")
        self.max_part_in_flight = max(self.max_part_in_flight, len(Body))
        self._check(Body, ChecksumSHA256)
        self.uploads[UploadId].parts[PartNumber] = Body
        return {"ETag": f'"etag-{PartNumber}"', "ChecksumSHA256": ChecksumSHA256}

    def complete_multipart_upload(self, *, Bucket: str, Key: str, UploadId: str,
                                  MultipartUpload: dict[str, Any]) -> dict[str, Any]:
        self._maybe_fail("CompleteMultipartUpload")
        upload = self.uploads.pop(UploadId)
        listed = MultipartUpload["Parts"]
        assert [p["PartNumber"] for p in listed] == sorted(upload.parts)
        for part in listed:
            assert part["ETag"] == f'"etag-{part["PartNumber"]}"'
            self._check(upload.parts[part["PartNumber"]], part["ChecksumSHA256"])
        body = b"".join(upload.parts[n] for n in sorted(upload.parts))
        self.objects[(Bucket, Key)] = (body, {} if self.drop_metadata else upload.metadata)
        return {}

    def abort_multipart_upload(self, *, Bucket: str, Key: str, UploadId: str) -> dict[str, Any]:
        self._maybe_fail("AbortMultipartUpload")
        self.uploads.pop(UploadId, None)
        return {}

    def head_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        self._maybe_fail("HeadObject")
        if (Bucket, Key) not in self.objects:
            raise client_error("404", 404, "HeadObject")
        body, metadata = self.objects[(Bucket, Key)]
        return {"ContentLength": len(body), "Metadata": metadata}

    def delete_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        self._maybe_fail("DeleteObject")
        self.objects.pop((Bucket, Key), None)
        return {}

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        self._maybe_fail("GetObject")
        if (Bucket, Key) not in self.objects:
            raise client_error("NoSuchKey", 404, "GetObject")
        return {"Body": FakeBody(self.objects[(Bucket, Key)][0])}


class FakeBody:
    def __init__(self, data: bytes, *, fail_after: int | None = None) -> None:
        self._stream = io.BytesIO(data)
        self.fail_after = fail_after
        self.closed = False

    def read(self, amount: int = -1) -> bytes:
        if self.fail_after is not None and self._stream.tell() >= self.fail_after:
            raise ReadTimeoutError(endpoint_url="http://minio")
        return self._stream.read(amount)

    def close(self) -> None:
        self.closed = True


def archive(size: int) -> tuple[io.BytesIO, str]:
    data = (hashlib.sha256(str(size).encode()).digest() * (size // 32 + 1))[:size]
    return io.BytesIO(data), hashlib.sha256(data).hexdigest()


def publish(client: FakeS3, size: int, *, key: str = "archives/a.tar.zst", part_bytes: int = 5 * MiB,
            **kwargs: Any) -> tuple[bytes, str]:
    source, sha = archive(size)
    source.seek(size // 2)  # the spool's position after writing does not matter
    kwargs.setdefault("sha256_hex", sha)
    publish_archive(client, bucket="bkt", key=key, source=source, size=size, part_bytes=part_bytes,  # type: ignore[arg-type]
                    **kwargs)
    return source.getvalue(), sha


def stored(client: FakeS3, key: str = "archives/a.tar.zst") -> tuple[bytes, dict[str, str]] | None:
    return client.objects.get(("bkt", key))


# --- single PUT -------------------------------------------------------------------------


def test_small_archive_is_one_put_with_metadata_and_server_checked_checksum() -> None:
    client = FakeS3()
    data, sha = publish(client, 1000)
    assert client.calls == ["PutObject", "HeadObject"]
    assert stored(client) == (data, {METADATA_KEY: sha})


def test_archive_of_exactly_part_bytes_is_still_one_put() -> None:
    client = FakeS3()
    publish(client, 5 * MiB)
    assert "CreateMultipartUpload" not in client.calls


def test_wrong_sha256_is_refused_by_the_server_and_nothing_is_stored() -> None:
    client = FakeS3()
    with pytest.raises(DeliveryError, match="BadDigest"):
        publish(client, 1000, sha256_hex="0" * 64)
    assert stored(client) is None
    assert "HeadObject" not in client.calls  # a 4xx is a definite answer


def test_put_answer_lost_but_stored_counts_as_published() -> None:
    client = FakeS3()
    real_put = client.put_object

    def store_then_lose_answer(**kwargs: Any) -> dict[str, Any]:
        real_put(**kwargs)
        raise ReadTimeoutError(endpoint_url="http://minio")

    client.put_object = store_then_lose_answer  # type: ignore[method-assign]
    data, sha = publish(client, 1000)
    assert stored(client) == (data, {METADATA_KEY: sha})
    assert client.calls == ["PutObject", "HeadObject", "HeadObject"]  # the check, then the verification


def test_put_transport_failure_without_object_is_a_delivery_error() -> None:
    client = FakeS3()
    client.failures["PutObject"] = [EndpointConnectionError(endpoint_url="http://minio")]
    with pytest.raises(DeliveryError, match="EndpointConnectionError") as caught:
        publish(client, 1000)
    assert isinstance(caught.value, RetryableError)
    assert stored(client) is None


# --- multipart ----------------------------------------------------------------------------


def test_large_archive_is_multipart_created_with_metadata() -> None:
    client = FakeS3()
    data, sha = publish(client, 12 * MiB)
    assert client.calls == ["CreateMultipartUpload", "UploadPart", "UploadPart", "UploadPart",
                            "CompleteMultipartUpload", "HeadObject"]
    assert stored(client) == (data, {METADATA_KEY: sha})
    assert client.max_part_in_flight == 5 * MiB
    assert not client.uploads


def test_part_size_grows_to_stay_within_ten_thousand_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    import aggregator.delivery.publish as delivery

    monkeypatch.setattr(delivery, "MAX_PARTS", 2)
    client = FakeS3()
    publish(client, 12 * MiB)
    assert client.calls.count("UploadPart") == 2
    assert client.max_part_in_flight == 6 * MiB


@pytest.mark.parametrize("failing", ["UploadPart", "CompleteMultipartUpload"])
def test_any_multipart_failure_aborts_and_leaves_nothing(failing: str) -> None:
    client = FakeS3()
    failure = client_error("InternalError", 500, failing) if failing == "UploadPart" else \
        client_error("InvalidPart", 400, failing)
    client.failures[failing] = [failure]
    with pytest.raises(DeliveryError):
        publish(client, 12 * MiB)
    assert "AbortMultipartUpload" in client.calls
    assert not client.uploads
    assert stored(client) is None


def test_wrong_sha256_on_multipart_is_caught_before_completion() -> None:
    client = FakeS3()
    with pytest.raises(DeliveryError, match="declared SHA-256"):
        publish(client, 12 * MiB, sha256_hex="f" * 64)
    assert "CompleteMultipartUpload" not in client.calls
    assert client.calls[-1] == "AbortMultipartUpload"
    assert stored(client) is None and not client.uploads


class BrokenSpool(io.BytesIO):
    def __init__(self, data: bytes, fail_at: int) -> None:
        super().__init__(data)
        self.fail_at = fail_at

    def read(self, size: int | None = -1) -> bytes:
        position = self.tell()
        if position >= self.fail_at:
            raise OSError("disk read error")
        wanted = self.fail_at - position if size is None or size < 0 else min(size, self.fail_at - position)
        return super().read(wanted)  # a short read up to the bad block, then the error


def test_spool_read_error_mid_upload_aborts() -> None:
    client = FakeS3()
    data, sha = archive(12 * MiB)
    with pytest.raises(DeliveryError, match="spool"):
        publish_archive(client, bucket="bkt", key="k", source=BrokenSpool(data.getvalue(), 6 * MiB),  # type: ignore[arg-type]
                        size=12 * MiB, sha256_hex=sha, part_bytes=5 * MiB)
    assert client.calls.count("UploadPart") == 1
    assert not client.uploads and not client.objects


@pytest.mark.parametrize("declared", [12 * MiB + 1, 12 * MiB - 1, 999, 1001])
def test_spool_size_must_match_declared_size(declared: int) -> None:
    client = FakeS3()
    actual = 12 * MiB if declared > 2000 else 1000
    source, sha = archive(actual)
    with pytest.raises(DeliveryError, match="spool"):
        publish_archive(client, bucket="bkt", key="k", source=source, size=declared,  # type: ignore[arg-type]
                        sha256_hex=sha, part_bytes=5 * MiB)
    assert not client.uploads and not client.objects


def test_abort_failure_does_not_hide_the_original_error(caplog: pytest.LogCaptureFixture) -> None:
    client = FakeS3()
    client.failures["UploadPart"] = [client_error("InternalError", 500, "UploadPart")]
    client.failures["AbortMultipartUpload"] = [EndpointConnectionError(endpoint_url="http://minio")]
    with pytest.raises(DeliveryError, match="UploadPart 1 failed: InternalError"):
        publish(client, 12 * MiB)
    assert "could not abort" in caplog.text


def test_interrupt_mid_upload_still_aborts() -> None:
    client = FakeS3()
    client.failures["UploadPart"] = [KeyboardInterrupt()]
    with pytest.raises(KeyboardInterrupt):
        publish(client, 12 * MiB)
    assert not client.uploads


def test_complete_answer_lost_but_stored_counts_as_published() -> None:
    client = FakeS3()
    real_complete = client.complete_multipart_upload

    def complete_then_lose_answer(**kwargs: Any) -> dict[str, Any]:
        real_complete(**kwargs)
        raise ReadTimeoutError(endpoint_url="http://minio")

    client.complete_multipart_upload = complete_then_lose_answer  # type: ignore[method-assign]
    data, sha = publish(client, 12 * MiB)
    assert stored(client) == (data, {METADATA_KEY: sha})
    assert "AbortMultipartUpload" not in client.calls


# --- verification -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1000, 12 * MiB])
def test_server_dropping_metadata_fails_and_removes_the_object(size: int) -> None:
    client = FakeS3()
    client.drop_metadata = True
    with pytest.raises(DeliveryError, match="sha256_checksum missing"):
        publish(client, size)
    assert stored(client) is None


# --- deadline --------------------------------------------------------------------------------


def test_too_little_time_refuses_to_start() -> None:
    client = FakeS3()
    with pytest.raises(OutOfTime):
        publish(client, 1000, deadline=100.0, clock=lambda: 99.7)
    assert client.calls == []


def test_no_part_starts_past_the_deadline() -> None:
    client = FakeS3()
    now = [0.0]
    client.failures["UploadPart"] = [lambda: now.__setitem__(0, 101.0)]  # the first part "takes" 101 s
    with pytest.raises(OutOfTime):
        publish(client, 12 * MiB, deadline=100.0, clock=lambda: now[0])
    assert client.calls.count("UploadPart") == 1
    assert client.calls[-1] == "AbortMultipartUpload"
    assert not client.uploads and stored(client) is None


def test_no_completion_too_close_to_the_deadline() -> None:
    client = FakeS3()
    now = [0.0]
    client.failures["UploadPart"] = [lambda: None, lambda: None, lambda: now.__setitem__(0, 99.7)]
    with pytest.raises(OutOfTime, match="complete"):
        publish(client, 12 * MiB, deadline=100.0, clock=lambda: now[0])
    assert client.calls.count("UploadPart") == 3
    assert "CompleteMultipartUpload" not in client.calls
    assert not client.uploads and stored(client) is None


def test_enough_time_publishes() -> None:
    client = FakeS3()
    publish(client, 12 * MiB, deadline=1000.0, clock=lambda: 0.0)
    assert stored(client) is not None


# --- arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "message"), [
    ({"part_bytes": MIN_PART_BYTES - 1}, "part_bytes"),
    ({"sha256_hex": "A" * 64}, "sha256_hex"),
    ({"sha256_hex": "a" * 63}, "sha256_hex"),
])
def test_invalid_arguments(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        publish(FakeS3(), 1000, **changes)


# --- the error mapping --------------------------------------------------------------------


@pytest.mark.parametrize("code", ["InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken"])
def test_credential_errors_map_to_auth_error(code: str) -> None:
    mapped = map_client_error(client_error(code, 403), action="PutObject")
    assert isinstance(mapped, DeliveryAuthError)
    assert code in str(mapped)
    assert "server text" not in str(mapped)


def test_bodiless_403_of_a_head_is_an_auth_error() -> None:
    assert isinstance(map_client_error(client_error("403", 403, "HeadObject"), action="HeadObject"),
                      DeliveryAuthError)


@pytest.mark.parametrize(("error", "expected"), [
    (client_error("BadDigest", 400), "PutObject failed: BadDigest (HTTP 400)"),
    (client_error("SlowDown", 503), "PutObject failed: SlowDown (HTTP 503)"),
    (EndpointConnectionError(endpoint_url="http://minio"), "PutObject failed: EndpointConnectionError"),
    (ConnectionResetError(), "PutObject failed: ConnectionResetError"),
])
def test_other_errors_map_to_delivery_error(error: Exception, expected: str) -> None:
    mapped = map_client_error(error, action="PutObject")
    assert type(mapped) is DeliveryError
    assert str(mapped) == expected


def test_programming_errors_are_not_disguised() -> None:
    client = FakeS3()
    client.failures["PutObject"] = [TypeError("bug")]
    with pytest.raises(TypeError):
        publish(client, 1000)


# --- MinioTarget ---------------------------------------------------------------------------


def make_secret(access_key: str = "old-key", bucket: str = "bkt") -> MinioSecret:
    return MinioSecret(endpoint_url="http://minio:9000", access_key=access_key, secret_key="s", bucket=bucket)


class FakeProvider:
    def __init__(self, *secrets: MinioSecret) -> None:
        self.secrets = list(secrets)
        self.calls: list[bool] = []

    def get(self, *, refresh: bool = False) -> MinioSecret:
        self.calls.append(refresh)
        if refresh and len(self.secrets) > 1:
            self.secrets.pop(0)
        return self.secrets[0]


class Factory:
    """Builds one FakeS3 per secret; the old key is refused on every call."""

    def __init__(self) -> None:
        self.built: list[MinioSecret] = []
        self.clients: list[FakeS3] = []

    def __call__(self, secret: MinioSecret) -> Any:
        client = FakeS3()
        if secret.access_key == "old-key":
            for name in ("PutObject", "CreateMultipartUpload", "HeadObject", "GetObject"):
                client.failures[name] = [client_error("InvalidAccessKeyId", 403, name)] * 5
        self.built.append(secret)
        self.clients.append(client)
        return client


def target_publish(target: MinioTarget, size: int = 1000) -> None:
    source, sha = archive(size)
    target.publish(key="archives/a.tar.zst", source=source, size=size, sha256_hex=sha, part_bytes=5 * MiB)


def test_target_refreshes_once_on_auth_error_and_retries_with_the_rotated_secret() -> None:
    provider, factory = FakeProvider(make_secret(), make_secret("new-key")), Factory()
    target = MinioTarget(provider, factory)
    target_publish(target)
    assert provider.calls == [False, True]
    assert [s.access_key for s in factory.built] == ["old-key", "new-key"]
    assert stored(factory.clients[1]) is not None


def test_target_retries_multipart_from_the_start_after_rotation() -> None:
    provider, factory = FakeProvider(make_secret(), make_secret("new-key")), Factory()
    target_publish(MinioTarget(provider, factory), size=12 * MiB)
    assert stored(factory.clients[1]) is not None


def test_target_does_not_retry_when_the_secret_did_not_change() -> None:
    provider, factory = FakeProvider(make_secret()), Factory()
    with pytest.raises(DeliveryAuthError):
        target_publish(MinioTarget(provider, factory))
    assert provider.calls == [False, True]
    assert len(factory.built) == 1
    assert factory.clients[0].calls.count("PutObject") == 1


def test_target_retries_only_once() -> None:
    provider = FakeProvider(make_secret(), make_secret("other-old-key"), make_secret("new-key"))
    factory = Factory()

    def refuse_all(secret: MinioSecret) -> Any:
        client = factory(secret)
        client.failures["PutObject"] = [client_error("SignatureDoesNotMatch", 403)] * 5
        return client

    with pytest.raises(DeliveryAuthError):
        target_publish(MinioTarget(provider, refuse_all))
    assert provider.calls == [False, True]
    assert len(factory.built) == 2


def test_target_reuses_the_client_while_the_secret_is_unchanged() -> None:
    provider, factory = FakeProvider(make_secret("key-1")), Factory()
    target = MinioTarget(provider, factory)
    target_publish(target)
    assert target.exists("archives/a.tar.zst")
    assert target.bucket == "bkt"
    assert len(factory.built) == 1
    provider.secrets = [make_secret("key-2", bucket="rotated")]  # a rotation seen by the cache
    assert target.bucket == "rotated"
    assert not target.exists("archives/a.tar.zst")
    assert len(factory.built) == 2


def test_exists_and_open_object() -> None:
    provider, factory = FakeProvider(make_secret("key-1")), Factory()
    target = MinioTarget(provider, factory)
    assert not target.exists("archives/a.tar.zst")
    assert target.open_object("archives/a.tar.zst") is None
    target_publish(target, size=3 * MiB)
    body = target.open_object("archives/a.tar.zst")
    assert body is not None
    with body:
        data = body.read()
    assert data == archive(3 * MiB)[0].getvalue()


def test_exists_and_open_object_refresh_on_auth_error() -> None:
    provider, factory = FakeProvider(make_secret(), make_secret("new-key")), Factory()
    target = MinioTarget(provider, factory)
    assert target.exists("nothing") is False
    assert provider.calls == [False, True]
    assert target.open_object("nothing") is None


def test_open_object_maps_mid_stream_errors_and_closes_the_body() -> None:
    provider, factory = FakeProvider(make_secret("key-1")), Factory()
    target = MinioTarget(provider, factory)
    target_publish(target, size=3 * MiB)
    client = factory.clients[0]
    broken = FakeBody(client.objects[("bkt", "archives/a.tar.zst")][0], fail_after=MiB)
    client.get_object = lambda **_: {"Body": broken}  # type: ignore[method-assign]
    body = target.open_object("archives/a.tar.zst")
    assert body is not None
    with pytest.raises(DeliveryError, match="reading an object failed: ReadTimeoutError"):
        body.read()
    body.close()
    assert broken.closed


def test_other_errors_of_exists_are_delivery_errors() -> None:
    provider, factory = FakeProvider(make_secret("key-1")), Factory()
    target = MinioTarget(provider, factory)
    target.bucket  # noqa: B018 - builds the client
    factory.clients[0].failures["HeadObject"] = [client_error("InternalError", 500, "HeadObject")]
    with pytest.raises(DeliveryError, match="InternalError"):
        target.exists("k")
