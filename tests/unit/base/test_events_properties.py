"""Property tests: whatever arrives as a body, parse_body returns a ParsedMessage or raises
MalformedMessage, nothing else; and what it returns is always usable downstream."""

from __future__ import annotations

import copy
import json
from typing import Any
from urllib.parse import quote, quote_plus

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from aggregator.base.errors import MalformedMessage
from aggregator.base.events import ObjectRef, ParsedMessage, parse_body

from .bodies import TEST_EVENT, eventbridge, notification, removed_record, s3_record, sns_envelope

# Lone surrogates included: a JSON body may escape them (\ud800) even though S3 never sends them.
# They, control characters and the URL-encoding metacharacters are rare among all code
# points, so they are drawn on purpose as well.
ANY_CHAR = st.characters(exclude_categories=()) | st.sampled_from(
    ["\ud800", "\udfff", "\x00", "\x1f", "\x7f", "\x85", "%", "+", "/", ".", '"', "\\", "é", "日", "📷", " "]
)
ANY_TEXT = st.text(ANY_CHAR, max_size=40)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(ANY_TEXT, children, max_size=5),
    max_leaves=25,
)

# Values that look almost right: the parser's own vocabulary in the wrong places.
near_miss: st.SearchStrategy[Any] = st.sampled_from([
    "aws:s3", "ObjectCreated:Put", "ObjectRemoved:Delete", "Notification", "s3:TestEvent", "aws.s3",
    "Object Created", "Object Deleted", "Records", "null", "", '""', "%FF", "a+b", "/", "..", 0, -1, 2**70,
    True, [], {}, None, 1.5,
])


# Nesting past the decoder's recursion limit, bare or inside an envelope.
deep_json = st.builds(
    lambda depth, opener, template: template.replace("@", opener * depth),
    st.integers(500, 3000),
    st.sampled_from(["[", '{"a":', '{"Records":']),
    st.sampled_from(["@", '{"Records": [@]}', '{"Type": "Notification", "Message": "@"}']),
)


def check(parsed: ParsedMessage) -> None:
    """Everything downstream (claims, names, manifest) relies on these."""
    assert isinstance(parsed, ParsedMessage)
    assert isinstance(parsed.objects, tuple)
    assert isinstance(parsed.ignored, int)
    assert parsed.ignored >= 0
    assert parsed.ignored + len(parsed.objects) >= 1  # every accepted body names at least one event
    for ref in parsed.objects:
        assert isinstance(ref, ObjectRef)
        assert isinstance(ref.bucket, str)
        assert ref.bucket
        assert "/" not in ref.bucket
        assert ref.bucket not in (".", "..")
        assert ref.bucket.isprintable()
        assert isinstance(ref.key, str)
        assert ref.key
        assert len(ref.key.encode("utf-8")) <= 1024
        assert ref.version_id or ref.etag
        for text in (ref.etag, ref.version_id, ref.sequencer):
            assert text is None or isinstance(text, str)
            if text is not None:
                text.encode("utf-8")
        if ref.etag is not None:
            assert not ref.etag.startswith('"')
            assert not ref.etag.endswith('"')
        assert ref.size is None or (type(ref.size) is int and ref.size >= 0)
        assert isinstance(ref.identity, str)


def parses_or_is_malformed(body: Any) -> None:
    try:
        parsed = parse_body(body)
    except MalformedMessage:
        return
    check(parsed)


@hsettings(deadline=None, max_examples=150)
@given(json_values)
def test_any_json_value(value: Any) -> None:
    parses_or_is_malformed(json.dumps(value))
    parses_or_is_malformed(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))


@hsettings(deadline=None, max_examples=300)
@given(st.text(ANY_CHAR) | deep_json)
def test_any_text(body: str) -> None:
    parses_or_is_malformed(body)


@hsettings(deadline=None, max_examples=300)
@given(st.binary())
def test_any_bytes(body: bytes) -> None:
    parses_or_is_malformed(body)


@hsettings(deadline=None, max_examples=100)
@given(json_values)
def test_any_json_value_wrapped_as_the_known_shapes(value: Any) -> None:
    """Arbitrary values one level inside each envelope, where the field checks live."""
    parses_or_is_malformed(json.dumps({"Records": value}))
    parses_or_is_malformed(json.dumps({"Records": [value]}))
    parses_or_is_malformed(sns_envelope(json.dumps(value)))
    parses_or_is_malformed(json.dumps({"source": "aws.s3", "detail-type": "Object Created", "detail": value}))


def _paths(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(document, dict):
        for name, child in document.items():
            found += _paths(child, (*prefix, name))
    elif isinstance(document, list):
        for index, child in enumerate(document):
            found += _paths(child, (*prefix, index))
    return found


def _mutate(document: Any, path: tuple[Any, ...], value: Any, *, delete: bool) -> Any:
    if not path:
        return value
    container = document
    for step in path[:-1]:
        container = container[step]
    if delete:
        del container[path[-1]]
    else:
        container[path[-1]] = value
    return document


VALID_DOCUMENTS = [
    json.loads(notification(s3_record("a+b/%C3%A9t%C3%A9"), removed_record("gone"), s3_record("c", version_id=None))),
    json.loads(TEST_EVENT),
    eventbridge("x/y z"),
    eventbridge("x", detail_type="Object Deleted"),
    json.loads(sns_envelope(notification(s3_record("k")))),
]


@hsettings(deadline=None, max_examples=250, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_valid_events(data: st.DataObject) -> None:
    """Start from a valid body and break it a few fields at a time."""
    document = copy.deepcopy(data.draw(st.sampled_from(VALID_DOCUMENTS)))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(document)))
        delete = bool(path) and data.draw(st.booleans())
        value = data.draw(near_miss | json_values)
        document = _mutate(document, path, value, delete=delete)
    parses_or_is_malformed(json.dumps(document))


# Keys S3 could hold: valid Unicode, 1 to 1,024 bytes of UTF-8.
s3_keys = st.text(st.characters(codec="utf-8"), min_size=1, max_size=300).filter(
    lambda k: len(k.encode("utf-8")) <= 1024
)


@hsettings(deadline=None, max_examples=300)
@given(s3_keys)
def test_s3_notification_keys_round_trip(key: str) -> None:
    """However S3 encodes a key (+ for space, %XX for the rest), the parser recovers it exactly."""
    for encoded in (quote_plus(key, safe="/"), quote_plus(key, safe=""), quote(key, safe="/").replace("%20", "+")):
        (ref,) = parse_body(notification(s3_record(encoded))).objects
        assert ref.key == key


@hsettings(deadline=None, max_examples=300)
@given(s3_keys)
def test_eventbridge_keys_are_taken_verbatim(key: str) -> None:
    (ref,) = parse_body(json.dumps(eventbridge(key))).objects
    assert ref.key == key
