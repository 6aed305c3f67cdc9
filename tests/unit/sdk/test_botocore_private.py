"""Every private botocore attribute the lean clients still use exists in this botocore.

When one of these fails after a botocore upgrade, aggregator/sdk/botocore_private.py is
the only module to adapt.
"""

from __future__ import annotations

import importlib

import boto3
import botocore.loaders
import pytest

from aggregator.sdk import botocore_private


def _client() -> object:
    session = boto3.session.Session(aws_access_key_id="AKID", aws_secret_access_key="SECRET", region_name="eu-west-2")
    return session.client("s3")


@pytest.mark.parametrize(("owner", "attribute"), botocore_private.RELIED_ON,
                         ids=[f"{o}.{a}" for o, a in botocore_private.RELIED_ON])
def test_each_private_attribute_still_exists(owner: str, attribute: str) -> None:
    module_name, class_name = owner.rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), class_name)
    client = _client()
    instances = {
        "BaseClient": client,
        "RequestSigner": client._request_signer,  # type: ignore[attr-defined]
        "Session": boto3.session.Session(region_name="eu-west-2"),
        "Endpoint": client._endpoint,  # type: ignore[attr-defined]
        "URLLib3Session": client._endpoint.http_session,  # type: ignore[attr-defined]
        "Loader": botocore.loaders.Loader(),
    }
    instance = instances[class_name]
    assert isinstance(instance, cls)
    assert hasattr(instance, attribute) or hasattr(cls, attribute), (
        f"botocore {importlib.import_module('botocore').__version__} has no {owner}.{attribute}: "
        "adapt aggregator/sdk/botocore_private.py")


def test_the_adapter_functions_answer_through_them() -> None:
    client = _client()
    url, headers, properties = botocore_private.resolve_endpoint(client, "GetObject", {"Bucket": "b-1", "Key": "k"})
    assert url == "https://b-1.s3.eu-west-2.amazonaws.com" and headers == {}
    assert properties["authSchemes"][0]["signingRegion"] == "eu-west-2"
    assert botocore_private.client_credentials(client).get_frozen_credentials().access_key == "AKID"
    assert botocore_private.client_verify(client) in (True, False) or isinstance(botocore_private.client_verify(client),
                                                                                 str)
