"""publish_archive and MinioTarget against an in-memory S3 fake that checks checksums.

The fake behaves like a strict server: it verifies ``ChecksumSHA256`` on PutObject and
UploadPart (BadDigest otherwise), keeps multipart uploads invisible until completed, and
can be told to fail chosen calls (before or after storing). A PutObject of a manifest
sidecar is recorded as ``PutSidecar`` so that its failures can be chosen apart from the
archive's. publish_archive never raises for a failed upload: it returns a Publication whose
outcome is PUBLISHED, NOT_PUBLISHED (proven) or UNKNOWN. Real servers are in tests/integration.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from aggregator.base.deadline import Deadline
from aggregator.base.errors import DeliveryError
from aggregator.delivery.publish import (
    METADATA_KEY,
    MIN_PART_BYTES,
    DeliveryAuthError,
    MinioTarget,
    NoSidecar,
    Publication,
    PublishOutcome,
    map_client_error,
    publish_archive,
    published_key,
    sidecar_key,
)
from aggregator.delivery.secret import MinioSecret

MiB = 1024 * 1024
KEY = "archives/a.tar.zst"
MANIFEST = json.dumps({"objects": [{"bucket": "b", "key": "k"}]}).encode()
PUBLISHED, NOT_PUBLISHED, UNKNOWN = PublishOutcome.PUBLISHED, PublishOutcome.NOT_PUBLISHED, PublishOutcome.UNKNOWN


def client_error(code: str, status: int, operation: str = "PutObject") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "server text"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)  # type: ignore[typeddict-item]


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
        # Failures raised *after* the request was stored: the answer is lost.
        self.lost_answers: dict[str, list[BaseException]] = {}
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

    def _maybe_lose_answer(self, name: str) -> None:
        queue = self.lost_answers.get(name)
        if queue:
            raise queue.pop(0)

    @staticmethod
    def _check(body: bytes, checksum: str) -> None:
        if base64.b64encode(hashlib.sha256(body).digest()).decode() != checksum:
            raise client_error("BadDigest", 400)

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, Metadata: dict[str, str] | None = None,
                   ChecksumSHA256: str | None = None, ContentType: str | None = None) -> dict[str, Any]:
        if Key.endswith(".published"):
            name = "PutMarker"
        else:
            name = "PutSidecar" if Key.startswith("_manifests/") else "PutObject"
        assert Metadata is not None and ChecksumSHA256 is not None
        self._check(Body, ChecksumSHA256)
        self._maybe_fail(name)
        assert isinstance(Body, bytes)
        self.objects[(Bucket, Key)] = (Body, {} if self.drop_metadata and name == "PutObject" else dict(Metadata or {}))
        self._maybe_lose_answer(name)
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
        self._maybe_lose_answer("CompleteMultipartUpload")
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
        body, metadata = self.objects[(Bucket, Key)]
        return {"Body": FakeBody(body), "Metadata": dict(metadata)}


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


def fake_deadline(now: list[float], at: float = 100.0) -> Deadline:
    """A deadline at ``at`` with a clock that reads ``now[0]`` (write margin 1 s)."""
    return Deadline(at=at, grace=30.0, clock=lambda: now[0])


def publish(client: FakeS3, size: int, *, key: str = KEY, part_bytes: int = 5 * MiB,
            **kwargs: Any) -> tuple[Publication, bytes, str]:
    source, sha = archive(size)
    source.seek(size // 2)  # the spool's position after writing does not matter
    kwargs.setdefault("sha256_hex", sha)
    kwargs.setdefault("manifest", MANIFEST)
    publication = publish_archive(client, bucket="bkt", key=key, source=source, size=size,  # type: ignore[arg-type]
                                  part_bytes=part_bytes, **kwargs)
    return publication, source.getvalue(), sha


def stored(client: FakeS3, key: str = KEY) -> tuple[bytes, dict[str, str]] | None:
    return client.objects.get(("bkt", key))


def nothing_left(client: FakeS3) -> bool:
    """No archive and no pending upload (a sidecar alone lists nothing that exists)."""
    return stored(client) is None and not client.uploads


# --- single PUT -------------------------------------------------------------------------


def test_small_archive_is_sidecar_then_one_put_with_metadata_and_server_checked_checksum() -> None:
    client = FakeS3()
    publication, data, sha = publish(client, 1000)
    assert publication == Publication(PUBLISHED, parts=1)
    # The sidecar before the final key; the published marker after it.
    assert client.calls == ["PutSidecar", "PutObject", "HeadObject", "PutMarker"]
    assert stored(client) == (data, {METADATA_KEY: sha})
    assert stored(client, sidecar_key(KEY)) == (MANIFEST, {METADATA_KEY: hashlib.sha256(MANIFEST).hexdigest()})


def test_sidecar_key_is_beside_the_archive_under_its_own_prefix() -> None:
    assert sidecar_key(KEY) == "_manifests/archives/a.tar.zst.json"


def test_archive_of_exactly_part_bytes_is_still_one_put() -> None:
    client = FakeS3()
    publication, _, _ = publish(client, 5 * MiB)
    assert publication.outcome is PUBLISHED
    assert "CreateMultipartUpload" not in client.calls


def test_sidecar_failure_is_not_published_and_the_archive_is_never_sent() -> None:
    client = FakeS3()
    client.failures["PutSidecar"] = [client_error("InternalError", 500)]
    publication, _, _ = publish(client, 1000)
    assert publication.outcome is NOT_PUBLISHED
    assert "InternalError" in publication.reason
    assert client.calls == ["PutSidecar"]
    assert nothing_left(client)


def test_wrong_sha256_is_refused_by_the_server_and_nothing_is_stored() -> None:
    client = FakeS3()
    publication, _, _ = publish(client, 1000, sha256_hex="0" * 64)
    assert publication.outcome is NOT_PUBLISHED
    assert "BadDigest" in publication.reason
    assert stored(client) is None
    assert "HeadObject" not in client.calls  # a 4xx of MinIO itself is a definite answer


@pytest.mark.parametrize("error", [
    client_error("AccessDenied", 403),
    client_error("NoSuchBucket", 404),
    client_error("EntityTooLarge", 400),
    EndpointConnectionError(endpoint_url="http://minio"),  # the connection never opened
])
def test_definite_refusal_of_the_put_is_not_published(error: Exception) -> None:
    client = FakeS3()
    client.failures["PutObject"] = [error]
    publication, _, _ = publish(client, 1000)
    assert publication.outcome is NOT_PUBLISHED
    assert publication.auth_refused == (error_code_of(error) == "AccessDenied")
    assert "HeadObject" not in client.calls
    assert nothing_left(client)


def error_code_of(error: Exception) -> str | None:
    return error.response["Error"]["Code"] if isinstance(error, ClientError) else None


# Answers that may come after the store took the whole request.
AMBIGUOUS = [
    pytest.param(client_error("InternalError", 500), id="500"),
    pytest.param(client_error("SlowDown", 503), id="503"),
    pytest.param(client_error("504", 504), id="gateway-504"),
    pytest.param(client_error("GatewayTimeout", 504), id="gateway-504-with-code"),
    pytest.param(client_error("RequestTimeout", 408), id="proxy-408"),
    pytest.param(client_error("400", 400), id="bodiless-400"),
    pytest.param(ReadTimeoutError(endpoint_url="http://minio"), id="read-timeout"),
    pytest.param(ConnectionResetError(), id="connection-reset"),
]


@pytest.mark.parametrize("error", AMBIGUOUS)
def test_ambiguous_put_failure_without_object_is_unknown(error: Exception) -> None:
    client = FakeS3()
    client.failures["PutObject"] = [error]
    publication, _, _ = publish(client, 1000)
    assert publication.outcome is UNKNOWN
    assert client.calls == ["PutSidecar", "PutObject", "HeadObject"]  # a 404 then proves nothing
    assert stored(client) is None


@pytest.mark.parametrize("error", AMBIGUOUS)
def test_put_answer_lost_but_stored_with_our_checksum_counts_as_published(error: Exception) -> None:
    client = FakeS3()
    client.lost_answers["PutObject"] = [error]
    publication, data, sha = publish(client, 1000)
    assert publication.outcome is PUBLISHED
    assert stored(client) == (data, {METADATA_KEY: sha})
    assert client.calls == ["PutSidecar", "PutObject", "HeadObject", "PutMarker"]


def test_put_answer_lost_and_head_unanswered_is_unknown() -> None:
    client = FakeS3()
    client.lost_answers["PutObject"] = [ReadTimeoutError(endpoint_url="http://minio")]
    client.failures["HeadObject"] = [client_error("InternalError", 500, "HeadObject")]
    publication, _, _ = publish(client, 1000)
    assert publication.outcome is UNKNOWN
    assert stored(client) is not None  # it did land: only the lease end and recovery may tell


def test_a_stored_object_with_another_checksum_is_not_ours() -> None:
    client = FakeS3()
    client.objects[("bkt", KEY)] = (b"x" * 1000, {METADATA_KEY: "1" * 64})
    client.failures["PutObject"] = [ReadTimeoutError(endpoint_url="http://minio")]
    publication, _, _ = publish(client, 1000)
    assert publication.outcome is UNKNOWN


# --- multipart ----------------------------------------------------------------------------


def test_large_archive_is_multipart_created_with_metadata() -> None:
    client = FakeS3()
    publication, data, sha = publish(client, 12 * MiB)
    assert publication == Publication(PUBLISHED, parts=3)
    assert client.calls == ["PutSidecar", "CreateMultipartUpload", "UploadPart", "UploadPart", "UploadPart",
                            "CompleteMultipartUpload", "HeadObject", "PutMarker"]
    assert stored(client) == (data, {METADATA_KEY: sha})
    assert client.max_part_in_flight == 5 * MiB
    assert not client.uploads


def test_part_size_grows_to_stay_within_ten_thousand_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    import aggregator.delivery.publish as delivery

    monkeypatch.setattr(delivery, "MAX_PARTS", 2)
    client = FakeS3()
    publication, _, _ = publish(client, 12 * MiB)
    assert publication.outcome is PUBLISHED
    assert client.calls.count("UploadPart") == 2
    assert client.max_part_in_flight == 6 * MiB


@pytest.mark.parametrize("failing", ["CreateMultipartUpload", "UploadPart"])
@pytest.mark.parametrize("error", [client_error("InternalError", 500), ReadTimeoutError(endpoint_url="http://m")])
def test_failure_before_complete_is_not_published_and_leaves_nothing(failing: str, error: Exception) -> None:
    client = FakeS3()
    client.failures[failing] = [error]
    publication, _, _ = publish(client, 12 * MiB)
    assert publication.outcome is NOT_PUBLISHED  # no part can make the key appear
    if failing == "UploadPart":
        assert client.calls[-1] == "AbortMultipartUpload"
    assert "CompleteMultipartUpload" not in client.calls
    assert nothing_left(client)


def test_complete_refused_by_minio_is_not_published_and_aborts() -> None:
    client = FakeS3()
    client.failures["CompleteMultipartUpload"] = [client_error("InvalidPart", 400, "CompleteMultipartUpload")]
    publication, _, _ = publish(client, 12 * MiB)
    assert publication.outcome is NOT_PUBLISHED
    assert client.calls[-1] == "AbortMultipartUpload"
    assert nothing_left(client)


@pytest.mark.parametrize("error", AMBIGUOUS)
def test_ambiguous_complete_failure_without_object_is_unknown_and_not_aborted(error: Exception) -> None:
    client = FakeS3()
    client.failures["CompleteMultipartUpload"] = [error]
    publication, _, _ = publish(client, 12 * MiB)
    assert publication.outcome is UNKNOWN
    # The store may still complete it: aborting would not prove anything either.
    assert "AbortMultipartUpload" not in client.calls
    assert client.calls[-1] == "HeadObject"
    assert stored(client) is None


@pytest.mark.parametrize("error", AMBIGUOUS)
def test_complete_answer_lost_but_stored_counts_as_published(error: Exception) -> None:
    client = FakeS3()
    client.lost_answers["CompleteMultipartUpload"] = [error]
    publication, data, sha = publish(client, 12 * MiB)
    assert publication.outcome is PUBLISHED
    assert stored(client) == (data, {METADATA_KEY: sha})
    assert "AbortMultipartUpload" not in client.calls


def test_wrong_sha256_on_multipart_is_caught_before_completion() -> None:
    client = FakeS3()
    publication, _, _ = publish(client, 12 * MiB, sha256_hex="f" * 64)
    assert publication.outcome is NOT_PUBLISHED
    assert "declared SHA-256" in publication.reason
    assert "CompleteMultipartUpload" not in client.calls
    assert client.calls[-1] == "AbortMultipartUpload"
    assert nothing_left(client)


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


@pytest.mark.parametrize("size", [1000, 12 * MiB])
def test_spool_read_error_is_not_published_and_aborts(size: int) -> None:
    client = FakeS3()
    data, sha = archive(size)
    publication = publish_archive(client, bucket="bkt", key="k",  # type: ignore[arg-type]
                                  source=BrokenSpool(data.getvalue(), size // 2), size=size, sha256_hex=sha,
                                  manifest=MANIFEST, part_bytes=5 * MiB)
    assert publication.outcome is NOT_PUBLISHED
    assert "spool" in publication.reason
    assert client.calls.count("UploadPart") == (1 if size > 5 * MiB else 0)
    assert "PutObject" not in client.calls
    assert not client.uploads and ("bkt", "k") not in client.objects


@pytest.mark.parametrize("declared", [12 * MiB + 1, 12 * MiB - 1, 999, 1001])
def test_spool_size_must_match_declared_size(declared: int) -> None:
    client = FakeS3()
    actual = 12 * MiB if declared > 2000 else 1000
    source, sha = archive(actual)
    publication = publish_archive(client, bucket="bkt", key="k", source=source, size=declared,  # type: ignore[arg-type]
                                  sha256_hex=sha, manifest=MANIFEST, part_bytes=5 * MiB)
    assert publication.outcome is NOT_PUBLISHED
    assert "spool" in publication.reason
    assert not client.uploads and ("bkt", "k") not in client.objects


def test_abort_failure_does_not_hide_the_original_error(caplog: pytest.LogCaptureFixture) -> None:
    client = FakeS3()
    client.failures["UploadPart"] = [client_error("InternalError", 500, "UploadPart")]
    client.failures["AbortMultipartUpload"] = [EndpointConnectionError(endpoint_url="http://minio")]
    publication, _, _ = publish(client, 12 * MiB)
    assert publication.outcome is NOT_PUBLISHED
    assert "UploadPart 1 failed: InternalError" in publication.reason
    assert "could not abort" in caplog.text


def test_interrupt_mid_upload_still_aborts() -> None:
    client = FakeS3()
    client.failures["UploadPart"] = [KeyboardInterrupt()]
    with pytest.raises(KeyboardInterrupt):
        publish(client, 12 * MiB)
    assert not client.uploads


# --- verification -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1000, 12 * MiB])
def test_server_dropping_metadata_removes_the_object_and_is_not_published(size: int) -> None:
    client = FakeS3()
    client.drop_metadata = True
    publication, _, _ = publish(client, size)
    assert publication.outcome is NOT_PUBLISHED
    assert "sha256_checksum missing" in publication.reason
    assert client.calls[-1] == "DeleteObject"
    assert stored(client) is None


def test_server_dropping_metadata_and_delete_failing_is_unknown() -> None:
    client = FakeS3()
    client.drop_metadata = True
    client.failures["DeleteObject"] = [client_error("InternalError", 500, "DeleteObject")]
    publication, _, _ = publish(client, 1000)
    assert publication.outcome is UNKNOWN  # the key exists and holds the objects' bytes


def test_unanswered_verification_trusts_the_success() -> None:
    client = FakeS3()
    client.failures["HeadObject"] = [client_error("InternalError", 500, "HeadObject")]
    publication, _, _ = publish(client, 1000)
    assert publication.outcome is PUBLISHED


# --- deadline --------------------------------------------------------------------------------


def test_too_little_time_refuses_to_start() -> None:
    client = FakeS3()
    publication, _, _ = publish(client, 1000, deadline=fake_deadline([99.7]))  # cutoff is 99.0
    assert publication.outcome is NOT_PUBLISHED
    assert client.calls == []


def test_no_part_starts_past_the_write_cutoff() -> None:
    client = FakeS3()
    now = [0.0]
    client.failures["UploadPart"] = [lambda: now.__setitem__(0, 101.0)]  # the first part "takes" 101 s
    publication, _, _ = publish(client, 12 * MiB, deadline=fake_deadline(now))
    assert publication.outcome is NOT_PUBLISHED
    assert client.calls.count("UploadPart") == 1
    assert client.calls[-1] == "AbortMultipartUpload"
    assert nothing_left(client)


def test_no_completion_past_the_write_cutoff_and_the_upload_is_aborted() -> None:
    client = FakeS3()
    now = [0.0]
    client.failures["UploadPart"] = [lambda: None, lambda: None, lambda: now.__setitem__(0, 99.5)]
    publication, _, _ = publish(client, 12 * MiB, deadline=fake_deadline(now))
    assert publication.outcome is NOT_PUBLISHED
    assert "CompleteMultipartUpload" in publication.reason
    assert client.calls.count("UploadPart") == 3
    assert "CompleteMultipartUpload" not in client.calls
    assert client.calls[-1] == "AbortMultipartUpload"
    assert nothing_left(client)


def test_no_put_past_the_write_cutoff_after_the_sidecar() -> None:
    client = FakeS3()
    now = [0.0]
    client.failures["PutSidecar"] = [lambda: now.__setitem__(0, 99.5)]
    publication, _, _ = publish(client, 1000, deadline=fake_deadline(now))
    assert publication.outcome is NOT_PUBLISHED
    assert client.calls == ["PutSidecar"]
    assert stored(client) is None


def test_enough_time_publishes() -> None:
    client = FakeS3()
    publication, _, _ = publish(client, 12 * MiB, deadline=fake_deadline([0.0], at=1000.0))
    assert publication.outcome is PUBLISHED
    assert stored(client) is not None


def test_a_failed_marker_leaves_the_archive_published() -> None:
    client = FakeS3()
    client.failures["PutMarker"] = [client_error("InternalError", 500)]
    publication, data, sha = publish(client, 1000)
    assert publication.outcome is PUBLISHED
    assert stored(client) == (data, {METADATA_KEY: sha})
    assert stored(client, published_key(KEY)) is None


def test_no_marker_past_the_write_cutoff() -> None:
    client = FakeS3()
    now = [0.0]
    client.failures["HeadObject"] = [lambda: now.__setitem__(0, 99.5)]  # the check ends past the cutoff
    publication, _, _ = publish(client, 1000, deadline=fake_deadline(now))
    assert publication.outcome is PUBLISHED
    assert "PutMarker" not in client.calls


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


def test_programming_error_in_the_put_is_never_not_published() -> None:
    # Not an SDK error, so not mapped: raised after the request may have left, it is unknown.
    client = FakeS3()
    client.failures["PutObject"] = [TypeError("bug")]
    publication, _, _ = publish(client, 1000)
    assert publication.outcome is UNKNOWN
    assert "TypeError" in publication.reason


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
            for name in ("PutSidecar", "PutObject", "CreateMultipartUpload", "HeadObject", "GetObject"):
                client.failures[name] = [client_error("InvalidAccessKeyId", 403, name)] * 5
        self.built.append(secret)
        self.clients.append(client)
        return client


def target_publish(target: MinioTarget, size: int = 1000, manifest: bytes = MANIFEST) -> Publication:
    source, sha = archive(size)
    return target.publish(key=KEY, source=source, size=size, sha256_hex=sha, manifest=manifest,
                          part_bytes=5 * MiB)


def test_target_refreshes_once_on_auth_error_and_retries_with_the_rotated_secret() -> None:
    provider, factory = FakeProvider(make_secret(), make_secret("new-key")), Factory()
    target = MinioTarget(provider, factory)
    assert target_publish(target).outcome is PUBLISHED
    assert provider.calls == [False, True]
    assert [s.access_key for s in factory.built] == ["old-key", "new-key"]
    assert stored(factory.clients[1]) is not None
    assert stored(factory.clients[1], sidecar_key(KEY)) is not None


def test_target_retries_multipart_from_the_start_after_rotation() -> None:
    provider, factory = FakeProvider(make_secret(), make_secret("new-key")), Factory()
    assert target_publish(MinioTarget(provider, factory), size=12 * MiB).outcome is PUBLISHED
    assert stored(factory.clients[1]) is not None


def test_target_does_not_retry_when_the_secret_did_not_change() -> None:
    provider, factory = FakeProvider(make_secret()), Factory()
    publication = target_publish(MinioTarget(provider, factory))
    assert publication.outcome is NOT_PUBLISHED and publication.auth_refused
    assert provider.calls == [False, True]
    assert len(factory.built) == 1
    assert factory.clients[0].calls.count("PutSidecar") == 1


def test_target_retries_only_once() -> None:
    provider = FakeProvider(make_secret(), make_secret("other-old-key"), make_secret("new-key"))
    factory = Factory()

    def refuse_all(secret: MinioSecret) -> Any:
        client = factory(secret)
        client.failures["PutObject"] = [client_error("SignatureDoesNotMatch", 403)] * 5
        return client

    publication = target_publish(MinioTarget(provider, refuse_all))
    assert publication.outcome is NOT_PUBLISHED and publication.auth_refused
    assert provider.calls == [False, True]
    assert len(factory.built) == 2


@pytest.mark.parametrize(("failure", "outcome"), [
    (client_error("BadDigest", 400), NOT_PUBLISHED),  # refused, but not for the credentials
    (client_error("InternalError", 500), UNKNOWN),
    (ReadTimeoutError(endpoint_url="http://minio"), UNKNOWN),
])
def test_target_does_not_retry_other_outcomes(failure: Exception, outcome: PublishOutcome) -> None:
    provider, factory = FakeProvider(make_secret("key-1"), make_secret("new-key")), Factory()
    target = MinioTarget(provider, factory)
    target.bucket  # noqa: B018 - builds the client
    factory.clients[0].failures["PutObject"] = [failure]
    publication = target_publish(target)
    assert publication.outcome is outcome
    assert not publication.auth_refused
    assert provider.calls == [False, False]  # never refreshed
    assert len(factory.built) == 1


def test_target_reuses_the_client_while_the_secret_is_unchanged() -> None:
    provider, factory = FakeProvider(make_secret("key-1")), Factory()
    target = MinioTarget(provider, factory)
    target_publish(target)
    assert target.exists(KEY)
    assert target.bucket == "bkt"
    assert len(factory.built) == 1
    provider.secrets = [make_secret("key-2", bucket="rotated")]  # a rotation seen by the cache
    assert target.bucket == "rotated"
    assert not target.exists(KEY)
    assert len(factory.built) == 2


# --- MinioTarget.listing -------------------------------------------------------------------


def test_listing_is_none_when_the_archive_is_absent() -> None:
    provider, factory = FakeProvider(make_secret("key-1")), Factory()
    assert MinioTarget(provider, factory).listing(KEY) is None


def test_listing_is_none_when_only_the_sidecar_exists() -> None:
    provider, factory = FakeProvider(make_secret("key-1")), Factory()
    target = MinioTarget(provider, factory)
    target.bucket  # noqa: B018 - builds the client
    factory.clients[0].failures["PutObject"] = [client_error("BadDigest", 400)]
    assert target_publish(target).outcome is NOT_PUBLISHED
    assert stored(factory.clients[0], sidecar_key(KEY)) is not None
    assert target.listing(KEY) is None


@pytest.mark.parametrize("size", [1000, 12 * MiB])
def test_listing_reads_the_sidecar_in_a_head_and_one_small_get(size: int) -> None:
    provider, factory = FakeProvider(make_secret("key-1")), Factory()
    target = MinioTarget(provider, factory)
    target_publish(target, size=size)
    client = factory.clients[0]
    client.calls.clear()
    assert target.listing(KEY) == json.loads(MANIFEST)
    # Whatever the archive's size; then the HEAD of its published marker (there: nothing written).
    assert client.calls == ["HeadObject", "GetObject", "HeadObject"]


def test_listing_of_an_archive_without_sidecar_is_no_sidecar() -> None:
    provider, factory = FakeProvider(make_secret("key-1")), Factory()
    target = MinioTarget(provider, factory)
    target_publish(target)
    del factory.clients[0].objects[("bkt", sidecar_key(KEY))]
    with pytest.raises(NoSidecar):
        target.listing(KEY)


@pytest.mark.parametrize("metadata", [{METADATA_KEY: "0" * 64}, {}])
def test_listing_of_a_sidecar_not_matching_its_checksum_is_a_delivery_error(metadata: dict[str, str]) -> None:
    provider, factory = FakeProvider(make_secret("key-1")), Factory()
    target = MinioTarget(provider, factory)
    target_publish(target)
    factory.clients[0].objects[("bkt", sidecar_key(KEY))] = (MANIFEST, metadata)
    with pytest.raises(DeliveryError, match="does not match"):
        target.listing(KEY)


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]"])
def test_listing_of_a_sidecar_that_is_not_a_json_object_is_a_delivery_error(body: bytes) -> None:
    provider, factory = FakeProvider(make_secret("key-1")), Factory()
    target = MinioTarget(provider, factory)
    target_publish(target, manifest=body)
    with pytest.raises(DeliveryError, match="JSON"):
        target.listing(KEY)


@pytest.mark.parametrize("failing", ["HeadObject", "GetObject"])
def test_listing_that_cannot_tell_raises(failing: str) -> None:
    provider, factory = FakeProvider(make_secret("key-1")), Factory()
    target = MinioTarget(provider, factory)
    target_publish(target)
    factory.clients[0].failures[failing] = [client_error("InternalError", 500, failing)]
    with pytest.raises(DeliveryError, match="InternalError"):
        target.listing(KEY)


def test_listing_refreshes_on_auth_error() -> None:
    provider, factory = FakeProvider(make_secret(), make_secret("new-key")), Factory()
    target = MinioTarget(provider, factory)
    assert target.listing(KEY) is None
    assert provider.calls == [False, True, False]  # the archive (refreshed once), then its marker


def test_an_archive_taken_away_after_its_publish_still_lists_its_objects() -> None:
    target = MinioTarget(FakeProvider(make_secret("key-1")), Factory())
    assert target_publish(target).outcome is PUBLISHED
    client = target._client
    assert isinstance(client, FakeS3)
    del client.objects[("bkt", KEY)]  # the consumer took it
    assert target.listing(KEY) == json.loads(MANIFEST)
    marker = client.objects.pop(("bkt", published_key(KEY)))
    assert target.listing(KEY) is None  # a sidecar alone: written first, it proves nothing
    client.objects[("bkt", published_key(KEY))] = marker
    del client.objects[("bkt", sidecar_key(KEY))]
    with pytest.raises(DeliveryError, match="sidecar is gone"):  # published: never guess "not archived"
        target.listing(KEY)


def test_an_archive_found_in_place_without_its_marker_gets_one() -> None:
    target = MinioTarget(FakeProvider(make_secret("key-1")), Factory())
    assert target_publish(target).outcome is PUBLISHED
    client = target._client
    assert isinstance(client, FakeS3)
    del client.objects[("bkt", published_key(KEY))]  # its publisher died before writing it
    assert target.listing(KEY) == json.loads(MANIFEST)
    body, _ = client.objects[("bkt", published_key(KEY))]
    assert json.loads(body)["archive_key"] == KEY


def test_a_sidecar_of_a_refused_publish_lists_nothing() -> None:
    target = MinioTarget(FakeProvider(make_secret("key-1")), Factory())
    target._current()[1].failures["PutObject"] = [client_error("NoSuchBucket", 404)]  # type: ignore[attr-defined]
    assert target_publish(target).outcome is NOT_PUBLISHED
    assert target.listing(KEY) is None


# --- exists and open_object ----------------------------------------------------------------


def test_exists_and_open_object() -> None:
    provider, factory = FakeProvider(make_secret("key-1")), Factory()
    target = MinioTarget(provider, factory)
    assert not target.exists(KEY)
    assert target.open_object(KEY) is None
    target_publish(target, size=3 * MiB)
    body = target.open_object(KEY)
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
    broken = FakeBody(client.objects[("bkt", KEY)][0], fail_after=MiB)
    client.get_object = lambda **_: {"Body": broken}  # type: ignore[method-assign]
    body = target.open_object(KEY)
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


# --- the before-send guard on a real botocore client ---------------------------------------


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def answering_client(answer: Callable[[str, str], tuple[int, bytes]]) -> Any:
    """A real boto3 S3 client (its retries, its events) whose requests never leave: a
    ``before-send`` handler answers each with ``answer(operation, url)``."""
    import boto3
    from botocore.awsrequest import AWSResponse, HTTPHeaders
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1",
                          aws_access_key_id="k", aws_secret_access_key="s",
                          config=Config(retries={"mode": "standard", "max_attempts": 3}))

    def respond(request: Any, event_name: str, **_: Any) -> Any:
        status, body = answer(event_name.rsplit(".", 1)[-1], request.url)
        return AWSResponse(request.url, status, HTTPHeaders(), _Raw(body))

    client.meta.events.register_last("before-send.s3", respond)
    return client


def test_an_sdk_retry_past_the_write_cutoff_is_refused_and_the_outcome_is_unknown() -> None:
    now = [0.0]
    sent: list[str] = []

    def answer(operation: str, url: str) -> tuple[int, bytes]:
        sent.append(operation)
        if operation == "PutObject" and "_manifests" not in url:
            now[0] = 99.5  # the first attempt is unanswered and takes us past the cutoff
            return 500, b"<Error><Code>InternalError</Code></Error>"
        if operation == "HeadObject":
            return 404, b""
        return 200, b""

    publication, _, _ = publish(answering_client(answer), 1000, deadline=fake_deadline(now))
    assert publication.outcome is UNKNOWN  # the first attempt may have been stored
    assert sent == ["PutObject", "PutObject", "HeadObject"]  # sidecar, one archive attempt, the check


def test_an_sdk_retry_before_the_cutoff_is_sent() -> None:
    attempts: list[str] = []

    def answer(operation: str, url: str) -> tuple[int, bytes]:
        if operation == "PutObject" and "_manifests" not in url:
            attempts.append(url)
            if len(attempts) == 1:
                return 500, b"<Error><Code>InternalError</Code></Error>"
        if operation == "HeadObject":
            return 404, b""
        return 200, b""

    publication, _, _ = publish(answering_client(answer), 1000, deadline=fake_deadline([0.0]))
    assert len(attempts) == 2
    # The second attempt was answered; the verifying HEAD finds no object here: logged, and trusted.
    assert publication.outcome is PUBLISHED
