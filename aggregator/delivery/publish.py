"""Publishing a finished archive to MinIO, and saying whether it happened: yes, no, or unknown.

The archive is complete in a seekable spool and its SHA-256 is known before the first
byte leaves, so the upload is atomic by construction:

* first the manifest goes to a small sidecar object, :func:`sidecar_key` (its own SHA-256 in
  its metadata, checked by the server). It is written before the archive's final key can
  appear, so whoever finds the archive finds its manifest too, in one small GET whatever
  the archive's size (:meth:`MinioTarget.listing`);
* up to ``part_bytes``: one PutObject carrying the ``sha256_checksum`` metadata *and*
  ``x-amz-checksum-sha256`` (the same digest, base64). The server hashes what it received
  and refuses the object (BadDigest) unless it matches; an S3 PUT is all or nothing;
* larger: a multipart upload created *with* the metadata, parts read from the spool one
  at a time (one part in memory), each carrying its own SHA-256 that the server checks.
  The whole-archive digest is recomputed on the way and compared before
  CompleteMultipartUpload. Any failure before the Complete aborts the upload.

Once PUBLISHED, a small marker :func:`published_key` goes beside the sidecar. The archive
is the consumer's to take away; when it has, the marker still says that it was published,
and the sidecar what it held, so a late redelivery of its objects is a duplicate, not new
work (:meth:`MinioTarget.listing`). Without the marker, a missing archive means "never
published": the sidecar alone proves nothing, since it is written first.

The outcome (:class:`PublishOutcome`) is decided here, once:

* PUBLISHED: the key-creating request (PutObject, CompleteMultipartUpload) was answered
  with success, or its answer was lost and a HEAD finds the archive with our checksum;
* NOT_PUBLISHED, proven: we failed before any key-creating request left (the sidecar, a
  part, the spool, the deadline), or MinIO itself refused the only attempt with a 4xx and
  an S3 error code before taking the body (BadDigest, AccessDenied, NoSuchBucket ...);
* UNKNOWN: anything else. A timeout, a reset, a 5xx, a gateway's 504 or a proxy's 408 may
  come *after* the store took the whole request, which it may still complete seconds later;
  a 404 on a HEAD proves nothing then. The caller keeps its claims until its lease ends.

No key-creating request (PutObject, UploadPart, CompleteMultipartUpload), and no SDK retry of
one, leaves later than the deadline's write cutoff (:mod:`aggregator.base.deadline`): a
botocore ``before-send`` hook refuses it, and counts the attempts that did leave, so a refused
retry after a lost answer is UNKNOWN, not NOT_PUBLISHED.

All SDK errors are mapped in :func:`map_client_error`; the credential errors become
:class:`DeliveryAuthError`, on which :class:`MinioTarget` re-reads the secret once (it may
have been rotated), rebuilds the client and tries again once, when nothing was published.

The system this one descends from uploaded first and then set the metadata by copying the
object onto itself: between the two requests the final key existed *without* its checksum.
Sending the metadata with the data closes that window.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import io
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from aggregator.base.deadline import Deadline
from aggregator.base.errors import AggregatorError, DeliveryError, OutOfTime
from aggregator.delivery.secret import MinioSecret, SecretSource

if TYPE_CHECKING:
    from types_boto3_s3.client import S3Client
    from types_boto3_s3.type_defs import CompletedPartTypeDef

logger = logging.getLogger(__name__)

# The requests that could make the final key appear, directly or through a Complete.
# None of them may leave after the write cutoff, not even as the SDK's own retry.
_KEY_CREATING = ("PutObject", "UploadPart", "CompleteMultipartUpload")
_guard = threading.local()  # the publish running on this thread: its deadline and attempts


@dataclass
class _Guard:
    deadline: Deadline | None
    sent: int = 0  # attempts of the current key-creating request that left


def _before_send(**_: Any) -> None:
    guard: _Guard | None = getattr(_guard, "value", None)
    if guard is None:
        return
    if guard.deadline is not None and not guard.deadline.may_start_write():
        raise OutOfTime("past the write cutoff: no request that could publish the archive is sent")
    guard.sent += 1


def _install_guard(client: S3Client) -> bool:
    """Register the hook on ``client`` (once); False for clients without botocore events."""
    events = getattr(getattr(client, "meta", None), "events", None)
    if events is None:
        return False  # test fakes: they never retry, one call is one attempt
    for operation in _KEY_CREATING:
        events.register(f"before-send.s3.{operation}", _before_send, unique_id=f"aggregator-guard-{operation}")
    return True


T = TypeVar("T")

METADATA_KEY = "sha256_checksum"
MIN_PART_BYTES = 5 * 1024 * 1024  # S3's smallest part (all but the last)
MAX_PARTS = 10_000  # S3's most parts per upload
SIDECAR_PREFIX = "_manifests/"
# 4xx answers that a gateway or proxy gives for a request it may have passed on anyway.
_AMBIGUOUS_STATUS = frozenset({408, 429, 499})

AUTH_ERROR_CODES = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken",
    "InvalidToken", "TokenRefreshRequired",
    # A HEAD response has no body, so a refused signature only shows as its status.
    "403", "Forbidden",
})
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


class DeliveryAuthError(DeliveryError):
    """MinIO refused the credentials: re-read the secret (it may have rotated) and retry once."""


class NoSidecar(DeliveryError):
    """An archive exists without its manifest sidecar: read the manifest inside it instead."""


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


class PublishOutcome(enum.Enum):
    PUBLISHED = "published"
    NOT_PUBLISHED = "not published"  # proven: the final key will never appear
    UNKNOWN = "unknown"  # the final key may appear later: keep the claims to the lease end


@dataclass(frozen=True, slots=True)
class Publication:
    """What one publish did: its outcome and, unless published, why."""

    outcome: PublishOutcome
    reason: str = ""
    parts: int = 0
    auth_refused: bool = False  # MinIO refused the credentials before anything was stored


def sidecar_key(archive_key: str) -> str:
    """Where the manifest of ``archive_key`` is stored beside it."""
    return SIDECAR_PREFIX + archive_key + ".json"


def published_key(archive_key: str) -> str:
    """The marker written once ``archive_key`` is published (it outlives the archive)."""
    return SIDECAR_PREFIX + archive_key + ".published"


class _Refused(Exception):
    """Raised inside a publish for a failure that proves the final key will never appear."""

    def __init__(self, reason: str, *, auth: bool = False) -> None:
        super().__init__(reason)
        self.auth = auth


class _Unknown(Exception):
    """Raised inside a publish when a key-creating request may have been stored."""


def publish_archive(client: S3Client, *, bucket: str, key: str, source: BinaryIO, size: int, sha256_hex: str,
                    manifest: bytes, part_bytes: int, deadline: Deadline | None = None) -> Publication:
    """Store ``size`` bytes of ``source`` (read from offset 0) under ``key``, atomically,
    after its ``manifest`` under :func:`sidecar_key`, and say what happened.

    ``sha256_hex`` is the lowercase hex SHA-256 of exactly those bytes; it becomes the
    ``sha256_checksum`` metadata and the checksum the server verifies. Never raises for a
    failed upload: the outcome says it.
    """
    if size < 0:
        raise ValueError("size must not be negative")
    if part_bytes < MIN_PART_BYTES:
        raise ValueError(f"part_bytes must be at least {MIN_PART_BYTES}")
    if len(sha256_hex) != 64 or not set(sha256_hex) <= set("0123456789abcdef"):
        raise ValueError("sha256_hex must be 64 lowercase hex digits")
    counted = _install_guard(client)
    guard = _guard.value = _Guard(deadline)
    try:
        parts = _publish(client, bucket=bucket, key=key, source=source, size=size, sha256_hex=sha256_hex,
                         manifest=manifest, part_bytes=part_bytes, guard=guard, counted=counted)
    except _Refused as e:
        logger.warning("archive not published", extra={"key": key, "reason": str(e)})
        return Publication(PublishOutcome.NOT_PUBLISHED, str(e), auth_refused=e.auth)
    except Exception as e:  # after a key-creating request left: only the store knows now
        reason = str(e) if isinstance(e, AggregatorError | _Unknown) else type(e).__name__
        _guard.value = None  # the HEAD below creates nothing
        if _holds_archive(client, bucket=bucket, key=key, size=size, sha256_hex=sha256_hex):
            logger.warning("publish answer lost but the archive is stored", extra={"key": key, "reason": reason})
            _mark_published(client, bucket=bucket, key=key, size=size, sha256_hex=sha256_hex, deadline=deadline)
            return Publication(PublishOutcome.PUBLISHED, reason)
        logger.error("publish outcome unknown: claims are kept until the lease ends",
                     extra={"key": key, "reason": reason})
        return Publication(PublishOutcome.UNKNOWN, reason)
    finally:
        _guard.value = None
    logger.info("archive published", extra={"bucket": bucket, "key": key, "size": size, "parts": parts,
                                            "sha256": sha256_hex})
    _mark_published(client, bucket=bucket, key=key, size=size, sha256_hex=sha256_hex, deadline=deadline)
    return Publication(PublishOutcome.PUBLISHED, parts=parts)


def _head(client: S3Client, *, bucket: str, key: str) -> Mapping[str, Any] | None:
    try:
        return _call("HeadObject", lambda: client.head_object(Bucket=bucket, Key=key))
    except _NotFound:
        return None


def _mark_published(client: S3Client, *, bucket: str, key: str, size: int, sha256_hex: str,
                    deadline: Deadline | None) -> None:
    """The marker that outlives the archive. Best effort: the archive is published whatever
    happens here; without the marker, only a redelivery arriving after the consumer took the
    archive away would archive its objects again. Not started past the write cutoff, like
    every write. It names the archive it vouches for (an empty body also tripped a
    S3-compatible server here: its answer to the empty PUT spilled into the next request's
    on the same connection)."""
    if deadline is not None and not deadline.may_start_write():
        logger.warning("no time left to mark a published archive", extra={"key": key})
        return
    body = json.dumps({"archive_key": key, "size": size, "sha256": sha256_hex}).encode()
    _guard.value = _Guard(deadline)  # no SDK retry of it past the cutoff either
    try:
        _put_small_json(client, bucket=bucket, key=published_key(key), body=body, action="PutObject published marker")
    except (DeliveryError, OutOfTime) as e:
        logger.warning("could not mark a published archive", extra={"key": key, "error": str(e)})
    finally:
        _guard.value = None


def _publish(client: S3Client, *, bucket: str, key: str, source: BinaryIO, size: int, sha256_hex: str,
             manifest: bytes, part_bytes: int, guard: _Guard, counted: bool) -> int:
    """The upload; raises :class:`_Refused` while nothing can have created the key."""
    upload_id: str | None = None
    try:
        if guard.deadline is not None:
            guard.deadline.check_write("start the upload")
        _put_sidecar(client, bucket=bucket, key=key, manifest=manifest)
        source.seek(0)
        metadata = {METADATA_KEY: sha256_hex}
        if size <= part_bytes:
            body = _read_exactly(source, size)
            _ensure_consumed(source)
            checksum = base64.b64encode(bytes.fromhex(sha256_hex)).decode()
            send: Callable[[], Any] = lambda: client.put_object(  # noqa: E731
                Bucket=bucket, Key=key, Body=body, Metadata=metadata, ChecksumSHA256=checksum)
            action, parts = "PutObject", 1
        else:
            upload_id, completed = _upload_parts(client, bucket=bucket, key=key, source=source, size=size,
                                                 sha256_hex=sha256_hex, metadata=metadata, guard=guard,
                                                 part_bytes=max(part_bytes, -(-size // MAX_PARTS)))
            send = lambda: client.complete_multipart_upload(  # noqa: E731
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": completed})
            action, parts = "CompleteMultipartUpload", len(completed)
        if guard.deadline is not None:
            guard.deadline.check_write(action)  # reading a spilled spool takes time
    except _Refused:
        raise
    except Exception as e:  # nothing that could create the key has left yet
        if upload_id is not None:  # parts sent, Complete refused (the deadline): no upload left pending
            _abort(client, bucket=bucket, key=key, upload_id=upload_id)
        reason = str(e) if isinstance(e, AggregatorError) else f"{type(e).__name__}: {e}"
        raise _Refused(reason, auth=isinstance(e, DeliveryAuthError)) from e
    try:
        _send_key_creating(action, send, guard=guard, counted=counted)
    except _Refused:
        if upload_id is not None:
            _abort(client, bucket=bucket, key=key, upload_id=upload_id)
        raise
    _verify(client, bucket=bucket, key=key, size=size, sha256_hex=sha256_hex)
    return parts


def _put_sidecar(client: S3Client, *, bucket: str, key: str, manifest: bytes) -> None:
    _put_small_json(client, bucket=bucket, key=sidecar_key(key), body=manifest, action="PutObject manifest")


def _put_small_json(client: S3Client, *, bucket: str, key: str, body: bytes, action: str) -> None:
    """A small JSON object beside an archive, its SHA-256 in its metadata and checked by the server."""
    digest = hashlib.sha256(body).digest()
    _call(action, lambda: client.put_object(
        Bucket=bucket, Key=key, Body=body, ContentType="application/json",
        Metadata={METADATA_KEY: digest.hex()}, ChecksumSHA256=base64.b64encode(digest).decode()))


def _send_key_creating(action: str, send: Callable[[], Any], *, guard: _Guard, counted: bool) -> None:
    """The request that makes the key appear: refused for sure, sent, or unknown."""
    guard.sent = 0
    try:
        _call(action, send)
    except OutOfTime as e:
        if guard.sent == 0:
            raise _Refused(str(e)) from e  # our hook stopped the first attempt: nothing left
        raise _Unknown(f"{action}: a retry was refused after an unanswered attempt") from e
    except DeliveryError as e:
        attempts = guard.sent if counted else 1
        if attempts <= 1 and _definitely_refused(e.__cause__):
            raise _Refused(str(e), auth=isinstance(e, DeliveryAuthError)) from e
        raise _Unknown(str(e)) from e


def _definitely_refused(error: BaseException | None) -> bool:
    """Whether a failed key-creating request was refused by the store itself before it took
    the body: an S3 error code with a 4xx that no gateway gives for a request it passed on,
    or a connection that never opened."""
    if error is None:
        return False
    if type(error).__name__ in ("EndpointConnectionError", "ConnectTimeoutError", "ProxyConnectionError"):
        return True
    status = http_status(error)
    code = error_code(error)
    return (status is not None and 400 <= status < 500 and status not in _AMBIGUOUS_STATUS
            and code is not None and not code.isdigit())


def _upload_parts(client: S3Client, *, bucket: str, key: str, source: BinaryIO, size: int, sha256_hex: str,
                  metadata: dict[str, str], guard: _Guard, part_bytes: int) -> tuple[str, list[CompletedPartTypeDef]]:
    created = _call("CreateMultipartUpload", lambda: client.create_multipart_upload(
        Bucket=bucket, Key=key, Metadata=metadata, ChecksumAlgorithm="SHA256"))
    upload_id = created["UploadId"]
    try:
        whole = hashlib.sha256()
        parts: list[CompletedPartTypeDef] = []
        remaining = size
        while remaining:
            chunk = _read_exactly(source, min(part_bytes, remaining))
            remaining -= len(chunk)
            whole.update(chunk)
            if guard.deadline is not None:
                guard.deadline.check_write(f"send part {len(parts) + 1}")
            parts.append(_upload_part(client, bucket=bucket, key=key, upload_id=upload_id, number=len(parts) + 1,
                                      chunk=chunk))
            del chunk  # one part in memory at a time
        _ensure_consumed(source)
        if whole.hexdigest() != sha256_hex:
            raise DeliveryError("the archive's bytes do not match its declared SHA-256; upload aborted")
    except BaseException:
        _abort(client, bucket=bucket, key=key, upload_id=upload_id)
        raise
    return upload_id, parts


def _upload_part(client: S3Client, *, bucket: str, key: str, upload_id: str, number: int,
                 chunk: bytes) -> CompletedPartTypeDef:
    checksum = base64.b64encode(hashlib.sha256(chunk).digest()).decode()
    answer = _call(f"UploadPart {number}", lambda: client.upload_part(
        Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk, ChecksumSHA256=checksum))
    return {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum}


def _holds_archive(client: S3Client, *, bucket: str, key: str, size: int, sha256_hex: str) -> bool:
    try:
        head = _call("HeadObject", lambda: client.head_object(Bucket=bucket, Key=key))
    except DeliveryError:
        return False
    return bool(head.get("ContentLength") == size and head.get("Metadata", {}).get(METADATA_KEY) == sha256_hex)


def _verify(client: S3Client, *, bucket: str, key: str, size: int, sha256_hex: str) -> None:
    """HEAD after a successful upload. The server already checked the bytes against our
    checksum; this catches a server that drops metadata. Unanswered: trust the success."""
    try:
        head = _call("HeadObject after upload", lambda: client.head_object(Bucket=bucket, Key=key))
    except DeliveryError:
        logger.warning("could not verify a published archive", extra={"key": key}, exc_info=True)
        return
    stored_size = head.get("ContentLength")
    stored_sha = head.get("Metadata", {}).get(METADATA_KEY)
    if stored_size == size and stored_sha == sha256_hex:
        return
    # Not what was sent: the key must not keep it. Deleted for sure, it never held the objects.
    detail = (f"stored object does not match the upload: length {stored_size} (sent {size}), "
              f"{METADATA_KEY} {'matches' if stored_sha == sha256_hex else 'missing or different'}")
    try:
        _call("DeleteObject", lambda: client.delete_object(Bucket=bucket, Key=key))
    except DeliveryError as e:
        raise _Unknown(detail + "; and it could not be deleted") from e
    raise _Refused(detail)


def _abort(client: S3Client, *, bucket: str, key: str, upload_id: str) -> None:
    try:
        _call("AbortMultipartUpload", lambda: client.abort_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id))
    except DeliveryError:
        # The original failure is what the caller must see; a bucket lifecycle rule
        # (AbortIncompleteMultipartUpload) collects what this could not.
        logger.warning("could not abort a multipart upload", extra={"key": key, "upload_id": upload_id},
                       exc_info=True)


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

    def __init__(self, provider: SecretSource, client_factory: Callable[[MinioSecret], S3Client]) -> None:
        self._provider = provider
        self._factory = client_factory
        self._lock = threading.Lock()
        self._secret: MinioSecret | None = None
        self._client: S3Client | None = None

    @property
    def bucket(self) -> str:
        return self._current()[0].bucket

    def publish(self, *, key: str, source: BinaryIO, size: int, sha256_hex: str, manifest: bytes,
                part_bytes: int, deadline: Deadline | None = None) -> Publication:
        """:func:`publish_archive` into the secret's bucket; once more with a rotated secret
        when MinIO refused the credentials and nothing was stored."""
        def attempt(secret: MinioSecret, client: S3Client) -> Publication:
            return publish_archive(client, bucket=secret.bucket, key=key, source=source, size=size,
                                   sha256_hex=sha256_hex, manifest=manifest, part_bytes=part_bytes,
                                   deadline=deadline)

        try:
            secret, client = self._current()
        except AggregatorError as e:  # no secret, no client: nothing was sent
            return Publication(PublishOutcome.NOT_PUBLISHED, f"the MinIO secret: {e}")
        publication = attempt(secret, client)
        if publication.outcome is PublishOutcome.NOT_PUBLISHED and publication.auth_refused:
            try:
                fresh, client = self._current(refresh=True)
            except AggregatorError:
                return publication
            if fresh != secret:
                logger.info("MinIO refused the credentials; publishing once more with the rotated secret")
                publication = attempt(fresh, client)
        return publication

    def ready(self) -> MinioSecret:
        """The current secret (read, or cached) with its client built. Raises
        :class:`ConfigError` when the secret is absent, unreadable or invalid, and
        :class:`RetryableError` when Secrets Manager did not answer."""
        return self._current()[0]

    def listing(self, key: str) -> dict[str, Any] | None:
        """The manifest of the archive ``key``, or None when it was never published.

        Bounded whatever the archive's size: a HEAD and a GET of the small sidecar (and a
        HEAD of the marker when the archive is gone: taken away after its publish, its
        sidecar still lists what it held). Raises
        :class:`NoSidecar` for an archive published before sidecars existed, and
        :class:`DeliveryError` when it cannot tell (the caller must not decide).
        """
        head = self._head(key)
        if head is None:
            if not self.exists(published_key(key)):
                return None  # never published: a sidecar alone proves nothing (it is written first)
            taken = self._sidecar_manifest(key)  # published, then taken away by the consumer
            if taken is None:
                # Published, but what it held is no longer known: never guess "not archived".
                raise DeliveryError(f"{key} was published and taken away, and its manifest sidecar is gone")
            return taken
        manifest = self._sidecar_manifest(key)
        if manifest is None:
            raise NoSidecar(f"{key} has no manifest sidecar (published before sidecars existed)")
        self._mark_if_unmarked(key, head)
        return manifest

    def _mark_if_unmarked(self, key: str, head: Mapping[str, Any]) -> None:
        """Write the published marker of an archive found in place without one (its publisher
        ran out of time or died before writing it), before the consumer takes it away."""
        def mark(client: S3Client, bucket: str) -> None:
            if _head(client, bucket=bucket, key=published_key(key)) is None:
                _mark_published(client, bucket=bucket, key=key, size=int(head.get("ContentLength", 0)),
                                sha256_hex=str(head.get("Metadata", {}).get(METADATA_KEY, "")), deadline=None)

        try:
            self._with_auth_retry(mark)
        except DeliveryError as e:  # best effort, like the publisher's own
            logger.warning("could not mark a published archive found unmarked", extra={"key": key, "error": str(e)})

    def _sidecar_manifest(self, key: str) -> dict[str, Any] | None:
        """The manifest in ``key``'s sidecar, None without one; DeliveryError when unreadable."""
        def get_sidecar(client: S3Client, bucket: str) -> bytes | None:
            try:
                answer = _call("GetObject manifest", lambda: client.get_object(Bucket=bucket, Key=sidecar_key(key)))
            except _NotFound:
                return None
            data: bytes = _call("reading a manifest", lambda: answer["Body"].read())
            declared = answer.get("Metadata", {}).get(METADATA_KEY)
            if declared != hashlib.sha256(data).hexdigest():
                raise DeliveryError(f"the manifest of {key} does not match its {METADATA_KEY}")
            return data

        data = self._with_auth_retry(get_sidecar)
        if data is None:
            return None
        try:
            manifest = json.loads(data)
        except ValueError as e:
            raise DeliveryError(f"the manifest of {key} is not JSON") from e
        if not isinstance(manifest, dict):
            raise DeliveryError(f"the manifest of {key} is not a JSON object")
        return manifest

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def _head(self, key: str) -> Mapping[str, Any] | None:
        """``key``'s HEAD answer, None when it does not exist."""
        return self._with_auth_retry(lambda client, bucket: _head(client, bucket=bucket, key=key))

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
