"""Turns one SQS message body into the objects it names.

Accepted bodies (docs/contract.md §4):

* an S3 event notification ``{"Records": [...]}``; keys are URL-encoded with ``+`` for
  space, exactly as S3 sends them, so they are decoded with ``unquote_plus``;
* the ``s3:TestEvent`` S3 sends when a notification is configured;
* an SNS envelope whose ``Message`` is one of the above;
* an EventBridge ``Object Created`` event (keys are *not* URL-encoded there).

Object-created records become :class:`ObjectRef`; other event types are counted as
ignored. Anything else raises :class:`MalformedMessage`, which fails that message alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

from aggregator.base.errors import MalformedMessage


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """One version of one object, as an event names it."""

    bucket: str
    key: str  # decoded
    size: int | None
    etag: str | None  # without quotes
    version_id: str | None
    sequencer: str | None
    # When S3 says the object was created (the record's eventTime): how old the event is.
    # Not part of the identity: a redelivery or a backfill names the same object.
    event_time: datetime | None = field(default=None, compare=False)

    @property
    def identity(self) -> str:
        """The version identity: versionId, else the eTag with the event's sequencer.

        A redelivered event carries the same identity; a new upload of identical bytes
        has the same eTag but a later sequencer, so it is new data.
        """
        if self.version_id:
            return f"v:{self.version_id}"
        return f"e:{self.etag}@{self.sequencer or ''}"


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    objects: tuple[ObjectRef, ...]
    ignored: int  # records acknowledged without archiving (tests, deletions, ...)


def parse_body(body: str | bytes | None) -> ParsedMessage:
    """Parse one SQS body; raise :class:`MalformedMessage` for anything unrecognised."""
    if body is None:
        raise MalformedMessage("message has no body")
    if not isinstance(body, str | bytes | bytearray):
        raise MalformedMessage(f"body is a {type(body).__name__}, not text")
    return _parse_document(_loads(body, "body"), depth=0)


def _loads(text: str | bytes | bytearray, what: str) -> Any:
    try:
        return json.loads(text)
    # RecursionError: nesting deeper than the decoder's limit is a bad body, not a crash.
    except (ValueError, RecursionError) as e:
        raise MalformedMessage(f"{what} is not JSON: {e.__class__.__name__}") from e


def _parse_document(document: Any, *, depth: int) -> ParsedMessage:
    if not isinstance(document, dict):
        raise MalformedMessage(f"body is a JSON {type(document).__name__}, not an object")
    if "Records" in document:
        return _parse_s3_notification(document["Records"])
    if document.get("Event") == "s3:TestEvent":
        return ParsedMessage(objects=(), ignored=1)
    if document.get("Type") == "Notification" and "Message" in document:
        if depth > 0:
            raise MalformedMessage("SNS envelope nested in another envelope")
        message = document["Message"]
        if not isinstance(message, str):
            raise MalformedMessage("SNS envelope's Message is not a string")
        return _parse_document(_loads(message, "SNS envelope's Message"), depth=depth + 1)
    if document.get("source") == "aws.s3" and "detail-type" in document:
        return _parse_eventbridge(document)
    raise MalformedMessage("body is not an S3, SNS or EventBridge event")


def _parse_s3_notification(records: Any) -> ParsedMessage:
    if not isinstance(records, list) or not records:
        raise MalformedMessage("Records is not a non-empty list")
    objects: list[ObjectRef] = []
    ignored = 0
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise MalformedMessage(f"record {index} is not an object")
        if record.get("eventSource") != "aws:s3":
            # The value is not echoed: the message is logged, and raw events never are.
            raise MalformedMessage(f"record {index}: eventSource is not aws:s3")
        event_name = _text(record, "eventName", index)
        if not event_name.startswith("ObjectCreated:"):
            ignored += 1
            continue
        s3 = _field(record, "s3", dict, index)
        bucket = _bucket_name(_text(_field(s3, "bucket", dict, index), "name", index), index)
        obj = _field(s3, "object", dict, index)
        raw_key = _text(obj, "key", index)
        try:
            key = unquote_plus(raw_key, errors="strict")
        except UnicodeDecodeError as e:
            raise MalformedMessage(f"record {index}: key is not valid URL-encoded UTF-8") from e
        ref = _object_ref(bucket, key, obj, index, etag_field="eTag", version_field="versionId",
                          event_time=_time(record.get("eventTime")))
        objects.append(ref)
    return ParsedMessage(objects=tuple(objects), ignored=ignored)


def _parse_eventbridge(document: dict[str, Any]) -> ParsedMessage:
    if document.get("detail-type") != "Object Created":
        return ParsedMessage(objects=(), ignored=1)
    detail = _field(document, "detail", dict, 0)
    bucket = _bucket_name(_text(_field(detail, "bucket", dict, 0), "name", 0), 0)
    obj = _field(detail, "object", dict, 0)
    key = _text(obj, "key", 0)
    ref = _object_ref(bucket, key, obj, 0, etag_field="etag", version_field="version-id",
                      event_time=_time(document.get("time")))
    return ParsedMessage(objects=(ref,), ignored=0)


def _time(value: Any) -> datetime | None:
    """An event's RFC 3339 timestamp, or None when absent or unreadable (no age check then)."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _object_ref(bucket: str, key: str, obj: dict[str, Any], index: int, *, etag_field: str,
                version_field: str, event_time: datetime | None = None) -> ObjectRef:
    if not key:
        raise MalformedMessage(f"record {index}: object key is empty")
    if not _is_unicode(key):
        raise MalformedMessage(f"record {index}: object key is not valid Unicode")
    if len(key.encode("utf-8")) > 1024:
        raise MalformedMessage(f"record {index}: object key is longer than S3's 1,024 bytes")
    size = obj.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise MalformedMessage(f"record {index}: size is not a non-negative integer")
    etag = _optional_text(obj, etag_field, index)
    etag = etag.strip('"') if etag else None
    version_id = _optional_text(obj, version_field, index) or None
    if version_id == "null":  # unversioned bucket as EventBridge spells it
        version_id = None
    sequencer = _optional_text(obj, "sequencer", index)
    if not version_id and not etag:
        raise MalformedMessage(f"record {index}: neither versionId nor eTag: the version cannot be pinned")
    return ObjectRef(bucket=bucket, key=key, size=size, etag=etag, version_id=version_id, sequencer=sequencer,
                     event_time=event_time)


def _bucket_name(name: str, index: int) -> str:
    if not name or "/" in name or name in (".", "..") or not name.isprintable() or len(name) > 63:
        raise MalformedMessage(f"record {index}: invalid bucket name")
    return name


def _field(container: dict[str, Any], name: str, kind: type, index: int) -> Any:
    value = container.get(name)
    if not isinstance(value, kind):
        raise MalformedMessage(f"record {index}: {name} is missing or not a {kind.__name__}")
    return value


def _text(container: dict[str, Any], name: str, index: int) -> str:
    value: str = _field(container, name, str, index)
    return value


def _optional_text(container: dict[str, Any], name: str, index: int) -> str | None:
    value = container.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedMessage(f"record {index}: {name} is not a string")
    if not _is_unicode(value):
        raise MalformedMessage(f"record {index}: {name} is not valid Unicode")
    return value


def _is_unicode(text: str) -> bool:
    """False for a lone surrogate (JSON can escape one; S3 and DynamoDB take only UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
