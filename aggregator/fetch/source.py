"""Where the source objects live and how to sign for them: :class:`SourceConfig`.

Built from the production S3 client by :func:`source_config_from_client`, so the fast
path goes where boto3 would and signs as boto3 would:

* each bucket's endpoint comes from botocore's endpoint ruleset for that client (FIPS,
  dual-stack, accelerate, virtual-hosted or path style, ``AWS_ENDPOINT_URL_S3``), resolved
  once per bucket per batch (:mod:`aggregator.sdk.endpoints`);
* credentials are the client's own botocore ``Credentials``, re-read while the batch runs
  (:mod:`aggregator.sdk.credentials`);
* the trust store and proxies are the ones the client uses (:mod:`aggregator.sdk.crthttp`).

A config built by hand (tests, benchmarks, a fixed S3-compatible server) has a fixed
``endpoint_url`` and ``addressing_style`` and fixed keys instead.

The config pickles into fetch processes once :meth:`SourceConfig.for_processes` has
replaced the live parts (resolver, credential object) with plain values; ``repr``
leaves secrets out so that a logged config never leaks them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aggregator.base.errors import ConfigError
from aggregator.sdk import botocore_private
from aggregator.sdk.credentials import CredentialSource, FrozenCredentials
from aggregator.sdk.crthttp import Proxies
from aggregator.sdk.endpoints import BucketEndpoint, UnsupportedEndpoint, s3_bucket_resolver, static_bucket_endpoint


@dataclass(frozen=True)
class SourceConfig:
    endpoint_url: str  # e.g. https://s3.eu-west-2.amazonaws.com or http://127.0.0.1:PORT
    region: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    session_token: str | None = field(repr=False)
    addressing_style: str = "path"  # "path" or "virtual" (fixed endpoints only)
    verify: bool | str = True  # CA bundle path or bool
    connect_timeout: float = 2.0
    read_timeout: float = 10.0
    proxies: Proxies = field(default_factory=Proxies)
    # Keep a Python thread state on the CRT's loop threads (aggregator.fetch.threadstate).
    thread_state_hold: bool = True
    # Live credentials (botocore's, refreshable): re-read every ``credentials_recheck``
    # seconds while fetching. None: the fixed keys above.
    credentials: CredentialSource | None = field(default=None, repr=False, compare=False)
    credentials_recheck: float = 1.0
    # bucket -> endpoint (botocore's ruleset); None: endpoint_url and addressing_style.
    resolver: Callable[[str], BucketEndpoint] | None = field(default=None, repr=False, compare=False)
    # Endpoints resolved for a batch: bucket -> endpoint, or why the bucket is refused.
    endpoints: Mapping[str, BucketEndpoint | str] = field(default_factory=dict, repr=False, compare=False)

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

    def credential_source(self) -> CredentialSource:
        if self.credentials is not None:
            return self.credentials
        return FrozenCredentials(self.access_key, self.secret_key, self.session_token or None)

    def bucket_endpoint(self, bucket: str) -> BucketEndpoint:
        """Where GETs on ``bucket`` go; raises :class:`UnsupportedEndpoint` for a bucket
        the fast path refuses."""
        known = self.endpoints.get(bucket)
        if isinstance(known, BucketEndpoint):
            return known
        if isinstance(known, str):
            raise UnsupportedEndpoint(known)
        if self.resolver is not None:
            return self.resolver(bucket)
        return static_bucket_endpoint(self.endpoint_url, bucket, region=self.region,
                                      virtual=self.addressing_style == "virtual")

    def for_buckets(self, buckets: Iterable[str]) -> SourceConfig:
        """This config with every bucket's endpoint resolved now (once per batch)."""
        if self.resolver is None:
            return self
        endpoints: dict[str, BucketEndpoint | str] = dict(self.endpoints)
        for bucket in set(buckets) - endpoints.keys():
            try:
                endpoints[bucket] = self.resolver(bucket)
            except UnsupportedEndpoint as e:
                endpoints[bucket] = str(e)
        return dataclasses.replace(self, endpoints=endpoints)

    def for_processes(self) -> SourceConfig:
        """Plain values only, to pickle into fetch processes: endpoints must have been
        resolved (:meth:`for_buckets`), and the credentials are a snapshot taken now."""
        if self.credentials is None and self.resolver is None:
            return self
        frozen = FrozenCredentials.of(self.credential_source())
        return dataclasses.replace(self, access_key=frozen.access_key, secret_key=frozen.secret_key,
                                   session_token=frozen.token, credentials=None, resolver=None)


def source_config_from_client(client: Any, *, verify: bool | str | None = None,
                              thread_state_hold: bool = True) -> SourceConfig:
    """Build a :class:`SourceConfig` from a botocore S3 client (see the module docstring).

    ``verify`` overrides the trust store the client itself verifies with;
    ``thread_state_hold`` is ``Settings.fetch_thread_state_hold``. Raises
    :class:`ConfigError` (:class:`UnsupportedEndpoint`) when the client's settings lead
    somewhere the fast path cannot go, naming them.
    """
    meta = client.meta
    credentials = botocore_private.client_credentials(client)
    if credentials is None:
        raise ConfigError("the S3 client has no credentials to sign source GETs with")
    frozen = FrozenCredentials.of(credentials)
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
        session_token=frozen.token,
        addressing_style=style,
        verify=botocore_private.client_verify(client) if verify is None else verify,
        connect_timeout=float(getattr(config, "connect_timeout", None) or 2.0),
        read_timeout=float(getattr(config, "read_timeout", None) or 10.0),
        proxies=Proxies.from_client(client),
        thread_state_hold=thread_state_hold,
        credentials=credentials,
        resolver=s3_bucket_resolver(client),
    )
