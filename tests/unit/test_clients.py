"""Client factories: configuration only (building a client opens no socket)."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from aggregator import clients
from aggregator.delivery.secret import MinioSecret

PEM = "-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----"


def secret(**changes: object) -> MinioSecret:
    values: dict[str, object] = {
        "endpoint_url": "https://10.1.2.3:9000", "access_key": "unit-access-key", "secret_key": "unit-secret-key",
        "bucket": "archive-bucket",
    }
    values.update(changes)
    return MinioSecret(**values)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def clean_endpoint_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("AWS_ENDPOINT_URL") or name in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "AWS_MAX_ATTEMPTS",
                                                                "AWS_RETRY_MODE"):
            monkeypatch.delenv(name)
    yield


def test_importing_builds_nothing() -> None:
    assert not clients._ca_files or all(os.path.exists(p) for p in clients._ca_files.values())
    # The factories are plain functions; the module holds no client objects.
    assert not [v for v in vars(clients).values() if type(v).__name__ in ("S3", "DynamoDB", "SecretsManager")]


def test_minio_client_takes_everything_from_the_secret() -> None:
    client = clients.minio_client(secret(region="eu-central-1"), max_pool=7, connect_timeout=1.5, read_timeout=9.0)
    config = client.meta.config
    assert client.meta.endpoint_url == "https://10.1.2.3:9000"
    assert client.meta.region_name == "eu-central-1"
    assert config.s3 == {"addressing_style": "path"}
    assert config.connect_timeout == 1.5
    assert config.read_timeout == 9.0
    assert config.max_pool_connections == 7
    assert config.retries == {"mode": "standard", "total_max_attempts": clients.DEFAULT_MINIO_ATTEMPTS}
    assert config.signature_version == "s3v4"
    assert config.request_checksum_calculation == "when_required"
    credentials = client._request_signer._credentials
    assert (credentials.access_key, credentials.secret_key, credentials.token) == (
        "unit-access-key", "unit-secret-key", None)  # never the function's own session token


def test_virtual_addressing_when_asked() -> None:
    client = clients.minio_client(secret(addressing_style="virtual"))
    assert client.meta.config.s3 == {"addressing_style": "virtual"}


def test_minio_client_ignores_aws_endpoint_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:2")
    assert clients.minio_client(secret()).meta.endpoint_url == "https://10.1.2.3:9000"


def test_tls_verification_is_on_by_default() -> None:
    client = clients.minio_client(secret())
    assert client._endpoint.http_session._verify is True


def test_without_a_bundle_the_sdk_ca_setting_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_CA_BUNDLE", "/etc/company-ca.pem")
    assert clients.minio_client(secret())._endpoint.http_session._verify == "/etc/company-ca.pem"


def test_ca_bundle_goes_to_a_private_file_reused_while_unchanged() -> None:
    first = clients.minio_client(secret(ca_bundle=PEM))
    path = first._endpoint.http_session._verify
    assert isinstance(path, str)
    assert Path(path).read_text() == PEM + "\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = clients.minio_client(secret(ca_bundle=PEM, access_key="rotated-key"))
    assert again._endpoint.http_session._verify == path
    other = clients.minio_client(secret(ca_bundle=PEM + "\n" + PEM))
    assert other._endpoint.http_session._verify != path
    assert os.path.exists(path)  # kept for clients built before the rotation


def test_ca_file_is_rewritten_if_removed() -> None:
    pem = PEM.replace("test", "gone")
    path = clients.ca_bundle_path(pem)
    os.unlink(path)
    again = clients.ca_bundle_path(pem)
    assert Path(again).read_text() == pem + "\n"


def test_plain_http_endpoint_ignores_the_ca_bundle() -> None:
    client = clients.minio_client(secret(endpoint_url="http://10.1.2.3:9000", ca_bundle=PEM))
    assert client._endpoint.http_session._verify is True  # irrelevant for http, and no file is needed


def test_aws_clients_honour_the_sdk_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:4566")
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", "http://127.0.0.1:4567")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:4568")
    monkeypatch.setenv("AWS_REGION", "ap-southeast-2")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-southeast-2")
    session = clients.aws_session()
    dynamodb = clients.dynamodb_client(session, max_pool=20)
    secrets = clients.secretsmanager_client(session)
    s3 = clients.source_s3_client(session, max_pool=33)
    assert dynamodb.meta.endpoint_url == "http://127.0.0.1:4566"
    assert secrets.meta.endpoint_url == "http://127.0.0.1:4567"
    assert s3.meta.endpoint_url == "http://127.0.0.1:4568"
    assert {c.meta.region_name for c in (dynamodb, secrets, s3)} == {"ap-southeast-2"}
    assert dynamodb.meta.config.max_pool_connections == 20
    assert s3.meta.config.max_pool_connections == 33
    for client in (dynamodb, secrets, s3):
        assert client.meta.config.retries["mode"] == "standard"
        assert client.meta.config.connect_timeout <= 10


def test_aws_clients_use_the_session_credentials() -> None:
    session = clients.aws_session()
    client = clients.source_s3_client(session, max_pool=4)
    assert client._request_signer._credentials.access_key == "testing"  # from tests/conftest.py


def test_sdk_debug_logs_never_show_the_minio_keys(caplog: pytest.LogCaptureFixture) -> None:
    clients.minio_client(secret(access_key="redact-me-access", secret_key="redact-me-secret"))
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("botocore.endpoint").debug("Sending request: Credential=%s/2025", "redact-me-access")
        logging.getLogger("botocore.parsers").debug("body: <AWSAccessKeyId>redact-me-access</AWSAccessKeyId> "
                                                    "redact-me-secret")
        logging.getLogger("botocore.auth").debug("nothing to hide here")
    text = caplog.text
    assert "redact-me" not in text
    assert text.count("***") == 3
    assert "nothing to hide here" in text


def test_secrets_manager_payloads_are_withheld_from_sdk_logs(caplog: pytest.LogCaptureFixture) -> None:
    clients.secretsmanager_client(clients.aws_session())
    body = b'{"ARN": "arn", "SecretString": "{\\"secret_key\\": \\"never-logged-value\\"}"}'
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("botocore.parsers").debug("Response body:\n%r", body)
        logging.getLogger("botocore.parsers").debug("Response headers: %r", {"x-amzn-RequestId": "1"})
    assert "never-logged-value" not in caplog.text
    assert "withheld" in caplog.text
    assert "x-amzn-RequestId" in caplog.text


def test_short_invalid_values_are_not_redacted_everywhere(caplog: pytest.LogCaptureFixture) -> None:
    clients.minio_client(secret(access_key="ab", secret_key="unit-secret-key"))
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("botocore.endpoint").debug("about absent tables")
    assert "about absent tables" in caplog.text
