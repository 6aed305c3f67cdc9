"""parse_body over every accepted shape (docs/contract.md §4) and the ways a body is wrong."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote_plus

import pytest

from aggregator.base.errors import MalformedMessage, PermanentError
from aggregator.base.events import ObjectRef, ParsedMessage, parse_body

from .bodies import BUCKET, TEST_EVENT, eventbridge, notification, removed_record, s3_record, sns_envelope


def one(body: str | bytes) -> ObjectRef:
    parsed = parse_body(body)
    assert parsed.ignored == 0
    (ref,) = parsed.objects
    return ref


def malformed(body: Any) -> str:
    with pytest.raises(MalformedMessage) as info:
        parse_body(body)
    return str(info.value)


# --- S3 notifications ------------------------------------------------------------------


def test_single_record() -> None:
    ref = one(notification(s3_record("incoming/2024/05/06/reading-0001.json")))
    assert ref == ObjectRef(
        bucket=BUCKET,
        key="incoming/2024/05/06/reading-0001.json",
        size=1024,
        etag="d41d8cd98f00b204e9800998ecf8427e",
        version_id="096fKKXTRTtl3on89fVO.nfljtsv6qko",
        sequencer="0055AED6DCD90281E5",
    )


@pytest.mark.parametrize(
    "event_name",
    ["ObjectCreated:Put", "ObjectCreated:Post", "ObjectCreated:Copy", "ObjectCreated:CompleteMultipartUpload"],
)
def test_every_created_event_is_archived(event_name: str) -> None:
    assert one(notification(s3_record("k", event_name=event_name))).key == "k"


def test_many_records_keep_their_order() -> None:
    records = [s3_record(f"batch/part-{i:03d}.csv", size=i, sequencer=f"0065{i:014X}") for i in range(7)]
    parsed = parse_body(notification(*records))
    assert parsed.ignored == 0
    assert [r.key for r in parsed.objects] == [f"batch/part-{i:03d}.csv" for i in range(7)]
    assert [r.size for r in parsed.objects] == list(range(7))


def test_ten_messages_of_several_records() -> None:
    """A full SQS batch (10 messages), each naming several objects, some of them removals."""
    bodies = []
    for m in range(10):
        records = [s3_record(quote_plus(f"tenant {m}/obj {r}+.bin", safe="/"), bucket=f"bucket-{m % 3}",
                             version_id=f"v{m}.{r}", size=m * 100 + r) for r in range(m % 4 + 2)]
        records.append(removed_record(f"tenant+{m}/gone"))
        bodies.append(notification(*records))
    results = [parse_body(body) for body in bodies]
    for m, parsed in enumerate(results):
        assert parsed.ignored == 1
        assert [(r.bucket, r.key, r.version_id, r.size) for r in parsed.objects] == [
            (f"bucket-{m % 3}", f"tenant {m}/obj {r}+.bin", f"v{m}.{r}", m * 100 + r) for r in range(m % 4 + 2)
        ]
    assert sum(len(p.objects) for p in results) == sum(m % 4 + 2 for m in range(10))


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("reports/annual+report+2024.pdf", "reports/annual report 2024.pdf"),  # space is +
        ("math/1%2B1%3D2.txt", "math/1+1=2.txt"),  # a literal + is %2B
        ("discount/50%25+off.txt", "discount/50% off.txt"),  # % is %25
        ("pct/%2525", "pct/%25"),  # decoded exactly once
        ("photos/r%C3%A9sum%C3%A9+%E6%97%A5%E6%9C%AC%F0%9F%93%B7.jpg", "photos/résumé 日本📷.jpg"),
        ("a/%2Fslash/..%2F..%2Fetc", "a//slash/../../etc"),  # decoded faithfully; names.py makes it safe
        ("q%3Fx%3D1%26y%23frag", "q?x=1&y#frag"),
        ("tab%09nul%00", "tab\tnul\x00"),
        ("trailing/", "trailing/"),
        ("%20lead+and+trail%20", " lead and trail "),
    ],
)
def test_s3_keys_are_url_decoded_with_plus_for_space(encoded: str, decoded: str) -> None:
    assert one(notification(s3_record(encoded))).key == decoded


def test_key_of_exactly_1024_bytes() -> None:
    key = "é" * 512  # 2 bytes each in UTF-8
    assert len(key.encode()) == 1024
    ref = one(notification(s3_record(quote_plus(key))))
    assert ref.key == key


def test_ascii_key_of_1024_bytes_and_one_more() -> None:
    key = "k/" + "x" * 1022
    assert one(notification(s3_record(key))).key == key
    assert "1,024" in malformed(notification(s3_record(key + "y")))


def test_encoded_key_may_be_longer_than_1024_characters() -> None:
    """The limit is on the decoded key: its encoded form is up to 3 times longer."""
    key = "日" * 341  # 1,023 bytes
    encoded = quote_plus(key)
    assert len(encoded) > 3000
    assert one(notification(s3_record(encoded))).key == key


def test_key_too_long_after_decoding() -> None:
    assert "1,024" in malformed(notification(s3_record(quote_plus("日" * 342))))


@pytest.mark.parametrize(
    "encoded",
    [
        "bad%FF",  # not a UTF-8 lead byte
        "cut%C3",  # truncated sequence
        "over%C0%AF",  # overlong encoding of /
        "surrogate%ED%A0%80",  # an encoded UTF-16 surrogate
        "mixed%E6%97x",
    ],
)
def test_invalid_utf8_escapes_are_malformed(encoded: str) -> None:
    assert "UTF-8" in malformed(notification(s3_record(encoded)))


@pytest.mark.parametrize("raw", ["lone\ud800", "low\udc80"])
def test_lone_surrogates_in_keys_are_malformed(raw: str) -> None:
    """JSON can carry \\ud800; no S3 key can: keys are UTF-8."""
    body = notification(s3_record(raw))
    assert "\\ud800" in body or "\\udc80" in body
    malformed(body)
    malformed(json.dumps(eventbridge(raw)))


def test_empty_key_is_malformed() -> None:
    malformed(notification(s3_record("")))


def test_etag_quotes_are_stripped() -> None:
    assert one(notification(s3_record("k", etag='"9b2cf535f27731c974343645a3985328"'))).etag == (
        "9b2cf535f27731c974343645a3985328"
    )
    assert one(notification(s3_record("k", etag='"3858f62230ac3c915f300c664312c11f-9"'))).etag == (
        "3858f62230ac3c915f300c664312c11f-9"
    )


def test_unversioned_bucket_record() -> None:
    ref = one(notification(s3_record("k", version_id=None)))
    assert ref.version_id is None
    assert ref.etag == "d41d8cd98f00b204e9800998ecf8427e"
    assert ref.sequencer == "0055AED6DCD90281E5"


def test_null_version_is_no_version() -> None:
    """A bucket with versioning suspended names the version "null": pin it by eTag instead."""
    assert one(notification(s3_record("k", version_id="null"))).version_id is None
    assert one(notification(s3_record("k", version_id=""))).version_id is None


def test_version_id_alone_is_enough() -> None:
    ref = one(notification(s3_record("k", etag=None, sequencer=None)))
    assert (ref.version_id, ref.etag) == ("096fKKXTRTtl3on89fVO.nfljtsv6qko", None)


@pytest.mark.parametrize("etag", [None, "", '""'])
def test_neither_version_nor_etag_is_malformed(etag: str | None) -> None:
    assert "version" in malformed(notification(s3_record("k", etag=etag, version_id=None)))


def test_size_is_optional() -> None:
    assert one(notification(s3_record("k", size=None))).size is None
    assert one(notification(s3_record("k", size=0))).size == 0


# --- identity ----------------------------------------------------------------------------


def test_identity_prefers_the_version_id() -> None:
    a = one(notification(s3_record("k", version_id="v1", etag="e1", sequencer="01")))
    b = one(notification(s3_record("k", version_id="v1", etag="e1", sequencer="02")))
    c = one(notification(s3_record("k", version_id="v2", etag="e1", sequencer="01")))
    assert a.identity == b.identity == "v:v1"  # a redelivery
    assert c.identity != a.identity  # a new version, even with the same bytes


def test_identity_without_version_is_etag_and_sequencer() -> None:
    first = one(notification(s3_record("k", version_id=None, etag='"e1"', sequencer="0055AED6DCD90281E5")))
    again = one(notification(s3_record("k", version_id=None, etag="e1", sequencer="0055AED6DCD90281E5")))
    reupload = one(notification(s3_record("k", version_id=None, etag="e1", sequencer="0055AED6DCD90281F0")))
    other_bytes = one(notification(s3_record("k", version_id=None, etag="e2", sequencer="0055AED6DCD90281E5")))
    assert first.identity == again.identity == "e:e1@0055AED6DCD90281E5"
    assert len({first.identity, reupload.identity, other_bytes.identity}) == 3


def test_identity_kinds_never_collide() -> None:
    versioned = ObjectRef(bucket="b", key="k", size=1, etag=None, version_id="e:x@1", sequencer=None)
    unversioned = ObjectRef(bucket="b", key="k", size=1, etag="x", version_id=None, sequencer="1")
    assert versioned.identity != unversioned.identity


def test_eventbridge_and_notification_agree_on_identity() -> None:
    """The same upload announced both ways is one object, not two."""
    via_s3 = one(notification(s3_record("k", etag="abc", version_id="v9", sequencer="0A")))
    via_eb = one(json.dumps(eventbridge("k", etag="abc", version_id="v9", sequencer="0A")))
    assert (via_s3.bucket, via_s3.key, via_s3.identity) == (via_eb.bucket, via_eb.key, via_eb.identity)


# --- ignored records and events ------------------------------------------------------------


def test_s3_test_event_is_ignored() -> None:
    assert parse_body(TEST_EVENT) == ParsedMessage(objects=(), ignored=1)


@pytest.mark.parametrize(
    "event_name",
    ["ObjectRemoved:Delete", "ObjectRemoved:DeleteMarkerCreated", "ObjectRestore:Completed",
     "LifecycleExpiration:Delete", "ObjectTagging:Put", "Replication:OperationFailedReplication"],
)
def test_other_event_types_are_ignored(event_name: str) -> None:
    assert parse_body(notification(removed_record("k", event_name=event_name))) == ParsedMessage((), 1)


def test_removed_and_created_in_one_message() -> None:
    parsed = parse_body(notification(removed_record("a"), s3_record("b"), removed_record("c"), s3_record("d")))
    assert [r.key for r in parsed.objects] == ["b", "d"]
    assert parsed.ignored == 2


def test_ignored_records_are_not_validated_further() -> None:
    """A deletion carries no eTag or size; it must not be rejected for lacking them."""
    record = removed_record("k")
    record["s3"]["object"] = {"key": "k", "sequencer": "01"}
    assert parse_body(notification(record)).ignored == 1


# --- SNS ---------------------------------------------------------------------------------


def test_sns_envelope_with_a_notification() -> None:
    body = sns_envelope(notification(s3_record("via+sns/%C3%A9t%C3%A9.txt"), removed_record("x")))
    parsed = parse_body(body)
    assert [r.key for r in parsed.objects] == ["via sns/été.txt"]
    assert parsed.ignored == 1


def test_sns_envelope_with_a_test_event() -> None:
    assert parse_body(sns_envelope(TEST_EVENT)) == ParsedMessage(objects=(), ignored=1)


def test_sns_envelope_with_an_eventbridge_event() -> None:
    assert one(sns_envelope(json.dumps(eventbridge("a+b")))).key == "a+b"


def test_sns_envelope_nested_twice_is_malformed() -> None:
    malformed(sns_envelope(sns_envelope(notification(s3_record("k")))))


@pytest.mark.parametrize("message", [None, 42, {"Records": []}, ["x"]])
def test_sns_message_must_be_a_string(message: Any) -> None:
    envelope = json.loads(sns_envelope(""))
    envelope["Message"] = message
    malformed(json.dumps(envelope))


@pytest.mark.parametrize("message", ["", "not json", "{", "[]", '"text"', "{}", '{"Records": []}'])
def test_sns_message_must_be_an_accepted_shape(message: str) -> None:
    malformed(sns_envelope(message))


def test_sns_subscription_confirmation_is_malformed() -> None:
    envelope = json.loads(sns_envelope("You have chosen to subscribe to the topic"))
    envelope["Type"] = "SubscriptionConfirmation"
    malformed(json.dumps(envelope))


# --- EventBridge ---------------------------------------------------------------------------


def test_eventbridge_object_created() -> None:
    ref = one(json.dumps(eventbridge("example-key")))
    assert ref == ObjectRef(
        bucket=BUCKET,
        key="example-key",
        size=5,
        etag="b1946ac92492d2347c6235b4d2611184",
        version_id="IYV3p45BT0ac8hjHg1houSdS1a.Mro8e",
        sequencer="617f08299329d189",
    )


@pytest.mark.parametrize("key", ["a+b%20c", "100%", "%ZZ", "%C3", "with space/日本.txt", "a/../b"])
def test_eventbridge_keys_are_not_decoded(key: str) -> None:
    assert one(json.dumps(eventbridge(key))).key == key


def test_eventbridge_unversioned() -> None:
    ref = one(json.dumps(eventbridge("k", version_id="null")))
    assert ref.version_id is None
    assert ref.identity == "e:b1946ac92492d2347c6235b4d2611184@617f08299329d189"


@pytest.mark.parametrize("detail_type", ["Object Deleted", "Object Restore Completed", "Object Tags Added"])
def test_eventbridge_other_types_are_ignored(detail_type: str) -> None:
    assert parse_body(json.dumps(eventbridge("k", detail_type=detail_type))) == ParsedMessage((), 1)


def test_eventbridge_key_length() -> None:
    assert one(json.dumps(eventbridge("x" * 1024))).key == "x" * 1024
    malformed(json.dumps(eventbridge("x" * 1025)))


@pytest.mark.parametrize("path", [("detail",), ("detail", "bucket"), ("detail", "bucket", "name"),
                                  ("detail", "object"), ("detail", "object", "key")])
def test_eventbridge_missing_fields(path: tuple[str, ...]) -> None:
    event = eventbridge("k")
    *parents, last = path
    container = event
    for name in parents:
        container = container[name]
    del container[last]
    malformed(json.dumps(event))


def test_eventbridge_from_another_source_is_malformed() -> None:
    event = eventbridge("k")
    event["source"] = "aws.ec2"
    malformed(json.dumps(event))


# --- malformed bodies ------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    ["", " ", "not json", "{", '{"Records": [}', "{'Records': []}", "NaNa", "\x00", "\ufeff{}"],
)
def test_non_json_is_malformed(body: str) -> None:
    malformed(body)


@pytest.mark.parametrize("body", ["[]", "[{}]", '"Records"', "42", "-1.5e300", "true", "null", "NaN", "Infinity"])
def test_json_that_is_not_an_object_is_malformed(body: str) -> None:
    malformed(body)


def test_no_body_is_malformed() -> None:
    malformed(None)


@pytest.mark.parametrize("body", [{"Records": []}, 42, ["x"], object()])
def test_values_that_are_not_a_body_are_malformed(body: Any) -> None:
    """A caller handing over an already decoded value gets the typed error, not a TypeError."""
    malformed(body)


@pytest.mark.parametrize("body", ["{}", '{"Type": "Notification"}', '{"source": "aws.s3"}',
                                  '{"Event": "s3:SomethingElse"}', '{"Service": "Amazon S3"}'])
def test_unknown_shapes_are_malformed(body: str) -> None:
    malformed(body)


@pytest.mark.parametrize("records", [[], None, {}, "[]", 1, [None], [[]], ["record"]])
def test_records_must_be_a_non_empty_list_of_objects(records: Any) -> None:
    malformed(json.dumps({"Records": records}))


def _without(record: dict[str, Any], *path: str) -> dict[str, Any]:
    container = record
    for name in path[:-1]:
        container = container[name]
    del container[path[-1]]
    return record


def _replace(record: dict[str, Any], value: Any, *path: str) -> dict[str, Any]:
    container = record
    for name in path[:-1]:
        container = container[name]
    container[path[-1]] = value
    return record


@pytest.mark.parametrize(
    "path",
    [("eventSource",), ("eventName",), ("s3",), ("s3", "bucket"), ("s3", "bucket", "name"), ("s3", "object"),
     ("s3", "object", "key")],
)
def test_missing_fields_are_malformed(path: tuple[str, ...]) -> None:
    malformed(notification(_without(s3_record("k"), *path)))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("eventSource",), "aws:sqs"),
        (("eventSource",), ["aws:s3"]),
        (("eventName",), 7),
        (("eventName",), None),
        (("s3",), "bucket"),
        (("s3", "bucket"), ["b"]),
        (("s3", "bucket", "name"), 5),
        (("s3", "bucket", "name"), ""),
        (("s3", "bucket", "name"), "a/b"),
        (("s3", "bucket", "name"), ".."),
        (("s3", "bucket", "name"), "tab\tbucket"),
        (("s3", "bucket", "name"), "b" * 256),
        (("s3", "object"), []),
        (("s3", "object", "key"), 12),
        (("s3", "object", "key"), None),
        (("s3", "object", "size"), "1024"),
        (("s3", "object", "size"), -1),
        (("s3", "object", "size"), 1.5),
        (("s3", "object", "size"), True),
        (("s3", "object", "eTag"), 12345),
        (("s3", "object", "versionId"), 1),
        (("s3", "object", "versionId"), {"id": "v"}),
        (("s3", "object", "sequencer"), 55),
    ],
)
def test_wrong_types_are_malformed(path: tuple[str, ...], value: Any) -> None:
    malformed(notification(_replace(s3_record("k"), value, *path)))


def test_one_bad_record_fails_the_whole_message() -> None:
    """A message is acknowledged or retried as a whole; half-parsing it would lose the rest."""
    malformed(notification(s3_record("good"), _replace(s3_record("bad"), 5, "s3", "object", "key")))


def test_malformed_is_permanent() -> None:
    with pytest.raises(PermanentError):
        parse_body("nope")


def test_deeply_nested_json_is_malformed() -> None:
    """The decoder's recursion limit must surface as a bad message, not crash the batch."""
    malformed("[" * 100_000 + "]" * 100_000)
    malformed('{"Records": ' + "[" * 100_000 + "]" * 100_000 + "}")
    malformed(sns_envelope("{" * 100_000))


