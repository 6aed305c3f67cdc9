"""The MinIO secret (docs/contract.md §3): its shape, its validation and its cache.

The secret is a JSON object in Secrets Manager::

    {"endpoint_url": "https://minio.internal:9000", "access_key": "...", "secret_key": "...",
     "bucket": "archives", "region": "us-east-1", "ca_bundle": "-----BEGIN CERTIFICATE-----...",
     "addressing_style": "path"}

Rotation is picked up without a redeploy: :class:`MinioSecretProvider` keeps the parsed
secret for at most ``max_age_seconds`` (5 minutes) and fetches it again at once when the
caller asks for a refresh after an authentication error.

A plain ``http://`` endpoint is refused where the caller says so (``allow_http=False``: the
function passes ``Settings.minio_http_allowed``, false with ``ENVIRONMENT=prod`` unless
``MINIO_ALLOW_HTTP=true``): credentials and archives would cross the network in clear.

``access_key`` and ``secret_key`` never reach a log line, a metric or an exception:
validation errors name the field, never its value; :class:`MinioSecret`'s ``repr`` redacts
both; the raw secret text is never chained onto an exception (``from None``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from aggregator.base.errors import ConfigError, DeliveryError

AddressingStyle = Literal["path", "virtual"]
ADDRESSING_STYLES: tuple[AddressingStyle, ...] = ("path", "virtual")
DEFAULT_REGION = "us-east-1"
DEFAULT_MAX_AGE_SECONDS = 300
_PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"
_REDACTED = "***"


class SecretUnavailable(DeliveryError):
    """Secrets Manager could not return the MinIO secret (retryable: nothing was written)."""


class SecretRefused(ConfigError):
    """Secrets Manager says the MinIO secret does not exist or may not be read: asking
    again gives the same answer until someone fixes the secret, its id or the role."""


# Secrets Manager's answers that are about the id or the role, not about the moment.
# InvalidRequestException: the secret is disabled or scheduled for deletion; InvalidParameter
# and Validation: the id itself is malformed.
_REFUSED_CODES = frozenset({"ResourceNotFoundException", "AccessDeniedException", "DecryptionFailure",
                            "InvalidRequestException", "InvalidParameterException", "ValidationException"})


@dataclass(frozen=True, slots=True, repr=False)
class MinioSecret:
    """Where and how to deliver archives. Equal secrets build interchangeable clients."""

    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str
    region: str = DEFAULT_REGION
    ca_bundle: str | None = None
    addressing_style: AddressingStyle = "path"

    def __repr__(self) -> str:
        return (
            f"MinioSecret(endpoint_url={self.endpoint_url!r}, access_key={_REDACTED!r}, "
            f"secret_key={_REDACTED!r}, bucket={self.bucket!r}, region={self.region!r}, "
            f"ca_bundle={'<PEM>' if self.ca_bundle else None!r}, addressing_style={self.addressing_style!r})"
        )

    __str__ = __repr__

    @property
    def uses_tls(self) -> bool:
        return self.endpoint_url.lower().startswith("https://")

    @classmethod
    def from_json(cls, text: str | bytes, *, allow_http: bool = True) -> MinioSecret:
        """Parse and validate the secret; raise :class:`ConfigError` naming the bad field.

        ``allow_http=False`` also refuses an ``http://`` endpoint, naming MINIO_ALLOW_HTTP.
        """
        try:
            document = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            # ``from None``: a JSONDecodeError carries the whole document (keys included).
            raise ConfigError("MinIO secret is not valid JSON") from None
        if not isinstance(document, dict):
            raise ConfigError("MinIO secret must be a JSON object")
        return cls(
            endpoint_url=_endpoint_url(document, allow_http=allow_http),
            access_key=_required_text(document, "access_key"),
            secret_key=_required_text(document, "secret_key"),
            bucket=_bucket(document),
            region=_optional_text(document, "region") or DEFAULT_REGION,
            ca_bundle=_ca_bundle(document),
            addressing_style=_addressing_style(document),
        )


def _required_text(document: dict[str, Any], name: str) -> str:
    value = document.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"MinIO secret field {name!r} is required and must be a non-empty string")
    if value != value.strip() or not value.isprintable():
        raise ConfigError(f"MinIO secret field {name!r} has surrounding whitespace or control characters")
    return value


def _optional_text(document: dict[str, Any], name: str) -> str | None:
    value = document.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"MinIO secret field {name!r} must be a string")
    return value.strip() or None


def _endpoint_url(document: dict[str, Any], *, allow_http: bool) -> str:
    raw = _required_text(document, "endpoint_url")
    # The value is not echoed: an operator may have put credentials in it by mistake.
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError for a non-numeric or out-of-range port
    except ValueError:
        raise ConfigError("MinIO secret field 'endpoint_url' is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ConfigError("MinIO secret field 'endpoint_url' must start with http:// or https://")
    if parts.scheme.lower() == "http" and not allow_http:
        raise ConfigError("MinIO secret field 'endpoint_url' is plain http:// with ENVIRONMENT=prod: use https://, "
                          "or set MINIO_ALLOW_HTTP=true to accept an unencrypted endpoint deliberately")
    if not parts.hostname:
        raise ConfigError("MinIO secret field 'endpoint_url' has no host")
    if parts.username is not None or parts.password is not None:
        raise ConfigError("MinIO secret field 'endpoint_url' must not contain user information; "
                          "use access_key and secret_key")
    if parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ConfigError("MinIO secret field 'endpoint_url' must be scheme://host[:port] without a path")
    return raw.rstrip("/")


def _bucket(document: dict[str, Any]) -> str:
    bucket = _required_text(document, "bucket")
    # S3 naming rules, which MinIO enforces too: checked here so the error names the field.
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789.-")
    if (not 3 <= len(bucket) <= 63 or not set(bucket) <= allowed
            or not bucket[0].isalnum() or not bucket[-1].isalnum() or ".." in bucket):
        raise ConfigError(f"MinIO secret field 'bucket' is not a valid bucket name: {bucket!r}")
    return bucket


def _ca_bundle(document: dict[str, Any]) -> str | None:
    value = _optional_text(document, "ca_bundle")
    if value is not None and _PEM_CERTIFICATE not in value:
        raise ConfigError("MinIO secret field 'ca_bundle' must be PEM text with at least one certificate")
    return value


def _addressing_style(document: dict[str, Any]) -> AddressingStyle:
    value = (_optional_text(document, "addressing_style") or "path").lower()
    for style in ADDRESSING_STYLES:
        if value == style:
            return style
    raise ConfigError(f"MinIO secret field 'addressing_style' must be one of {', '.join(ADDRESSING_STYLES)}; "
                      f"got {value!r}")


class SecretSource(Protocol):
    """What the delivery layer needs from a provider (tests pass simple fakes)."""

    def get(self, *, refresh: bool = False) -> MinioSecret: ...


class MinioSecretProvider:
    """Fetches the MinIO secret through Powertools and keeps it for at most ``max_age_seconds``.

    The cache lives here, not in Powertools' own store, for two reasons: its clock is
    injectable (tests prove the maximum age without sleeping), and it keeps the *parsed*
    secret, so an unchanged secret stays equal and callers rebuild clients only on a real
    rotation. Powertools is asked with ``max_age=0`` and therefore never holds a second copy.
    Thread-safe: concurrent callers wait for one fetch.
    """

    def __init__(self, secrets_client: Any, secret_id: str, *, max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
                 clock: Callable[[], float] = time.monotonic, allow_http: bool = True) -> None:
        if max_age_seconds < 0:
            raise ValueError("max_age_seconds must not be negative")
        # Imported here so that importing this module stays cheap and free of boto3 (the
        # Powertools parameters package imports it); the client itself is passed in.
        from aws_lambda_powertools.utilities.parameters import SecretsProvider

        self._powertools = SecretsProvider(boto3_client=secrets_client)
        self._secret_id = secret_id
        self._max_age = max_age_seconds
        self._clock = clock
        self._allow_http = allow_http
        self._lock = threading.Lock()
        self._cached: MinioSecret | None = None
        self._fetched_at = 0.0

    @property
    def secret_id(self) -> str:
        return self._secret_id

    def get(self, *, refresh: bool = False) -> MinioSecret:
        """The current secret; ``refresh=True`` skips the cache (after an auth error)."""
        with self._lock:
            now = self._clock()
            if not refresh and self._cached is not None and now - self._fetched_at < self._max_age:
                return self._cached
            secret = MinioSecret.from_json(self._fetch(), allow_http=self._allow_http)
            self._cached, self._fetched_at = secret, now
            return secret

    def _fetch(self) -> str | bytes:
        from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

        try:
            value = self._powertools.get(self._secret_id, max_age=0, force_fetch=True)
        except GetParameterError as e:
            # Powertools wraps the SDK error; its code (never a secret value) is on __context__.
            code = _sdk_error_code(e)
            if code in _REFUSED_CODES:
                raise SecretRefused(f"Secrets Manager refuses the MinIO secret {self._secret_id!r}: {code}") from e
            raise SecretUnavailable(f"could not read the MinIO secret {self._secret_id!r}: {code}") from e
        if not isinstance(value, str | bytes):
            raise ConfigError("MinIO secret has neither a SecretString nor a SecretBinary")
        return value


def _sdk_error_code(error: BaseException) -> str:
    cause = error.__cause__ or error.__context__
    response = getattr(cause, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
    return type(cause).__name__ if cause is not None else type(error).__name__
