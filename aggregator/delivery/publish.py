"""Publishing a finished archive to MinIO so that its final key is never half there.

The archive is complete in a seekable spool and its SHA-256 is known before the first
byte leaves, so the upload is atomic by construction:

* up to ``part_bytes``: one PutObject carrying the ``sha256_checksum`` metadata *and*
  ``x-amz-checksum-sha256`` (the same digest, base64). The server hashes what it received
  and refuses the object (BadDigest) unless it matches; an S3 PUT is all or nothing;
* larger: a multipart upload created *with* the metadata, parts read from the spool one
  at a time (one part in memory), each carrying its own SHA-256 that the server checks.
  The whole-archive digest is recomputed from the same bytes on the way and compared
  before CompleteMultipartUpload: parts are only assembled under the final key when the
  archive is exactly the one described. Any failure aborts the upload, so no parts
  linger and the key never appears.

The system this one descends from uploaded first and then set the metadata by copying
the object onto itself (``copy_object`` with ``MetadataDirective=REPLACE``). Between the
two requests the final key existed *without* its checksum, and a failed or killed copy
left it that way for good; the copy also re-reads and rewrites every byte (and a single
copy stops at 5 GiB). Sending the metadata with the data closes that window.

After the upload a HEAD confirms the stored length and metadata. The deadline (epoch
seconds) is checked before starting, before each part and before completing, each time
with :data:`MIN_START_SECONDS` to spare: an upload that cannot finish is better not
started (the caller still has to release its claims in time), and an archive must not
appear after the deadline, when another invocation may already be deciding from its
absence that the objects still need archiving.

All SDK errors are mapped in :func:`map_client_error`; the credential errors become
:class:`DeliveryAuthError`, on which :class:`MinioTarget` re-reads the secret once (it may
have been rotated), rebuilds the client and tries again once.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from aggregator.base.errors import AggregatorError, DeliveryError, OutOfTime
from aggregator.delivery.secret import MinioSecret, SecretSource

if TYPE_CHECKING:
    from types_boto3_s3.client import S3Client
    from types_boto3_s3.type_defs import CompletedPartTypeDef

logger = logging.getLogger(__name__)

# The requests that can make the final key appear. None of them may leave after the
# deadline, not even as the SDK's own retry: by then another invocation may be deciding
# from MinIO's contents whether to archive the same objects again.
_KEY_CREATING = ("PutObject", "CompleteMultipartUpload")
_send_limit = threading.local()  # (deadline, clock) of the publish running on this thread


def _refuse_late_send(**_: Any) -> None:
    limit = getattr(_send_limit, "value", None)
    if limit is not None and limit[1]() > limit[0]:
        raise OutOfTime("the deadline passed: no request that could publish the archive is sent")


def _guard_deadline(client: S3Client, deadline: float | None, clock: Callable[[], float]) -> None:
    events = getattr(getattr(client, "meta", None), "events", None)  # absent on test fakes, which never retry
    if events is not None:
        for operation in _KEY_CREATING:
            events.register(f"before-send.s3.{operation}", _refuse_late_send,
                            unique_id=f"aggregator-deadline-{operation}")
    _send_limit.value = None if deadline is None else (deadline, clock)

T = TypeVar("T")

METADATA_KEY = "sha256_checksum"
MIN_PART_BYTES = 5 * 1024 * 1024  # S3's smallest part (all but the last)
MAX_PARTS = 10_000  # S3's most parts per upload
# Less than this before the deadline and no upload, part or completion is started: a
# round trip to MinIO plus the HEAD that verifies it must fit, with time left for the
# caller to settle its claims.
MIN_START_SECONDS = 0.5

AUTH_ERROR_CODES = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken",
    "InvalidToken", "TokenRefreshRequired",
    # A HEAD response has no body, so a refused signature only shows as its status.
    "403", "Forbidden",
})
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


class DeliveryAuthError(DeliveryError):
    """MinIO refused the credentials: re-read the secret (it may have rotated) and retry once."""


class _NotFound(DeliveryError):
    """The key does not exist (404): an answer for ``exists`` and ``open_object``."""


def map_client_error(error: BaseException, *, action: str) -> DeliveryError:
    """The one place where an SDK error becomes a delivery error.

    The message names the action, the service's error code and HTTP status (or the
    exception's class for transport errors), never the server's text or a credential.
    """
    code = error_code(error)
    status = http_status(error)
    if code in AUTH_ERROR_CODES:
        return DeliveryAuthError(f"{action}: MinIO refused the credentials ({code}, HTTP {status})")
    if code in NOT_FOUND_CODES:
        return _NotFound(f"{action}: not found ({code})")
    if code is not None:
        return DeliveryError(f"{action} failed: {code} (HTTP {status})")
    return DeliveryError(f"{action} failed: {type(error).__name__}")


def error_code(error: BaseException) -> str | None:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
    return None


def http_status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(status, int):
            return status
    return None


def _is_sdk_error(error: BaseException) -> bool:
    """Errors of the SDK and its transport, recognised without importing them."""
    if isinstance(error, OSError) or isinstance(getattr(error, "response", None), dict):
        return True
    return any(cls.__module__.split(".")[0] in ("botocore", "urllib3") for cls in type(error).__mro__)


def _call(action: str, operation: Callable[[], T]) -> T:
    try:
        return operation()
    except AggregatorError:
        raise
    except Exception as e:
        if not _is_sdk_error(e):
            raise
        raise map_client_error(e, action=action) from e


def publish_archive(client: S3Client, *, bucket: str, key: str, source: BinaryIO, size: int, sha256_hex: str,
                    part_bytes: int, deadline: float | None = None,
                    clock: Callable[[], float] = time.time) -> None:
    """Store ``size`` bytes of ``source`` (read from offset 0) under ``key``, atomically.

    ``sha256_hex`` is the lowercase hex SHA-256 of exactly those bytes; it becomes the
    ``sha256_checksum`` metadata and the checksum the server verifies. Raises
    :class:`DeliveryError` (nothing is left under ``key`` and no multipart upload remains)
    or :class:`OutOfTime` (nothing was started, or the upload was aborted between parts).
    """
    if size < 0:
        raise ValueError("size must not be negative")
    if part_bytes < MIN_PART_BYTES:
        raise ValueError(f"part_bytes must be at least {MIN_PART_BYTES}")
    if len(sha256_hex) != 64 or not set(sha256_hex) <= set("0123456789abcdef"):
        raise ValueError("sha256_hex must be 64 lowercase hex digits")
    _check_deadline(deadline, clock, margin=MIN_START_SECONDS, what="start the upload")
    _guard_deadline(client, deadline, clock)
    try:
        _publish(client, bucket=bucket, key=key, source=source, size=size, sha256_hex=sha256_hex,
                 part_bytes=part_bytes, deadline=deadline, clock=clock)
    finally:
        _send_limit.value = None


def _publish(client: S3Client, *, bucket: str, key: str, source: BinaryIO, size: int, sha256_hex: str,
             part_bytes: int, deadline: float | None, clock: Callable[[], float]) -> None:
    try:
        source.seek(0)
    except (OSError, ValueError) as e:
        raise DeliveryError("archive spool cannot be rewound") from e
    metadata = {METADATA_KEY: sha256_hex}
    if size <= part_bytes:
        body = _read_exactly(source, size)
        _ensure_consumed(source)
        # Reading a spilled spool takes time: nothing may be sent once the deadline is near.
        _check_deadline(deadline, clock, margin=MIN_START_SECONDS, what="send the upload")
        checksum = base64.b64encode(bytes.fromhex(sha256_hex)).decode()
        _finish(client, bucket=bucket, key=key, size=size, sha256_hex=sha256_hex, action="PutObject",
                operation=lambda: client.put_object(Bucket=bucket, Key=key, Body=body, Metadata=metadata,
                                                    ChecksumSHA256=checksum))
        parts = 1
    else:
        parts = _multipart(client, bucket=bucket, key=key, source=source, size=size, sha256_hex=sha256_hex,
                           part_bytes=max(part_bytes, -(-size // MAX_PARTS)), metadata=metadata,
                           deadline=deadline, clock=clock)
    _verify(client, bucket=bucket, key=key, size=size, sha256_hex=sha256_hex)
    logger.info("archive published", extra={"bucket": bucket, "key": key, "size": size, "parts": parts,
                                            "sha256": sha256_hex})


def _multipart(client: S3Client, *, bucket: str, key: str, source: BinaryIO, size: int, sha256_hex: str,
               part_bytes: int, metadata: dict[str, str], deadline: float | None,
               clock: Callable[[], float]) -> int:
    created = _call("CreateMultipartUpload", lambda: client.create_multipart_upload(
        Bucket=bucket, Key=key, Metadata=metadata, ChecksumAlgorithm="SHA256"))
    upload_id = created["UploadId"]
    try:
        whole = hashlib.sha256()
        parts: list[CompletedPartTypeDef] = []
        remaining = size
        while remaining:
            if parts:
                _check_deadline(deadline, clock, margin=MIN_START_SECONDS, what=f"start part {len(parts) + 1}")
            chunk = _read_exactly(source, min(part_bytes, remaining))
            remaining -= len(chunk)
            whole.update(chunk)
            number = len(parts) + 1
            parts.append(_upload_part(client, bucket=bucket, key=key, upload_id=upload_id, number=number,
                                      chunk=chunk))
            del chunk  # one part in memory at a time
        _ensure_consumed(source)
        if whole.hexdigest() != sha256_hex:
            raise DeliveryError("the archive's bytes do not match its declared SHA-256; upload aborted")
        _check_deadline(deadline, clock, margin=MIN_START_SECONDS, what="complete the upload")
        _finish(client, bucket=bucket, key=key, size=size, sha256_hex=sha256_hex, action="CompleteMultipartUpload",
                operation=lambda: client.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}))
    except BaseException:
        _abort(client, bucket=bucket, key=key, upload_id=upload_id)
        raise
    return len(parts)


def _upload_part(client: S3Client, *, bucket: str, key: str, upload_id: str, number: int,
                 chunk: bytes) -> CompletedPartTypeDef:
    checksum = base64.b64encode(hashlib.sha256(chunk).digest()).decode()
    answer = _call(f"UploadPart {number}", lambda: client.upload_part(
        Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk, ChecksumSHA256=checksum))
    return {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum}


def _finish(client: S3Client, *, bucket: str, key: str, size: int, sha256_hex: str, action: str,
            operation: Callable[[], Any]) -> None:
    """The request that makes the key appear. If its answer is lost (timeout, reset, 5xx)
    the server may still have stored the object: a HEAD tells, so a publish that did
    happen is not reported as failed (the caller would archive the objects again)."""
    try:
        _call(action, operation)
    except DeliveryError as e:
        status = http_status(e.__cause__) if e.__cause__ else None
        if isinstance(e, DeliveryAuthError) or (status is not None and status < 500):
            raise
        if not _holds_archive(client, bucket=bucket, key=key, size=size, sha256_hex=sha256_hex):
            raise
        logger.warning("publish answer lost but the archive is stored", extra={"key": key, "action": action})


def _holds_archive(client: S3Client, *, bucket: str, key: str, size: int, sha256_hex: str) -> bool:
    try:
        head = _call("HeadObject", lambda: client.head_object(Bucket=bucket, Key=key))
    except DeliveryError:
        return False
    return bool(head.get("ContentLength") == size and head.get("Metadata", {}).get(METADATA_KEY) == sha256_hex)


def _verify(client: S3Client, *, bucket: str, key: str, size: int, sha256_hex: str) -> None:
    head = _call("HeadObject after upload", lambda: client.head_object(Bucket=bucket, Key=key))
    stored_size = head.get("ContentLength")
    stored_sha = head.get("Metadata", {}).get(METADATA_KEY)
    if stored_size == size and stored_sha == sha256_hex:
        return
    # Not what was sent (a server that drops metadata, say): the key must not keep it.
    try:
        _call("DeleteObject", lambda: client.delete_object(Bucket=bucket, Key=key))
    except DeliveryError:
        logger.warning("could not delete an unverifiable archive", extra={"key": key}, exc_info=True)
    raise DeliveryError(
        f"stored object does not match the upload: length {stored_size} (sent {size}), "
        f"{METADATA_KEY} {'matches' if stored_sha == sha256_hex else 'missing or different'}"
    )


def _abort(client: S3Client, *, bucket: str, key: str, upload_id: str) -> None:
    try:
        _call("AbortMultipartUpload", lambda: client.abort_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id))
    except DeliveryError:
        # The original failure is what the caller must see; a bucket lifecycle rule
        # (AbortIncompleteMultipartUpload) collects what this could not.
        logger.warning("could not abort a multipart upload", extra={"key": key, "upload_id": upload_id},
                       exc_info=True)


def _check_deadline(deadline: float | None, clock: Callable[[], float], *, margin: float, what: str) -> None:
    if deadline is None:
        return
    left = deadline - clock()
    if left < margin:
        raise OutOfTime(f"{left:.1f}s left before the deadline: too little to {what}")


def _read_exactly(source: BinaryIO, count: int) -> bytes:
    """``count`` bytes of the spool; one read (and no copy) in the usual case, since a
    file returns all it is asked for: a part is held in memory once, not twice."""
    try:
        data = source.read(count)
        if len(data) == count:
            return data
        buffer = bytearray(data)
        while len(buffer) < count:
            more = source.read(count - len(buffer))
            if not more:
                raise DeliveryError(f"archive spool ended {count - len(buffer)} bytes early")
            buffer += more
    except OSError as e:
        raise DeliveryError("could not read the archive spool") from e
    return bytes(buffer)


def _ensure_consumed(source: BinaryIO) -> None:
    try:
        extra = source.read(1)
    except OSError as e:
        raise DeliveryError("could not read the archive spool") from e
    if extra:
        raise DeliveryError("archive spool is longer than its declared size")


class MinioTarget:
    """The MinIO bucket of the current secret, with one credential refresh on auth errors.

    Each call asks the provider for the secret (cached there, at most five minutes) and
    rebuilds the client only when the secret changed. When MinIO refuses the credentials,
    the secret is fetched again at once; if it was rotated, the client is rebuilt and the
    operation tried once more. An unchanged secret is not retried: it would fail the same way.
    """

    def __init__(self, provider: SecretSource, client_factory: Callable[[MinioSecret], S3Client], *,
                 clock: Callable[[], float] = time.time) -> None:
        self._provider = provider
        self._factory = client_factory
        self._clock = clock
        self._lock = threading.Lock()
        self._secret: MinioSecret | None = None
        self._client: S3Client | None = None

    @property
    def bucket(self) -> str:
        return self._current()[0].bucket

    def publish(self, *, key: str, source: BinaryIO, size: int, sha256_hex: str, part_bytes: int,
                deadline: float | None = None) -> None:
        """:func:`publish_archive` into the secret's bucket."""
        self._with_auth_retry(lambda client, bucket: publish_archive(
            client, bucket=bucket, key=key, source=source, size=size, sha256_hex=sha256_hex,
            part_bytes=part_bytes, deadline=deadline, clock=self._clock))

    def exists(self, key: str) -> bool:
        def head(client: S3Client, bucket: str) -> bool:
            try:
                _call("HeadObject", lambda: client.head_object(Bucket=bucket, Key=key))
            except _NotFound:
                return False
            return True

        return self._with_auth_retry(head)

    def open_object(self, key: str) -> BinaryIO | None:
        """A streaming reader of ``key`` (close it when done), or None when it does not exist."""
        def get(client: S3Client, bucket: str) -> BinaryIO | None:
            try:
                answer = _call("GetObject", lambda: client.get_object(Bucket=bucket, Key=key))
            except _NotFound:
                return None
            return io.BufferedReader(_BodyReader(answer["Body"]), buffer_size=1 << 20)

        return self._with_auth_retry(get)

    def _current(self, *, refresh: bool = False) -> tuple[MinioSecret, S3Client]:
        secret = self._provider.get(refresh=refresh)
        with self._lock:
            if self._client is None or secret != self._secret:
                self._client = self._factory(secret)
                self._secret = secret
            return secret, self._client

    def _with_auth_retry(self, operation: Callable[[S3Client, str], T]) -> T:
        secret, client = self._current()
        try:
            return operation(client, secret.bucket)
        except DeliveryAuthError:
            fresh, client = self._current(refresh=True)
            if fresh == secret:
                raise
            logger.info("MinIO refused the credentials; retrying once with the rotated secret")
            return operation(client, fresh.bucket)


class _BodyReader(io.RawIOBase):
    """A response body as a raw stream, with transport errors mapped to DeliveryError."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data: bytes = _call("reading an object", lambda: self._body.read(len(view)))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()
