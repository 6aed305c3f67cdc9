"""Endpoints from botocore's own endpoint ruleset, resolved once per bucket.

The fast path never builds an AWS host name itself. It asks the same S3 client that
boto3 would use (and so the same ruleset, region, ``use_fips_endpoint``,
``use_dualstack_endpoint``, ``s3.addressing_style``, ``s3.use_accelerate_endpoint``,
``AWS_ENDPOINT_URL_S3`` ...) for the URL of a GetObject on each bucket, without sending
anything, and keeps the answer for the batch. Resolving one bucket costs ~0.5 ms; the
ruleset itself is already loaded by the client, so nothing more is read from disk.

What the lean path cannot sign or reach is refused by name, never sent elsewhere:

* buckets that are ARNs (access points, Object Lambda, outposts, multi-region access
  points): S3 notifications never name them; a config or event that does is refused;
* S3 Express directory buckets (``--x-s3``): their session auth is not implemented;
* any endpoint whose auth scheme is not plain SigV4 for ``s3``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aggregator.base.errors import ConfigError
from aggregator.sdk import botocore_private

# A bucket name that is valid everywhere: resolved once at start so that a configuration
# the ruleset rejects (FIPS with accelerate, dual-stack with a custom endpoint ...) fails
# before anything is fetched.
_PROBE_BUCKET = "aggregator-endpoint-probe"
_EXPRESS_SUFFIX = "--x-s3"


class UnsupportedEndpoint(ConfigError):
    """A bucket or configuration the lean S3 path cannot serve."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a connection goes: scheme, host and port."""

    tls: bool
    host: str
    port: int

    def host_header(self) -> str:
        """``host[:port]``, the port left out when it is the scheme's default (as SDKs sign it)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == (443 if self.tls else 80) else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class BucketEndpoint:
    """Everything a GET on one bucket needs: the connection's origin, the path before
    ``/{key}`` (``""`` for virtual-hosted style, ``/bucket`` for path style), and the
    SigV4 scope. Plain values: it pickles into fetch processes."""

    origin: Origin
    prefix: str
    signing_region: str
    signing_name: str = "s3"

    @classmethod
    def from_url(cls, url: str, *, signing_region: str, signing_name: str = "s3") -> BucketEndpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UnsupportedEndpoint(f"the endpoint ruleset gave {url!r}, not an http(s) URL")
        tls = parts.scheme == "https"
        origin = Origin(tls=tls, host=parts.hostname, port=parts.port or (443 if tls else 80))
        return cls(origin=origin, prefix=parts.path.rstrip("/"), signing_region=signing_region,
                   signing_name=signing_name)

    @property
    def url(self) -> str:
        scheme = "https" if self.origin.tls else "http"
        return f"{scheme}://{self.origin.host_header()}{self.prefix}"


@functools.lru_cache(maxsize=256)
def static_bucket_endpoint(endpoint_url: str, bucket: str, *, region: str, virtual: bool) -> BucketEndpoint:
    """The endpoint of a bucket behind a fixed URL (an S3-compatible server, a test
    server): ``bucket.host`` when ``virtual``, else ``host/bucket``."""
    from urllib.parse import quote

    parts = urlsplit(endpoint_url)
    tls = parts.scheme == "https"
    host = parts.hostname or ""
    base = parts.path.rstrip("/")
    port = parts.port or (443 if tls else 80)
    if virtual:
        return BucketEndpoint(Origin(tls, f"{bucket}.{host}", port), base, region)
    return BucketEndpoint(Origin(tls, host, port), f"{base}/{quote(bucket, safe='')}", region)


def s3_bucket_resolver(client: Any) -> Callable[[str], BucketEndpoint]:
    """``bucket -> BucketEndpoint`` from the client's endpoint ruleset.

    Checks the client's configuration once now (a probe bucket): a setting the ruleset
    rejects, or one that leads where the lean path cannot sign, raises
    :class:`UnsupportedEndpoint` naming the setting.
    """
    resolve = _S3Resolver(client)
    resolve.probe()
    return resolve


class _S3Resolver:
    def __init__(self, client: Any) -> None:
        self._client = client

    def probe(self) -> None:
        try:
            self(_PROBE_BUCKET)
        except UnsupportedEndpoint as e:
            raise UnsupportedEndpoint(f"{e} (S3 client settings: {_settings(self._client)})") from e

    def __call__(self, bucket: str) -> BucketEndpoint:
        if bucket.startswith("arn:"):
            raise UnsupportedEndpoint(
                f"bucket {bucket!r} is an ARN (access point, Object Lambda, outpost or multi-region "
                "access point): the fast S3 path fetches from bucket names only, as S3 notifications name them")
        if bucket.endswith(_EXPRESS_SUFFIX):
            raise UnsupportedEndpoint(
                f"bucket {bucket!r} is an S3 Express directory bucket: its session auth is not supported "
                "by the fast S3 path; archive from a general purpose bucket")
        try:
            url, headers, properties = botocore_private.resolve_endpoint(
                self._client, "GetObject", {"Bucket": bucket, "Key": "k"})
        except Exception as e:  # botocore's EndpointResolutionError and relatives
            raise UnsupportedEndpoint(
                f"botocore cannot resolve the S3 endpoint for bucket {bucket!r}: {e} "
                f"(check AWS_USE_FIPS_ENDPOINT, AWS_USE_DUALSTACK_ENDPOINT, the s3 addressing_style / "
                f"use_accelerate_endpoint settings and AWS_ENDPOINT_URL_S3)") from e
        if headers:
            raise UnsupportedEndpoint(f"the S3 endpoint for {bucket!r} needs extra headers {sorted(headers)}, "
                                      "which the fast S3 path does not send")
        region, name = _sigv4_scope(properties, bucket, default_region=self._client.meta.region_name)
        return BucketEndpoint.from_url(url, signing_region=region, signing_name=name)


def _sigv4_scope(properties: dict[str, Any], bucket: str, *, default_region: str | None) -> tuple[str, str]:
    schemes = properties.get("authSchemes") or [{"name": "sigv4", "signingName": "s3"}]
    scheme = schemes[0]
    name = scheme.get("signingName", "s3")
    if scheme.get("name") != "sigv4" or name != "s3":
        raise UnsupportedEndpoint(
            f"the S3 endpoint for {bucket!r} needs auth {scheme.get('name')!r} for {name!r}; the fast S3 path "
            "signs SigV4 for s3 only")
    region = scheme.get("signingRegion") or default_region or "us-east-1"
    return str(region), str(name)


def service_url(client: Any, operation: str, params: dict[str, Any] | None = None) -> str:
    """The URL botocore's ruleset gives ``operation`` on ``client`` (DynamoDB's JSON client)."""
    try:
        url, headers, _ = botocore_private.resolve_endpoint(client, operation, dict(params or {}))
    except Exception as e:
        raise UnsupportedEndpoint(f"botocore cannot resolve the {client.meta.service_model.service_name} "
                                  f"endpoint: {e}") from e
    if headers:
        raise UnsupportedEndpoint(f"the endpoint needs extra headers {sorted(headers)}, which the lean client "
                                  "does not send")
    return url


def _settings(client: Any) -> str:
    config = client.meta.config
    s3 = getattr(config, "s3", None) or {}
    return (f"region={client.meta.region_name}, use_fips_endpoint={getattr(config, 'use_fips_endpoint', None)}, "
            f"use_dualstack_endpoint={getattr(config, 'use_dualstack_endpoint', None)}, s3={s3}")
