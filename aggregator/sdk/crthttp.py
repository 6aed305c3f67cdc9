"""HTTP over the AWS Common Runtime with boto3's trust store and proxies.

The CRT's HTTP client reads neither ``AWS_CA_BUNDLE`` nor ``HTTPS_PROXY``: whatever boto3
would honour has to be handed to it. This module turns the two into CRT options:

* **Trust store**: the value a botocore client verifies with (``verify=`` of the client,
  else ``AWS_CA_BUNDLE``, else the config file's ``ca_bundle``, else the bundled store):
  a file or a directory of PEM certificates, ``True`` for the system default, ``False``
  for no verification. One TLS context per distinct trust store, built once and shared
  (building one parses the whole bundle: milliseconds).
* **Proxies**: the client config's ``proxies`` if set, else the standard variables
  (``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY``, upper or lower case) read by
  ``urllib.request.getproxies()``, the same function botocore calls. ``NO_PROXY`` is
  applied per host with ``urllib.request.proxy_bypass_environment``. An https origin
  goes through the proxy with ``CONNECT`` (tunnelled TLS, the proxy sees no request); an
  http origin is forwarded. ``user:password@`` in the proxy URL becomes Basic auth.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from aggregator.base.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ProxyEndpoint:
    tls: bool  # https:// proxy URL: the hop to the proxy itself is TLS
    host: str
    port: int
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str, *, variable: str) -> ProxyEndpoint:
        if "://" not in url:
            url = "http://" + url  # as urllib and requests read "host:port"
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{variable} must be an http(s) proxy URL, got a {parts.scheme!r} URL")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as e:
            raise ConfigError(f"{variable} has an invalid port") from e
        return cls(tls=parts.scheme == "https", host=parts.hostname, port=port,
                   username=unquote(parts.username) if parts.username else None,
                   password=unquote(parts.password) if parts.password else None)


@dataclass(frozen=True, slots=True)
class Proxies:
    """Which proxy, if any, each origin goes through. Plain values: pickles into fetch processes."""

    http: ProxyEndpoint | None = None
    https: ProxyEndpoint | None = None
    no_proxy: str = ""

    @classmethod
    def from_mapping(cls, proxies: Mapping[str, str]) -> Proxies:
        """From a ``{"http": url, "https": url, "no": hosts}`` mapping (``getproxies()``'s shape,
        also botocore's ``Config(proxies=...)``)."""
        http_url, https_url = proxies.get("http"), proxies.get("https")
        return cls(
            http=ProxyEndpoint.parse(http_url, variable="HTTP_PROXY") if http_url else None,
            https=ProxyEndpoint.parse(https_url, variable="HTTPS_PROXY") if https_url else None,
            no_proxy=proxies.get("no", "") or "",
        )

    @classmethod
    def from_client(cls, client: Any) -> Proxies:
        """As a botocore client would: its config's ``proxies``, else the environment's."""
        configured = getattr(client.meta.config, "proxies", None)
        if configured:
            return cls.from_mapping(configured)
        import urllib.request

        return cls.from_mapping(urllib.request.getproxies())

    def for_origin(self, host: str, *, tls: bool) -> ProxyEndpoint | None:
        proxy = self.https if tls else self.http
        if proxy is None:
            return None
        # urllib.request costs ~0.1 s to import: only where a NO_PROXY needs it (not in
        # every fetch process). proxy_bypass_environment is public, missing from typeshed.
        import urllib.request

        bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
        if self.no_proxy and bypass(host, {"no": self.no_proxy}):
            return None
        return proxy


def proxy_options(proxy: ProxyEndpoint | None) -> Any:
    """``awscrt.http.HttpProxyOptions`` for ``proxy`` (None: a direct connection)."""
    if proxy is None:
        return None
    from awscrt import http

    tls_options = None
    if proxy.tls:
        tls_options = tls_context(True).new_connection_options()
        tls_options.set_server_name(proxy.host)
    auth = http.HttpProxyAuthenticationType.Basic if proxy.username else http.HttpProxyAuthenticationType.Nothing
    # Legacy: CONNECT for a TLS origin, forwarding (absolute-form request) for plain http.
    return http.HttpProxyOptions(proxy.host, proxy.port, tls_connection_options=tls_options, auth_type=auth,
                                 auth_username=proxy.username, auth_password=proxy.password or "",
                                 connection_type=http.HttpProxyConnectionType.Legacy)


_tls_lock = threading.Lock()


def tls_context(verify: bool | str) -> Any:
    """The CRT TLS context for a trust store: ``True`` (system default), ``False`` (no
    verification), or a CA bundle file or directory. Built once per trust store."""
    with _tls_lock:
        return _tls_context(verify)


@functools.lru_cache(maxsize=8)
def _tls_context(verify: bool | str) -> Any:
    from awscrt import io

    options = io.TlsContextOptions()
    if isinstance(verify, str):
        if os.path.isdir(verify):
            options.override_default_trust_store_from_path(verify, None)
        elif os.path.isfile(verify):
            options.override_default_trust_store_from_path(None, verify)
        else:
            raise ConfigError(f"the CA bundle {verify!r} (AWS_CA_BUNDLE or ca_bundle) does not exist")
    elif verify is False:
        options.verify_peer = False
    return io.ClientTlsContext(options)
