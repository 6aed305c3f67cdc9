"""Where the source objects live and how to sign for them: :class:`SourceConfig`.

The config is a plain frozen dataclass so that it pickles into child processes. The
credentials are frozen values (the client factory resolves them once per invocation);
``repr`` leaves them out so that a logged config never leaks them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aggregator.base.errors import ConfigError


@dataclass(frozen=True)
class SourceConfig:
    endpoint_url: str  # e.g. https://s3.eu-west-2.amazonaws.com or http://127.0.0.1:PORT
    region: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    session_token: str | None = field(repr=False)
    addressing_style: str = "path"  # "path" or "virtual"
    verify: bool | str = True  # CA bundle path or bool
    connect_timeout: float = 2.0
    read_timeout: float = 10.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"source endpoint_url must be an http(s) URL, got {self.endpoint_url!r}")
        if parts.query or parts.fragment:
            raise ConfigError("source endpoint_url must not have a query or fragment")
        if self.addressing_style not in ("path", "virtual"):
            raise ConfigError(f"source addressing_style must be path or virtual, got {self.addressing_style!r}")
        if not self.region:
            raise ConfigError("source region must not be empty")
        if not (self.connect_timeout > 0 and self.read_timeout > 0):
            raise ConfigError("source connect_timeout and read_timeout must be positive")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """The parts of ``endpoint_url`` a connection needs."""

    tls: bool
    host: str  # without port
    port: int
    base_path: str  # "" or "/prefix" (no trailing slash)

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        host = parts.hostname or ""
        return cls(tls=tls, host=host, port=parts.port or (443 if tls else 80), base_path=parts.path.rstrip("/"))

    def host_header(self, host: str) -> str:
        """``host[:port]``, the port left out when it is the scheme's default (as SDKs sign it)."""
        if ":" in host:  # an IPv6 literal
            host = f"[{host}]"
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"


def source_config_from_client(client: Any, *, verify: bool | str | None = None) -> SourceConfig:
    """Build a :class:`SourceConfig` from a botocore S3 client.

    The endpoint is the client's own (so ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` are
    honoured exactly as the SDK resolved them), the credentials are frozen now, and the
    timeouts and addressing style follow the client's config. ``verify`` is not readable
    from a client through a public attribute: pass the same value the client was built with.
    """
    meta = client.meta
    credentials = _client_credentials(client)
    if credentials is None:
        raise ConfigError("the S3 client has no credentials to sign source GETs with")
    frozen = credentials.get_frozen_credentials()
    config = meta.config
    s3_options = getattr(config, "s3", None) or {}
    style = s3_options.get("addressing_style") or "path"
    if style == "auto":
        style = "path"
    return SourceConfig(
        endpoint_url=meta.endpoint_url,
        region=meta.region_name or "us-east-1",
        access_key=frozen.access_key,
        secret_key=frozen.secret_key,
        session_token=frozen.token or None,
        addressing_style=style,
        verify=True if verify is None else verify,
        connect_timeout=float(getattr(config, "connect_timeout", None) or 2.0),
        read_timeout=float(getattr(config, "read_timeout", None) or 10.0),
    )


def _client_credentials(client: Any) -> Any:
    # botocore keeps the client's credentials on its request signer; there is no public
    # accessor on a client (sessions have one, but we are handed a client).
    signer = getattr(client, "_request_signer", None)
    return getattr(signer, "_credentials", None)
