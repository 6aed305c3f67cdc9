"""The MinIO secret: validation that names fields but never values, and the provider's cache."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from aggregator.base.errors import ConfigError, DeliveryError, RetryableError
from aggregator.delivery.secret import MinioSecret, MinioSecretProvider, SecretRefused, SecretUnavailable

ACCESS = "AKIA-unit-access-7f3c"
SECRET = "unit-secret-key-9d1e/+xyz"
VALID = {
    "endpoint_url": "https://minio.internal:9000",
    "access_key": ACCESS,
    "secret_key": SECRET,
    "bucket": "archive-bucket",
}


def text(**changes: Any) -> str:
    document = {**VALID, **changes}
    return json.dumps({k: v for k, v in document.items() if v is not _DROP})


_DROP = object()


def assert_no_credentials(*texts: str) -> None:
    for t in texts:
        assert ACCESS not in t
        assert SECRET not in t


# --- parsing -------------------------------------------------------------------------


def test_minimal_secret_gets_defaults() -> None:
    secret = MinioSecret.from_json(text())
    assert secret == MinioSecret(endpoint_url="https://minio.internal:9000", access_key=ACCESS, secret_key=SECRET,
                                 bucket="archive-bucket", region="us-east-1", ca_bundle=None, addressing_style="path")
    assert secret.uses_tls


def test_every_field_is_read() -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    secret = MinioSecret.from_json(text(endpoint_url="http://10.0.0.5:9000/", region="eu-central-1", ca_bundle=pem,
                                        addressing_style="Virtual"))
    assert secret.endpoint_url == "http://10.0.0.5:9000"  # trailing slash dropped
    assert secret.region == "eu-central-1"
    assert secret.ca_bundle == pem.strip()
    assert secret.addressing_style == "virtual"
    assert not secret.uses_tls


def test_binary_secret_is_accepted() -> None:
    assert MinioSecret.from_json(text().encode()).bucket == "archive-bucket"


def test_unknown_fields_are_ignored() -> None:
    assert MinioSecret.from_json(text(comment="rotated by ops")).bucket == "archive-bucket"


@pytest.mark.parametrize(("field", "value"), [
    ("endpoint_url", _DROP), ("endpoint_url", ""), ("endpoint_url", 9000), ("endpoint_url", "ftp://minio:21"),
    ("endpoint_url", "minio.internal:9000"), ("endpoint_url", "https://"), ("endpoint_url", "https://minio:99999"),
    ("endpoint_url", "https://minio:9000/some/path"), ("endpoint_url", "https://minio:9000?x=1"),
    ("access_key", _DROP), ("access_key", ""), ("access_key", None), ("access_key", 12345),
    ("secret_key", _DROP), ("secret_key", "   "), ("secret_key", ["x"]),
    ("bucket", _DROP), ("bucket", ""), ("bucket", "Upper"), ("bucket", "a"), ("bucket", "bad_name"),
    ("bucket", "-leading"), ("bucket", "a..b"),
    ("region", 5),
    ("ca_bundle", "not a certificate"), ("ca_bundle", 7),
    ("addressing_style", "auto"), ("addressing_style", 1),
])
def test_each_invalid_field_is_named(field: str, value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        MinioSecret.from_json(text(**{field: value}))
    message = str(caught.value)
    assert repr(field) in message or field in message
    assert_no_credentials(message)


@pytest.mark.parametrize("field", ["access_key", "secret_key"])
def test_credentials_with_whitespace_are_refused_without_echo(field: str) -> None:
    bad = f" {VALID[field]}\n"
    with pytest.raises(ConfigError) as caught:
        MinioSecret.from_json(text(**{field: bad}))
    assert field in str(caught.value)
    assert_no_credentials(str(caught.value))


def test_user_info_in_endpoint_is_refused_and_not_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        MinioSecret.from_json(text(endpoint_url=f"https://{ACCESS}:{SECRET.replace('/', '')}@minio:9000"))
    assert "endpoint_url" in str(caught.value)
    assert ACCESS not in str(caught.value)


@pytest.mark.parametrize("document", ["", "{", "[1, 2]", '"text"', "null"])
def test_not_a_json_object(document: str) -> None:
    with pytest.raises(ConfigError, match="MinIO secret"):
        MinioSecret.from_json(document)


def test_invalid_json_does_not_chain_the_document() -> None:
    broken = text()[:-1]  # holds both credentials
    with pytest.raises(ConfigError) as caught:
        MinioSecret.from_json(broken)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_repr_and_str_redact_credentials() -> None:
    secret = MinioSecret.from_json(text(ca_bundle="-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----"))
    for shown in (repr(secret), str(secret), f"{secret}", repr([secret]), repr({"s": secret})):
        assert_no_credentials(shown)
        assert "archive-bucket" in shown
        assert "***" in shown


def test_secret_is_frozen() -> None:
    secret = MinioSecret.from_json(text())
    with pytest.raises(AttributeError):
        secret.bucket = "other"  # type: ignore[misc]


# --- provider --------------------------------------------------------------------------


class FakeSecrets:
    """Answers get_secret_value like Secrets Manager; counts calls."""

    def __init__(self, value: str | bytes | Exception) -> None:
        self.value = value
        self.calls = 0

    def get_secret_value(self, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        assert kwargs == {"SecretId": "minio/creds"}
        if isinstance(self.value, Exception):
            raise self.value
        if isinstance(self.value, bytes):
            return {"SecretBinary": self.value}
        return {"SecretString": self.value}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_provider_caches_for_at_most_max_age() -> None:
    secrets, clock = FakeSecrets(text()), Clock()
    provider = MinioSecretProvider(secrets, "minio/creds", max_age_seconds=300, clock=clock)
    first = provider.get()
    clock.now += 299.9
    assert provider.get() is first
    assert secrets.calls == 1
    secrets.value = text(bucket="rotated-bucket")
    clock.now += 0.1  # 300 s after the fetch: stale
    assert provider.get().bucket == "rotated-bucket"
    assert secrets.calls == 2


def test_default_max_age_is_five_minutes() -> None:
    secrets, clock = FakeSecrets(text()), Clock()
    provider = MinioSecretProvider(secrets, "minio/creds", clock=clock)
    provider.get()
    clock.now += 299
    provider.get()
    assert secrets.calls == 1
    clock.now += 1
    provider.get()
    assert secrets.calls == 2


def test_refresh_fetches_at_once_and_restarts_the_age() -> None:
    secrets, clock = FakeSecrets(text()), Clock()
    provider = MinioSecretProvider(secrets, "minio/creds", clock=clock)
    provider.get()
    secrets.value = text(access_key="rotated-access")
    clock.now += 10
    assert provider.get(refresh=True).access_key == "rotated-access"
    assert secrets.calls == 2
    clock.now += 299
    assert provider.get().access_key == "rotated-access"
    assert secrets.calls == 2


# --- plain http in prod ------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["http://minio.internal:9000", "HTTP://10.0.0.5:9000/"])
def test_plain_http_is_refused_when_not_allowed_and_names_the_setting(endpoint: str) -> None:
    with pytest.raises(ConfigError) as info:
        MinioSecret.from_json(text(endpoint_url=endpoint), allow_http=False)
    message = str(info.value)
    assert "endpoint_url" in message and "MINIO_ALLOW_HTTP=true" in message and "ENVIRONMENT=prod" in message
    assert_no_credentials(message)
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_https_is_accepted_when_http_is_not() -> None:
    assert MinioSecret.from_json(text(), allow_http=False).uses_tls


def test_the_provider_applies_the_http_policy_to_every_fetch() -> None:
    from aggregator.base.settings import Settings

    required = {"IDEMPOTENCY_TABLE_NAME": "t", "MINIO_SECRET_ID": "s"}
    prod = Settings.from_env({**required, "ENVIRONMENT": "prod"})
    allowed = Settings.from_env({**required, "ENVIRONMENT": "prod", "MINIO_ALLOW_HTTP": "true"})
    plain = FakeSecrets(text(endpoint_url="http://minio.internal:9000"))
    with pytest.raises(ConfigError, match="MINIO_ALLOW_HTTP"):
        MinioSecretProvider(plain, "minio/creds", allow_http=prod.minio_http_allowed).get()
    assert MinioSecretProvider(plain, "minio/creds", allow_http=allowed.minio_http_allowed).get().endpoint_url == (
        "http://minio.internal:9000")
    assert MinioSecretProvider(plain, "minio/creds").get().endpoint_url == "http://minio.internal:9000"


def test_unchanged_secret_stays_equal_across_fetches() -> None:
    secrets = FakeSecrets(text())
    provider = MinioSecretProvider(secrets, "minio/creds", max_age_seconds=0)
    assert provider.get() == provider.get()
    assert secrets.calls == 2


def test_binary_secret_through_provider() -> None:
    provider = MinioSecretProvider(FakeSecrets(text().encode()), "minio/creds")
    assert provider.get().access_key == ACCESS


def test_secrets_manager_failure_is_retryable_and_names_the_code() -> None:
    error = ClientError({"Error": {"Code": "InternalServiceError", "Message": "try later"}}, "GetSecretValue")
    provider = MinioSecretProvider(FakeSecrets(error), "minio/creds")
    with pytest.raises(SecretUnavailable) as caught:
        provider.get()
    assert isinstance(caught.value, RetryableError)
    assert isinstance(caught.value, DeliveryError)
    assert "InternalServiceError" in str(caught.value)
    assert "minio/creds" in str(caught.value)


@pytest.mark.parametrize("code", ["ResourceNotFoundException", "AccessDeniedException", "DecryptionFailure",
                                  "InvalidRequestException", "InvalidParameterException", "ValidationException"])
def test_a_secret_that_is_absent_or_forbidden_is_a_configuration_error(code: str) -> None:
    error = ClientError({"Error": {"Code": code, "Message": "no"}}, "GetSecretValue")
    provider = MinioSecretProvider(FakeSecrets(error), "minio/creds")
    with pytest.raises(SecretRefused) as caught:
        provider.get()
    assert isinstance(caught.value, ConfigError) and not isinstance(caught.value, RetryableError)
    assert code in str(caught.value) and "minio/creds" in str(caught.value)


def test_failure_after_a_cached_value_is_not_hidden_on_refresh() -> None:
    secrets = FakeSecrets(text())
    provider = MinioSecretProvider(secrets, "minio/creds")
    provider.get()
    secrets.value = ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow"}}, "GetSecretValue")
    with pytest.raises(SecretUnavailable, match="ThrottlingException"):
        provider.get(refresh=True)


def test_malformed_secret_in_store_is_a_config_error_without_values() -> None:
    provider = MinioSecretProvider(FakeSecrets(json.dumps({"access_key": ACCESS, "secret_key": SECRET})),
                                   "minio/creds")
    with pytest.raises(ConfigError) as caught:
        provider.get()
    assert "endpoint_url" in str(caught.value)
    assert_no_credentials(str(caught.value))


def test_negative_max_age_is_refused() -> None:
    with pytest.raises(ValueError):
        MinioSecretProvider(FakeSecrets(text()), "minio/creds", max_age_seconds=-1)


@mock_aws
def test_provider_reads_secrets_manager_and_sees_rotation() -> None:
    client = boto3.client("secretsmanager", region_name="eu-west-2")
    client.create_secret(Name="minio/creds", SecretString=text())
    provider = MinioSecretProvider(client, "minio/creds")
    assert provider.get().secret_key == SECRET
    client.put_secret_value(SecretId="minio/creds", SecretString=text(secret_key="rotated-secret"))
    assert provider.get().secret_key == SECRET  # cached
    assert provider.get(refresh=True).secret_key == "rotated-secret"


@mock_aws
def test_missing_secret_in_secrets_manager() -> None:
    client = boto3.client("secretsmanager", region_name="eu-west-2")
    with pytest.raises(SecretRefused, match="ResourceNotFoundException"):
        MinioSecretProvider(client, "minio/creds").get()
