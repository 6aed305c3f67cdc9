"""GetObject rules: URLs, version pins, response heads, status meanings, signatures."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from urllib.parse import quote, unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.base.events import ObjectRef
from aggregator.base.objects import ObjectHead
from aggregator.fetch import protocol
from aggregator.fetch.protocol import Outcome
from aggregator.fetch.source import SourceConfig
from aggregator.sdk.credentials import CredentialSource, FrozenCredentials
from aggregator.sdk.endpoints import Origin, static_bucket_endpoint

HOSTILE_KEYS = [
    "plain.txt",
    "with space and+plus",
    "percent%20literal%",
    "unicode/ü/日本語/🙂",
    "double//slash/",
    "/leading",
    "dots/./and/../segments",
    "query?and#fragment&amp=1",
    "tilde~star*quote'paren()",
    "x" * 1024,
    "é" * 512,  # 1,024 bytes in UTF-8
]


def tgt(url: str, r: ObjectRef, *, virtual: bool = False) -> protocol.GetTarget:
    return protocol.target(static_bucket_endpoint(url, r.bucket, region="eu-west-2", virtual=virtual), r)


def ref(key: str = "k", *, version_id: str | None = None, etag: str | None = "abc") -> ObjectRef:
    return ObjectRef(bucket="src-bucket", key=key, size=None, etag=etag, version_id=version_id, sequencer="01")


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_path_style_target_round_trips_every_key(key: str) -> None:
    target = tgt("http://127.0.0.1:9000", ref(key))
    assert target.origin == Origin(False, "127.0.0.1", 9000)
    assert target.host_header == "127.0.0.1:9000"
    assert target.path.startswith("/src-bucket/")
    encoded = target.path.removeprefix("/src-bucket/")
    assert unquote(encoded) == key
    # Only unreserved characters and "/" travel unencoded: nothing a server or the signer
    # could normalise ("+" as space, "%" escapes, "?" starting a query).
    assert set(encoded) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~/%")


@settings(max_examples=500, deadline=None)
@given(st.text(st.characters(codec="utf-8"), max_size=40) | st.text("az09_.~/-%+ ", max_size=20))
def test_keys_with_nothing_to_encode_skip_quoting_and_agree_with_it(key: str) -> None:
    path = tgt("http://h", ref(key), virtual=False).path
    assert path == "/src-bucket/" + quote(key.encode("utf-8", "surrogatepass"), safe="/~")


def test_key_segments_are_kept_as_they_are() -> None:
    target = tgt("http://h", ref("a//b/./c/../d"), virtual=False)
    assert target.path == "/src-bucket/a//b/./c/../d"
    assert tgt("http://h", ref("a b+c%"), virtual=False).path == "/src-bucket/a%20b%2Bc%25"


def test_virtual_style_puts_the_bucket_in_the_host() -> None:
    target = tgt("https://s3.eu-west-2.amazonaws.com", ref("a/b"), virtual=True)
    assert target.origin == Origin(True, "src-bucket.s3.eu-west-2.amazonaws.com", 443)
    assert target.host_header == "src-bucket.s3.eu-west-2.amazonaws.com"  # default port left out
    assert target.path == "/a/b"


def test_endpoint_with_path_prefix_and_default_ports() -> None:
    target = tgt("https://gateway.example/s3/", ref("k"))
    assert target.origin == Origin(True, "gateway.example", 443)
    assert target.path == "/s3/src-bucket/k"
    assert tgt("http://h:80", ref("k")).host_header == "h"
    assert tgt("http://[::1]:9000", ref("k")).host_header == "[::1]:9000"


def test_version_id_pins_with_the_query_parameter_and_no_if_match() -> None:
    pinned = ref("k", version_id="3HL4kqtJ+rmSp/Xd3==", etag="abc")
    target = tgt("http://h", pinned, virtual=False)
    assert target.path == "/src-bucket/k?versionId=3HL4kqtJ%2BrmSp%2FXd3%3D%3D"
    headers = dict(protocol.request_headers(pinned, target))
    assert "If-Match" not in headers
    assert headers["Host"] == "h"


def test_etag_pins_with_if_match_when_there_is_no_version_id() -> None:
    unversioned = ref("k", version_id=None, etag="d41d8cd98f00b204e9800998ecf8427e")
    target = tgt("http://h", unversioned, virtual=False)
    assert "versionId" not in target.path
    assert dict(protocol.request_headers(unversioned, target))["If-Match"] == '"d41d8cd98f00b204e9800998ecf8427e"'


def test_a_resumed_read_adds_range_and_keeps_the_pin() -> None:
    pinned = ref("k", version_id="v1")
    target = tgt("http://h", pinned, virtual=False)
    headers = dict(protocol.request_headers(pinned, target, offset=1000, etag="e1"))
    assert headers["Range"] == "bytes=1000-"
    assert headers["If-Match"] == '"e1"'
    assert "versionId=v1" in target.path


@pytest.mark.parametrize(("status", "code", "outcome"), [
    (200, "", Outcome.OK),
    (206, "", Outcome.OK),
    (404, "NoSuchKey", Outcome.MISSING),
    (404, "NoSuchVersion", Outcome.MISSING),
    (404, "NoSuchBucket", Outcome.MISSING),
    (412, "PreconditionFailed", Outcome.MISSING),
    (400, "InvalidArgument", Outcome.MISSING),
    (400, "ExpiredToken", Outcome.FAIL),
    (400, "RequestTimeout", Outcome.RETRY),
    (403, "AccessDenied", Outcome.FAIL),
    (301, "PermanentRedirect", Outcome.FAIL),
    (429, "", Outcome.THROTTLED),
    (503, "SlowDown", Outcome.THROTTLED),
    (500, "InternalError", Outcome.RETRY),
    (502, "", Outcome.RETRY),
    (504, "", Outcome.RETRY),
    (408, "", Outcome.RETRY),
])
def test_status_mapping(status: int, code: str, outcome: Outcome) -> None:
    body = f"<Error><Code>{code}</Code></Error>".encode() if code else b""
    assert protocol.classify(status, body)[0] is outcome


def test_head_is_parsed_into_aware_utc_and_unquoted_etag() -> None:
    head = protocol.parse_head([
        ("Content-Length", "8192"), ("Last-Modified", "Fri, 02 Jan 2026 03:04:05 GMT"),
        ("ETag", '"0123abcd"'), ("x-amz-version-id", "v7"),
    ])
    assert head == ObjectHead(size=8192, last_modified=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
                              etag="0123abcd", version_id="v7")
    assert head.last_modified.utcoffset() is not None
    unversioned = protocol.parse_head([("content-length", "0"), ("last-modified", "Fri, 02 Jan 2026 03:04:05 GMT"),
                                       ("etag", '"e"'), ("x-amz-version-id", "null")])
    assert unversioned.version_id is None


def test_head_without_length_is_a_bad_response() -> None:
    with pytest.raises(protocol.BadResponse):
        protocol.parse_head([("Last-Modified", "Fri, 02 Jan 2026 03:04:05 GMT")])


def test_pin_check_catches_a_server_that_ignored_the_pin() -> None:
    head = ObjectHead(size=1, last_modified=datetime(2026, 1, 1, tzinfo=UTC), etag="other", version_id="v2")
    assert protocol.check_pin(ref("k", version_id="v1"), head)
    assert protocol.check_pin(ref("k", version_id=None, etag="abc"), head)
    same = ObjectHead(size=1, last_modified=datetime(2026, 1, 1, tzinfo=UTC), etag="abc", version_id=None)
    assert protocol.check_pin(ref("k", version_id=None, etag="abc"), same) is None


def test_content_range() -> None:
    assert protocol.parse_content_range([("Content-Range", "bytes 100-199/200")]) == (100, 200)
    with pytest.raises(protocol.BadResponse):
        protocol.parse_content_range([("Content-Range", "bytes */200")])


@pytest.mark.parametrize("key", HOSTILE_KEYS)
@pytest.mark.parametrize("version_id", [None, "3HL4kqtJ+rmSp/Xd3=="])
def test_crt_signature_matches_botocores_signer(key: str, version_id: str | None,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The CRT signs exactly what botocore's S3SigV4Auth signs for the same request."""
    import botocore.auth
    from awscrt import auth, http
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    source = SourceConfig("http://127.0.0.1:9000", "eu-west-2", "AKID", "SECRET", "TOKEN")
    target = tgt(source.endpoint_url, ref(key, version_id=version_id))
    headers = protocol.request_headers(ref(key, version_id=version_id), target)

    from aggregator.fetch.transport import signing_config

    signing = signing_config(FrozenCredentials("AKID", "SECRET", "TOKEN"), "eu-west-2").replace(date=when)
    crt_request = http.HttpRequest("GET", target.path, http.HttpHeaders(headers))
    auth.aws_sign_request(crt_request, signing).result()

    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: when.replace(tzinfo=None))
    boto_request = AWSRequest(method="GET", url=source.endpoint_url + target.path,
                              headers={k: v for k, v in headers if k != "Host"})
    botocore.auth.S3SigV4Auth(Credentials("AKID", "SECRET", "TOKEN"), "s3", "eu-west-2").add_auth(boto_request)
    assert dict(crt_request.headers)["Authorization"] == boto_request.headers["Authorization"]


