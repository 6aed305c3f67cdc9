"""Names derived from an object: its claim id, its tar member name, its archive's key.

Member names are safe to extract and injective. Each ``/``-separated segment of
``{bucket}/{key}`` is escaped like this:

* ``%`` and control characters become ``%XX`` (uppercase hex), so ``%`` followed by two
  hex digits only ever stands for an escaped byte;
* a segment that is empty, ``.`` or ``..`` after that becomes ``%``, ``%2E`` or
  ``%2E%2E``. None of these can come out of the first rule, so nothing collides.

The result has no leading ``/``, no empty, ``.`` or ``..`` segment and no control
character, and ``unescape`` recovers the key exactly. A second version of the same key
in one archive gets ``%v2``, ``%v3``...: ``%v`` is never produced by escaping.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime

from aggregator.base.events import ObjectRef

_NEEDS_ESCAPE = re.compile(r"[%\x00-\x1f\x7f-\x9f]")
_SPECIAL_SEGMENTS = {"": "%", ".": "%2E", "..": "%2E%2E"}
_UNSPECIAL = {escaped: plain for plain, escaped in _SPECIAL_SEGMENTS.items()}
_ESCAPED_BYTE = re.compile(rb"%([0-9A-F]{2})")


def object_id(ref: ObjectRef) -> str:
    """The claim's partition key: ``{4 hex}#{bucket}/{key}#{identity}``.

    The prefix is a stable hash of the rest, spreading hot keys over partitions.
    """
    rest = f"{ref.bucket}/{ref.key}#{ref.identity}"
    shard = hashlib.sha256(rest.encode("utf-8", "surrogatepass")).hexdigest()[:4]
    return f"{shard}#{rest}"


def escape_segment(segment: str) -> str:
    escaped = _NEEDS_ESCAPE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), segment)
    return _SPECIAL_SEGMENTS.get(escaped, escaped)


def unescape_segment(segment: str) -> str:
    if segment in _UNSPECIAL:
        return _UNSPECIAL[segment]
    # Escapes stand for UTF-8 bytes, so undo them on bytes, then decode once.
    raw = _ESCAPED_BYTE.sub(lambda m: bytes([int(m.group(1), 16)]), segment.encode("utf-8"))
    return raw.decode("utf-8")


def member_name(bucket: str, key: str) -> str:
    """The tar member name of ``key`` in ``bucket``: safe to extract, injective."""
    name = f"{bucket}/{key}"
    # Most names need no escape at all: one scan of the whole name costs a tenth of
    # escaping its segments one by one (which returns them unchanged then).
    if _NEEDS_ESCAPE.search(name) is None:
        edged = f"/{name}/"
        if "//" not in edged and "/./" not in edged and "/../" not in edged:
            return name
    return escaped_member_name(bucket, key)


def escaped_member_name(bucket: str, key: str) -> str:
    """:func:`member_name` segment by segment, without the shortcut."""
    return "/".join(escape_segment(segment) for segment in (bucket, *key.split("/")))


def unescape_member(name: str) -> tuple[str, str]:
    """Inverse of :func:`member_name` (without a version suffix): ``(bucket, key)``."""
    bucket, *segments = name.split("/")
    return unescape_segment(bucket), "/".join(unescape_segment(s) for s in segments)


class MemberNames:
    """Hands out unique member names within one archive."""

    def __init__(self) -> None:
        self._taken: dict[str, int] = {}

    def assign(self, bucket: str, key: str) -> str:
        base = member_name(bucket, key)
        count = self._taken.get(base, 0) + 1
        self._taken[base] = count
        return base if count == 1 else f"{base}%v{count}"


def new_archive_id(now: datetime) -> str:
    """Sortable by time, unique by a random suffix."""
    import uuid

    return f"{_utc(now):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex}"


def archive_key(prefix: str, created_at: datetime, archive_id: str, extension: str) -> str:
    """``{prefix}/{YYYY}/{MM}/{DD}/{HH}/{archive_id}{extension}``, in UTC; ``created_at`` must be aware."""
    utc = _utc(created_at)
    path = f"{utc:%Y/%m/%d/%H}/{archive_id}{extension}"
    return f"{prefix}/{path}" if prefix else path


def _utc(moment: datetime) -> datetime:
    # astimezone() would take a naive datetime as the machine's local time: a utcnow() value
    # would then be shifted by the zone's offset. Refuse the ambiguity instead.
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a timezone-aware datetime is required (got a naive one)")
    return moment.astimezone(UTC)
