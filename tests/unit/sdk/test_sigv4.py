"""The claims client's SigV4 signer against botocore's, byte for byte, for the same instant."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from aggregator.sdk.sigv4 import JsonPostSigner

CONTENT_TYPE = "application/x-amz-json-1.0"
BODY = b'{"TableName":"claims","Item":{"ObjectID":{"S":"s3://landing/in/a.csv#v1"}},' \
       b'"ConditionExpression":"attribute_not_exists(ObjectID)"}'


def botocore_headers(url: str, credentials: Credentials, *, region: str, target: str) -> dict[str, str]:
    request = AWSRequest(method="POST", url=url, data=BODY, headers={
        "Content-Type": CONTENT_TYPE, "X-Amz-Target": target, "User-Agent": "aggregator-claims"})
    SigV4Auth(credentials.get_frozen_credentials(), "dynamodb", region).add_auth(request)
    return dict(request.headers.items())


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/", "https://dynamodb.eu-west-2.amazonaws.com/",
                                 "https://dynamodb.eu-west-2.amazonaws.com:443/", "http://localhost:80/",
                                 "https://vpce.example.internal:8443/prefix/", "http://LocalHost:8000/",
                                 "https://[::1]:443/", "http://[::1]:8000/", "http://h:8000/a//b/./c"])
@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEJr//////////wEaDGtva2VuIHdpdGggc2xhc2hlcw=="])
def test_headers_match_botocores_signer(url: str, token: str | None) -> None:
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    target = "DynamoDB_20120810.PutItem"
    expected = botocore_headers(url, credentials, region="eu-west-2", target=target)
    now = datetime.strptime(expected["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    signer = JsonPostSigner(url=url, region="eu-west-2", service="dynamodb", content_type=CONTENT_TYPE,
                            user_agent="aggregator-claims")

    ours = signer.headers(target=target, body=BODY, access_key="AKIDEXAMPLE",
                          secret_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token=token, now=now)

    assert ours == expected


def test_the_signing_key_follows_the_day_and_the_secret() -> None:
    signer = JsonPostSigner(url="http://127.0.0.1:8000/", region="eu-west-2", service="dynamodb",
                            content_type=CONTENT_TYPE, user_agent="aggregator-claims")
    monday, tuesday = datetime(2026, 12, 7, 23, 59, 59, tzinfo=UTC), datetime(2026, 12, 8, 0, 0, 1, tzinfo=UTC)

    def signature(secret: str, now: datetime) -> str:
        headers = signer.headers(target="DynamoDB_20120810.DeleteItem", body=BODY, access_key="AKID",
                                 secret_key=secret, token=None, now=now)
        return headers["Authorization"].rsplit("Signature=", 1)[1]

    def fresh(secret: str, now: datetime) -> str:  # no cached key
        return JsonPostSigner(url="http://127.0.0.1:8000/", region="eu-west-2", service="dynamodb",
                              content_type=CONTENT_TYPE, user_agent="aggregator-claims").headers(
            target="DynamoDB_20120810.DeleteItem", body=BODY, access_key="AKID", secret_key=secret, token=None,
            now=now)["Authorization"].rsplit("Signature=", 1)[1]

    for secret, now in [("one", monday), ("one", tuesday), ("two", tuesday), ("one", tuesday)]:
        assert signature(secret, now) == fresh(secret, now)
