"""DynamoDB's JSON protocol for the claim store, without botocore's model walk.

Why not the boto3 client: the claim store sends a few large requests per batch
(TransactWriteItems, BatchWriteItem and BatchGetItem of 25-100 items). botocore validates,
serialises and parses each item by walking the service model in Python: measured here,
~0.2 ms of client CPU per object for claim + check + commit, a third of the whole handler's
budget. The items are already in DynamoDB's wire format (``{"S": ...}``), so this client
sends them as they are: ``json.dumps``, SigV4 (:mod:`aggregator.sdk.sigv4`, with the
session's credentials and their refresh), one POST on a urllib3 keep-alive pool, ``json.loads``.

It answers like the boto3 client for the operations the claim store uses: the same
method names and keyword arguments, the same response dicts, and failures raised as
botocore's ``ClientError`` (code, message, and the modelled members such as
``CancellationReasons`` or ``Item`` at the top of ``error.response``) or botocore's
connection errors, so the claim store's retry and error mapping see no difference.
Retries are the claim store's (bounded backoff); this client sends each request once.

Endpoint, region, credentials, CA bundle and proxies are resolved by the factory
(:func:`aggregator.clients.claims_client`) the standard SDK way: the endpoint from
botocore's endpoint ruleset (FIPS, dual-stack, ``AWS_ENDPOINT_URL_DYNAMODB``), the
credentials re-read for every request (botocore refreshes them before they expire), the
trust store the boto3 client would verify with, and ``HTTPS_PROXY`` / ``HTTP_PROXY`` /
``NO_PROXY`` as boto3 reads them (:mod:`aggregator.sdk.crthttp`). Not supported: X-Ray
subsegments per call.
"""

from __future__ import annotations

import json
import zlib
from typing import Any, Protocol
from urllib.parse import urlsplit

import urllib3
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    ReadTimeoutError,
)
from urllib3 import exceptions as urllib3_errors

from aggregator.sdk.crthttp import Proxies
from aggregator.sdk.sigv4 import JsonPostSigner

_TARGET_PREFIX = "DynamoDB_20120810."
_CONTENT_TYPE = "application/x-amz-json-1.0"


class CredentialSource(Protocol):
    """botocore's ``Credentials`` (static or refreshable)."""

    def get_frozen_credentials(self) -> Any: ...


