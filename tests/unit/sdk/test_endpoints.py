"""Our GET URL for every endpoint setting equals the URL botocore itself sends.

No network: a ``before-send`` hook captures botocore's request and answers it with a
fake response. A setting botocore refuses is refused by us too (``UnsupportedEndpoint``,
a ``ConfigError``), never sent elsewhere.
"""

from __future__ import annotations

import itertools
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config

from aggregator.base.errors import ConfigError
from aggregator.base.events import ObjectRef
from aggregator.fetch import protocol, source_config_from_client
from aggregator.sdk.endpoints import UnsupportedEndpoint

REGIONS = ["us-east-1", "eu-west-2", "cn-north-1"]
STYLES = ["auto", "virtual", "path"]
CUSTOM = [None, "http://127.0.0.1:9000", "https://s3.gateway.example/base"]
BUCKETS = ["plain-bucket", "dotted.bucket.name"]
KEY = "dir/a key+plus~%.txt"


class _Sent(Exception):
    pass


def _client(region: str, *, fips: bool, dualstack: bool, style: str, accelerate: bool, custom: str | None) -> Any:
    config = Config(use_fips_endpoint=fips, use_dualstack_endpoint=dualstack,
                    s3={"addressing_style": style, "use_accelerate_endpoint": accelerate},
                    retries={"total_max_attempts": 1})
    session = boto3.session.Session(aws_access_key_id="AKID", aws_secret_access_key="SECRET", region_name=region)
    return session.client("s3", endpoint_url=custom, config=config)


def _botocore_url(client: Any, bucket: str, key: str, version_id: str | None) -> str:
    seen: list[str] = []

    def capture(request: Any, **_: Any) -> AWSResponse:
        seen.append(request.url)
        raise _Sent()

    client.meta.events.register_first("before-send.s3.GetObject", capture, unique_id="capture-url")
    client.meta.events.unregister("before-send.s3.GetObject", unique_id="capture-url")
    client.meta.events.register_first("before-send.s3.GetObject", capture, unique_id="capture-url")
    params = {"Bucket": bucket, "Key": key}
    if version_id:
        params["VersionId"] = version_id
    with pytest.raises(_Sent):
        client.get_object(**params)
    return seen[0]


def _our_url(client: Any, bucket: str, key: str, version_id: str | None) -> str:
    source = source_config_from_client(client, verify=True)
    target = protocol.target(source.bucket_endpoint(bucket), ObjectRef(bucket, key, 1, "e", version_id, "01"))
    scheme = "https" if target.origin.tls else "http"
    return f"{scheme}://{target.host_header}{target.path}"


COMBINATIONS = list(itertools.product(REGIONS, [False, True], [False, True], STYLES, [False, True], CUSTOM))


@pytest.mark.parametrize(("region", "fips", "dualstack", "style", "accelerate", "custom"), COMBINATIONS)
def test_our_get_url_is_botocores(region: str, fips: bool, dualstack: bool, style: str, accelerate: bool,
                                  custom: str | None) -> None:
    try:
        client = _client(region, fips=fips, dualstack=dualstack, style=style, accelerate=accelerate, custom=custom)
    except Exception as e:  # botocore refuses the combination while building the client
        pytest.skip(f"botocore refuses it at client creation: {e}")
    for bucket in BUCKETS:
        for version_id in (None, "3HL4kqtJ+rmSp/Xd3=="):
            try:
                expected = _botocore_url(client, bucket, KEY, version_id)
            except pytest.fail.Exception:
                raise
            except Exception as e:  # botocore refuses to resolve it: so must we
                with pytest.raises(ConfigError):
                    _our_url(client, bucket, KEY, version_id)
                assert str(e)
                continue
            assert _our_url(client, bucket, KEY, version_id) == expected


def test_fips_in_us_east_1_targets_the_regional_fips_host_not_aws_global() -> None:
    client = _client("us-east-1", fips=True, dualstack=False, style="path", accelerate=False, custom=None)
    assert client.meta.endpoint_url == "https://s3-fips.aws-global.amazonaws.com"  # what the old code used
    assert _our_url(client, "plain-bucket", "k", None) == "https://s3-fips.us-east-1.amazonaws.com/plain-bucket/k"


def test_signing_region_comes_from_the_ruleset() -> None:
    client = _client("eu-west-2", fips=False, dualstack=True, style="virtual", accelerate=False, custom=None)
    endpoint = source_config_from_client(client, verify=True).bucket_endpoint("plain-bucket")
    assert endpoint.signing_region == "eu-west-2"
    assert endpoint.url == "https://plain-bucket.s3.dualstack.eu-west-2.amazonaws.com"


@pytest.mark.parametrize("bucket", [
    "arn:aws:s3:us-east-1:123456789012:accesspoint/ap",
    "arn:aws:s3-object-lambda:us-east-1:123456789012:accesspoint/ol",
    "arn:aws:s3-outposts:us-east-1:123456789012:outpost/op-01234567890123456/accesspoint/ap",
    "directory--use1-az4--x-s3",
])
def test_buckets_the_fast_path_cannot_sign_for_are_refused_by_name(bucket: str) -> None:
    client = _client("us-east-1", fips=False, dualstack=False, style="auto", accelerate=False, custom=None)
    source = source_config_from_client(client, verify=True).for_buckets([bucket, "plain-bucket"])
    with pytest.raises(UnsupportedEndpoint, match="fast S3 path"):
        source.bucket_endpoint(bucket)
    assert source.bucket_endpoint("plain-bucket").url == "https://plain-bucket.s3.amazonaws.com"
    # Resolved endpoints (and refusals) pickle into fetch processes as plain values.
    import pickle

    frozen = pickle.loads(pickle.dumps(source.for_processes()))
    with pytest.raises(UnsupportedEndpoint):
        frozen.bucket_endpoint(bucket)


def test_a_configuration_botocore_rejects_fails_at_start_naming_the_settings() -> None:
    client = _client("us-east-1", fips=True, dualstack=False, style="virtual", accelerate=True, custom=None)
    with pytest.raises(ConfigError, match="use_fips_endpoint=True"):
        source_config_from_client(client, verify=True)


@pytest.mark.parametrize(("region", "fips", "dualstack"),
                         list(itertools.product(REGIONS, [False, True], [False, True])))
def test_the_claims_client_targets_botocores_dynamodb_endpoint(region: str, fips: bool, dualstack: bool,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from aggregator import clients

    monkeypatch.delenv("AWS_ENDPOINT_URL_DYNAMODB", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_USE_FIPS_ENDPOINT", str(fips).lower())
    monkeypatch.setenv("AWS_USE_DUALSTACK_ENDPOINT", str(dualstack).lower())
    session = boto3.session.Session(aws_access_key_id="AKID", aws_secret_access_key="SECRET", region_name=region)
    boto = session.client("dynamodb")
    seen: list[str] = []

    def capture(request: Any, **_: Any) -> AWSResponse:
        seen.append(request.url)
        raise _Sent()

    boto.meta.events.register_first("before-send.dynamodb.PutItem", capture)
    try:
        boto.put_item(TableName="t", Item={"k": {"S": "v"}})
    except _Sent:
        pass
    except Exception as e:  # botocore refuses the combination: so must we
        with pytest.raises(ConfigError):
            clients.claims_client(session)
        assert str(e)
        return
    lean = clients.claims_client(session)
    try:
        assert lean.endpoint_url.rstrip("/") == seen[0].rstrip("/")
    finally:
        lean.close()