def test_source_config_validates_and_hides_secrets() -> None:
    from aggregator.base.errors import ConfigError

    source = SourceConfig("http://127.0.0.1:1", "eu-west-2", "AKID", "SECRET", "TOKEN")
    assert "SECRET" not in repr(source) and "TOKEN" not in repr(source)
    with pytest.raises(ConfigError):
        SourceConfig("ftp://x", "eu-west-2", "a", "b", None)
    with pytest.raises(ConfigError):
        SourceConfig("http://x", "eu-west-2", "a", "b", None, addressing_style="auto")


@settings(max_examples=300, deadline=None)
@given(moment=st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31)))
def test_http_dates_read_like_the_standard_library(moment: datetime) -> None:
    text = format_datetime(moment.replace(microsecond=0, tzinfo=UTC), usegmt=True)
    assert protocol.http_date(text) == parsedate_to_datetime(text)


@pytest.mark.parametrize("text", ["Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994",
                                  "Tue, 04 Mar 2025 05:06:07 +0000", "Thu, 26 Nov 26 15:13:35 GMT"])
def test_other_http_date_forms_fall_back_to_the_standard_library(text: str) -> None:
    assert protocol.http_date(text).replace(tzinfo=None) == parsedate_to_datetime(text).replace(tzinfo=None)