class DynamoDBJsonClient:
    """TransactWriteItems, BatchWriteItem, BatchGetItem, PutItem and DeleteItem over HTTP(S)."""

    def __init__(self, *, endpoint_url: str, region: str, credentials: CredentialSource | None,
                 verify: str | bool = True, max_pool: int = 10, connect_timeout: float = 2.0,
                 read_timeout: float = 10.0, user_agent: str = "aggregator-claims",
                 proxies: Proxies | None = None) -> None:
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) endpoint: {endpoint_url!r}")
        self.endpoint_url = endpoint_url
        self.region = region
        self._url = f"{parts.scheme}://{parts.netloc}{parts.path or '/'}"
        self._path = parts.path or "/"
        self._credentials = credentials
        tls: dict[str, Any] = {}
        if parts.scheme == "https":
            tls = {"cert_reqs": "CERT_REQUIRED", "ca_certs": verify} if isinstance(verify, str) else {
                "cert_reqs": "CERT_REQUIRED" if verify else "CERT_NONE"}
        pool_options: dict[str, Any] = {
            "maxsize": max_pool, "block": False, "retries": False,
            "timeout": urllib3.Timeout(connect=connect_timeout, read=read_timeout), **tls}
        proxy = (proxies or Proxies()).for_origin(parts.hostname, tls=parts.scheme == "https")
        self._proxy: urllib3.ProxyManager | None = None
        self.proxied = proxy is not None
        if proxy is not None:
            scheme = "https" if proxy.tls else "http"
            headers = urllib3.make_headers(proxy_basic_auth=f"{proxy.username}:{proxy.password or ''}") \
                if proxy.username else None
            # CONNECT for an https endpoint, absolute-form requests for plain http.
            self._proxy = urllib3.ProxyManager(f"{scheme}://{proxy.host}:{proxy.port}", proxy_headers=headers,
                                               num_pools=1, **pool_options)
            self._pool = self._proxy.connection_from_url(self._url)
        else:
            self._pool = urllib3.connection_from_url(self._url, **pool_options)
        self._signer = JsonPostSigner(url=self._url, region=region, service="dynamodb", content_type=_CONTENT_TYPE,
                                      user_agent=user_agent)

    # The operations the claim store uses, named and called as on the boto3 client.
    def transact_write_items(self, **params: Any) -> dict[str, Any]:
        return self.call("TransactWriteItems", params)

    def batch_write_item(self, **params: Any) -> dict[str, Any]:
        return self.call("BatchWriteItem", params)

    def batch_get_item(self, **params: Any) -> dict[str, Any]:
        return self.call("BatchGetItem", params)

    def put_item(self, **params: Any) -> dict[str, Any]:
        return self.call("PutItem", params)

    def delete_item(self, **params: Any) -> dict[str, Any]:
        return self.call("DeleteItem", params)

    def close(self) -> None:
        self._pool.close()
        if self._proxy is not None:
            self._proxy.clear()

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        """Send one request; the parsed answer, or ``ClientError`` / a connection error."""
        body = json.dumps(params, separators=(",", ":")).encode()  # ASCII, like botocore: \u escapes
        headers = self._signed_headers(operation, body)
        try:
            if self._proxy is not None:  # the manager writes the request in the proxy's form
                response = self._proxy.urlopen("POST", self._url, body=body, headers=headers, redirect=False,
                                               preload_content=True)
            else:
                response = self._pool.urlopen("POST", self._path, body=body, headers=headers, redirect=False,
                                              preload_content=True, assert_same_host=False)
        except urllib3_errors.NewConnectionError as e:  # first: urllib3 makes it a ConnectTimeoutError
            raise EndpointConnectionError(endpoint_url=self.endpoint_url, error=e) from e
        except urllib3_errors.ConnectTimeoutError as e:
            raise ConnectTimeoutError(endpoint_url=self.endpoint_url, error=e) from e
        except urllib3_errors.ReadTimeoutError as e:
            raise ReadTimeoutError(endpoint_url=self.endpoint_url, error=e) from e
        except urllib3_errors.ProtocolError as e:
            raise ConnectionClosedError(endpoint_url=self.endpoint_url, error=e) from e
        except urllib3_errors.HTTPError as e:
            raise HTTPClientError(error=e) from e
        return _answer(operation, response.status, response.headers, response.data)

    def _signed_headers(self, operation: str, body: bytes) -> dict[str, str]:
        if self._credentials is None:
            raise NoCredentialsError()
        frozen = self._credentials.get_frozen_credentials()
        return self._signer.headers(target=_TARGET_PREFIX + operation, body=body, access_key=frozen.access_key,
                                    secret_key=frozen.secret_key, token=frozen.token)


def _answer(operation: str, status: int, headers: Any, data: bytes) -> dict[str, Any]:
    """The response as botocore shapes it; errors raised as ``ClientError``."""
    expected_crc = headers.get("x-amz-crc32")
    if expected_crc is not None and str(zlib.crc32(data)) != expected_crc.strip():
        # Corrupted in transit: botocore retries these, and so will the claim store.
        raise HTTPClientError(error=f"{operation}: CRC32 of the response does not match x-amz-crc32")
    metadata = {"HTTPStatusCode": status, "RequestId": headers.get("x-amzn-requestid", ""),
                "HTTPHeaders": {k.lower(): v for k, v in headers.items()}}
    try:
        document = json.loads(data) if data else {}
    except ValueError:
        document = None
    if not isinstance(document, dict):
        if status < 300:
            raise HTTPClientError(error=f"{operation}: the response is not a JSON object (HTTP {status})")
        document = {}
    if status < 300:
        document["ResponseMetadata"] = metadata
        return document
    # {"__type": "com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException",
    #  "message": "...", <modelled members such as Item or CancellationReasons>}
    error_type = str(document.pop("__type", "") or headers.get("x-amzn-errortype", "") or status)
    code = error_type.rsplit("#", 1)[-1].split(":", 1)[0]
    message = str(document.get("message") or document.get("Message") or "")
    error_response: Any = {**document, "Error": {"Code": code, "Message": message}, "ResponseMetadata": metadata}
    raise ClientError(error_response, operation)
