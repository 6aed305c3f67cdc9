"""The S3 GetObject rules, free of any transport: request targets, version pinning,
response heads and what each status means.

Every GET is pinned to the version the event names: ``versionId`` when the event has
one, else ``If-Match`` on its eTag. A resumed read adds ``Range`` and keeps the pin.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from aggregator.base.errors import BadResponse
from aggregator.base.events import ObjectRef
from aggregator.base.objects import ObjectHead
from aggregator.sdk.endpoints import BucketEndpoint, Origin

# What SigV4 for S3 calls URI-encoding: every byte but A-Z a-z 0-9 - _ . ~ (and "/" in
# the path) as %XX of its UTF-8 bytes. "+" and "%" in keys must be encoded, and "//",
# "." and ".." segments are kept as they are: S3 keys are not file paths.
_PATH_SAFE = "/~"
_QUERY_SAFE = "-_.~"
_NOTHING_TO_ENCODE = re.compile(r"[A-Za-z0-9_.~/-]*")
_ERROR_CODE = re.compile(rb"<Code>([^<]{1,64})</Code>")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")

__all__ = ["BadResponse", "GetTarget", "Outcome", "check_pin", "classify", "parse_content_range", "parse_head",
           "request_headers", "target"]


@dataclass(frozen=True, slots=True)
class GetTarget:
    """Where one GET goes and what it signs."""

    origin: Origin  # the connection to use
    host_header: str
    path: str  # encoded path and query, as sent and as signed
    signing_region: str


def target(endpoint: BucketEndpoint, ref: ObjectRef) -> GetTarget:
    """The GET of ``ref`` on its bucket's endpoint (see :mod:`aggregator.sdk.endpoints`)."""
    key = ref.key
    if not _NOTHING_TO_ENCODE.fullmatch(key):  # most keys are; quote() costs ~2 us even then
        key = quote(key.encode("utf-8", "surrogatepass"), safe=_PATH_SAFE)
    path = f"{endpoint.prefix}/{key}"
    if ref.version_id:
        path += "?versionId=" + quote(ref.version_id, safe=_QUERY_SAFE)
    return GetTarget(origin=endpoint.origin, host_header=_host_header(endpoint.origin), path=path,
                     signing_region=endpoint.signing_region)


@functools.lru_cache(maxsize=256)
def _host_header(origin: Origin) -> str:
    return origin.host_header()


def request_headers(ref: ObjectRef, target: GetTarget, *, offset: int = 0, etag: str | None = None
                    ) -> list[tuple[str, str]]:
    """Host, the version pin, and ``Range`` from ``offset`` when resuming.

    A resumed read also sends ``If-Match`` on the eTag of the first response when the
    pin is a versionId: belt and braces against a server that ignored the versionId.
    """
    headers = [("Host", target.host_header)]
    pin_etag = ref.etag if not ref.version_id else etag
    if pin_etag:
        headers.append(("If-Match", f'"{pin_etag}"'))
    if offset:
        headers.append(("Range", f"bytes={offset}-"))
    return headers


class Outcome(enum.Enum):
    OK = "ok"
    MISSING = "missing"  # the named version is gone: acknowledge and count
    RETRY = "retry"  # transient: try again after a backoff
    THROTTLED = "throttled"  # transient, and the server asks us to slow down
    FAIL = "fail"  # will not get better by retrying now


def classify(status: int, body: bytes) -> tuple[Outcome, str]:
    """What a response status (and its error body's ``<Code>``) means for this GET."""
    code = error_code(body) if status >= 300 else ""
    if status in (200, 206):
        return Outcome.OK, ""
    if status in (404, 412):
        return Outcome.MISSING, code or str(status)
    if status == 400 and code == "InvalidArgument":
        return Outcome.MISSING, code  # a versionId that does not exist in this bucket
    if status in (429, 503) or code in ("SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded"):
        return Outcome.THROTTLED, code or str(status)
    if status >= 500 or status == 408 or code in ("RequestTimeout", "InternalError"):
        return Outcome.RETRY, code or str(status)
    return Outcome.FAIL, code or str(status)


def error_code(body: bytes) -> str:
    match = _ERROR_CODE.search(body[:4096])
    return match.group(1).decode("utf-8", "replace") if match else ""


_MONTHS = {name: number for number, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), start=1)}


@functools.lru_cache(maxsize=1024)
def http_date(value: str) -> datetime:
    """An HTTP date. S3 sends the IMF-fixdate form (``Thu, 26 Nov 2026 15:13:35 GMT``),
    read here directly (~1 us, where ``email.utils`` takes ~3 us and ~10 ms to import in
    every fetch process); any other form goes through ``email.utils``. Objects uploaded in
    the same second share their Last-Modified: each value is read once (datetimes are
    immutable, so sharing one is safe)."""
    parts = value.split()
    if len(parts) == 6 and parts[5] == "GMT" and len(parts[3]) == 4 and len(parts[4]) == 8 and parts[2] in _MONTHS:
        hour, minute, second = parts[4].split(":")
        return datetime(int(parts[3]), _MONTHS[parts[2]], int(parts[1]), int(hour), int(minute), int(second),
                        tzinfo=UTC)
    from email.utils import parsedate_to_datetime

    return parsedate_to_datetime(value)


def parse_head(headers: list[tuple[str, str]]) -> ObjectHead:
    """The object's head from a 200 response's headers."""
    fields = header_map(headers)
    try:
        size = int(fields["content-length"])
        modified = http_date(fields["last-modified"])
    except (KeyError, ValueError, TypeError, IndexError) as e:
        raise BadResponse(f"response lacks a valid {e.__class__.__name__} Content-Length or Last-Modified") from e
    if modified.tzinfo is None:
        modified = modified.replace(tzinfo=UTC)
    version_id = fields.get("x-amz-version-id") or None
    return ObjectHead(
        size=size,
        last_modified=modified.astimezone(UTC),
        etag=fields.get("etag", "").strip('"'),
        version_id=None if version_id == "null" else version_id,
    )


def check_pin(ref: ObjectRef, head: ObjectHead) -> str | None:
    """Why this response is not the version the event names, or None when it is.

    Servers are meant to enforce the pin themselves; this catches one that ignores it.
    """
    if ref.version_id and head.version_id and head.version_id != ref.version_id:
        return f"server returned version {head.version_id!r} for versionId {ref.version_id!r}"
    if not ref.version_id and ref.etag and head.etag and head.etag != ref.etag:
        return "server returned another eTag than the one pinned with If-Match"
    return None


def parse_content_range(headers: list[tuple[str, str]]) -> tuple[int, int]:
    """``(first byte, total size)`` of a 206 response."""
    match = _CONTENT_RANGE.fullmatch(header_map(headers).get("content-range", "").strip())
    if not match:
        raise BadResponse("206 response without a valid Content-Range")
    return int(match.group(1)), int(match.group(3))


def header_map(headers: list[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers}