@pytest.mark.parametrize("text", ["Thu, 31 Nov 2026 15:13:35 GMT", "Thu, 26 Nov 2026 25:13:35 GMT", "", "soon"])
def test_impossible_http_dates_are_refused(text: str) -> None:
    with pytest.raises((ValueError, TypeError, IndexError)):
        protocol.http_date(text)


def test_signing_configs_are_rebuilt_once_a_minute_old_so_x_amz_date_follows_the_clock() -> None:
    from aggregator.fetch.transport import SIGNING_CONFIG_MAX_AGE, SigningConfigs

    now = [1000.0]
    configs = SigningConfigs(FrozenCredentials("AKID", "SECRET"), clock=lambda: now[0])
    first = configs.current("eu-west-2")
    now[0] += SIGNING_CONFIG_MAX_AGE - 1
    assert configs.current("eu-west-2") is first  # one config for many requests: building one costs
    now[0] += 1
    second = configs.current("eu-west-2")
    assert second is not first and second.date >= first.date
    assert configs.current("eu-west-2") is second
    assert configs.current("us-east-1").region == "us-east-1"  # one per signing region


class RotatingCredentials:
    """A credential source whose keys change when told to (a session token renewed)."""

    def __init__(self) -> None:
        self.generation = 0
        self.reads = 0

    def get_frozen_credentials(self) -> FrozenCredentials:
        self.reads += 1
        return FrozenCredentials(f"AKID{self.generation}", f"SECRET{self.generation}", f"TOKEN{self.generation}")


def _signed_key(config: object) -> str:
    from awscrt import auth, http

    request = http.HttpRequest("GET", "/b/k", http.HttpHeaders([("Host", "h")]))
    auth.aws_sign_request(request, config).result()  # type: ignore[arg-type]
    return dict(request.headers)["Authorization"].split("Credential=")[1].split("/")[0]


def test_credentials_are_re_read_while_signing_so_a_rotation_reaches_the_next_requests() -> None:
    from aggregator.fetch.transport import SigningConfigs

    now = [1000.0]
    credentials = RotatingCredentials()
    source: CredentialSource = credentials
    configs = SigningConfigs(source, recheck=1.0, clock=lambda: now[0])
    assert _signed_key(configs.current("eu-west-2")) == "AKID0"
    credentials.generation = 1  # botocore refreshed them (or the role was assumed again)
    reads = credentials.reads
    now[0] += 0.5
    assert _signed_key(configs.current("eu-west-2")) == "AKID0"  # not re-read within a second
    assert credentials.reads == reads
    now[0] += 0.5
    assert _signed_key(configs.current("eu-west-2")) == "AKID1"  # re-read: the new keys sign
    assert _signed_key(configs.current("us-east-1")) == "AKID1"