def test_deep_values_inside_a_record_are_malformed() -> None:
    for depth in (10, 500, 900, 980):
        deep = "[" * depth + "]" * depth
        malformed('{"Records": [{"eventSource": ' + deep + "}]}")


def test_error_messages_do_not_echo_the_event() -> None:
    """Messages are logged: they name the problem, never carry (a large part of) the body."""
    secret = "x-amz-security-token-" + "A" * 500
    message = malformed(notification(_replace(s3_record("k"), secret, "eventSource")))
    assert "AAAAAAAAAA" not in message
    assert len(message) < 200


# --- bytes bodies ----------------------------------------------------------------------


def test_utf8_bytes_body_parses_like_text() -> None:
    body = notification(s3_record("caf%C3%A9"))
    assert parse_body(body.encode()) == parse_body(body)


@pytest.mark.parametrize(
    "body",
    [b"", b"\xff\xfe\x00", b"\x80abc", b'{"Records": "\xff"}', b"\xc3\x28", b"\x00\x00\x00\x00", b"garbage",
     bytes(range(256))],
)
def test_undecodable_or_garbage_bytes_are_malformed(body: bytes) -> None:
    malformed(body)


@pytest.mark.parametrize("field", ["eTag", "versionId", "sequencer"])
def test_lone_surrogates_in_version_fields_are_malformed(field: str) -> None:
    assert "Unicode" in malformed(notification(_replace(s3_record("k"), "v\udfff", "s3", "object", field)))
