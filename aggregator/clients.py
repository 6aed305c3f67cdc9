"""Client factories: the only module that builds SDK clients. Nothing is built at import time.

AWS clients (DynamoDB, Secrets Manager, the source S3) come from one botocore session and take
everything the standard SDK way: ``AWS_REGION``, credentials and the endpoint overrides
(``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_S3`` ...) are honoured and never overridden, so no
``endpoint_url`` is passed for them. Only timeouts, retries and pool size are set here.

The MinIO client is the opposite: everything comes from the secret (endpoint, keys,
region, addressing style, trusted CA) and nothing from the AWS environment, so that
neither the function's role credentials nor an ``AWS_ENDPOINT_URL`` can leak into it:

* short connect/read timeouts and a few standard-mode attempts, so a MinIO that is down
  fails in seconds instead of hanging past the Lambda deadline;
* TLS verification is on unless the endpoint is plain http. A ``ca_bundle`` in the secret
  is written to a private temp file (mode 0600, one per distinct bundle, reused while the
  secret is unchanged) and is then the *only* trust anchor: a server certificate that the
  bundle does not sign fails the handshake (fails closed). Without one, the SDK default
  applies (``AWS_CA_BUNDLE`` or the bundled CA store);
* checksums only "when required": every write here carries an explicit
  ``x-amz-checksum-sha256``, and the SDK's automatic CRC trailers (aws-chunked uploads)
  are not understood by every S3-compatible server.

At DEBUG, botocore logs whole request and response bodies, which for Secrets Manager
means the secret itself, and the Authorization header (access key id) of every request.
The contract says the MinIO keys never reach a log line whatever the log level, so a
filter on the SDK's loggers withholds any message carrying a Secrets Manager value and
redacts the keys of every MinIO client built here. It is installed when the Secrets
Manager or MinIO client is built, before the first fetch.

Every session built here shares one botocore data loader: service models, endpoint
rulesets and endpoints.json are read-only data, parsed once per process. Without it the
MinIO client's own session parsed S3's model and endpoints.json a second time in the first
invocation (~60 ms of a cold start). The loader holds no configuration or credentials.
It reads the pickles that the packaging step makes of the JSON files a first invocation
parses, when they match their source (:mod:`aggregator.sdk.models`, ~35 ms).

Sessions are botocore's, not boto3's: a boto3 session registers boto3's client
customisations (S3's transfer methods, DynamoDB's high-level interface ...), which import
s3transfer and boto3.dynamodb when the first client is built (~7 ms of a cold start, measured
by benchmarks/test_cold_start.py) for methods nothing here calls. The factories accept a
boto3 session as well (its botocore session builds the client).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import botocore
import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.httpsession import get_cert_path

from aggregator.claims.dynamodb import DynamoDBJsonClient
from aggregator.sdk import botocore_private, endpoints, models
from aggregator.sdk.crthttp import Proxies

if TYPE_CHECKING:
    from types_boto3_dynamodb.client import DynamoDBClient
    from types_boto3_s3.client import S3Client
    from types_boto3_secretsmanager.client import SecretsManagerClient

    from aggregator.delivery.secret import MinioSecret

DEFAULT_MINIO_CONNECT_TIMEOUT = 3.0
DEFAULT_MINIO_READ_TIMEOUT = 30.0
DEFAULT_MINIO_ATTEMPTS = 3
_AWS_CONNECT_TIMEOUT = 5.0
_AWS_READ_TIMEOUT = 30.0
_AWS_ATTEMPTS = 5
_REDACTED = "***"
# MinIO's shortest access key. Shorter (invalid) values are not redacted: replacing every
# "s" would garble whole log lines.
_MIN_REDACTED_LENGTH = 3
_LOGGER_PREFIXES = ("botocore", "boto3", "urllib3", "s3transfer")
# Loggers that print request or response bodies and headers: created now if need be, so
# that they carry the filter even when their module is imported after the first client.
_BODY_LOGGERS = ("botocore.endpoint", "botocore.parsers", "botocore.auth", "botocore.awsrequest",
                 "botocore.hooks", "botocore.retryhandler", "botocore.retries.standard", "urllib3.connectionpool")
# Members of Secrets Manager requests and responses that hold the secret value.
_SECRET_VALUE_MARKERS = ("SecretString", "SecretBinary")


_loader_lock = threading.Lock()
_loader: models.ServiceDataLoader | None = None


_gc_pause_lock = threading.Lock()
_gc_pauses = 0  # clients being built now; the collector is restored when the last one ends
_gc_was_enabled = True


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """The cyclic garbage collector paused while a client is built.

    Building one allocates tens of thousands of long-lived objects (models, rulesets,
    handlers); each allocation burst runs collections that walk every object alive, which
    made up ~40 % of the first invocation's set-up (benchmarks/test_cold_start.py). Nothing
    is lost: cycles made meanwhile are collected by the next collection after it. Counted,
    so that two threads building clients at once cannot leave it off.
    """
    global _gc_pauses, _gc_was_enabled
    with _gc_pause_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_pause_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def _session(*, region: str | None = None) -> botocore.session.Session:
    """A new session (its own configuration and credentials) on the shared data loader."""
    global _loader
    with _no_cyclic_gc(), _loader_lock:
        session = botocore.session.get_session()
        if _loader is None:
            _loader = models.create_loader(session.get_config_variable("data_path"))
        session.register_component("data_loader", _loader)
        if region:
            session.set_config_variable("region", region)
    return session


def aws_session(*, region: str | None = None) -> botocore.session.Session:
    """A session resolved from the environment. Build clients from it on one thread.

    ``region`` is the environment's own AWS_REGION (Settings.aws_region): botocore reads
    only AWS_DEFAULT_REGION, and Lambda sets both, but a plain ``AWS_REGION=...`` must work too.
    """
    return _session(region=region)


def _client(session: Any, service: str, **kwargs: Any) -> Any:
    """``service``'s client from ``session`` (botocore's, or the one under a boto3 session)."""
    with _no_cyclic_gc():
        return botocore_private.botocore_session(session).create_client(service, **kwargs)


def _aws_config(*, max_pool: int) -> Config:
    return Config(
        max_pool_connections=max_pool,
        connect_timeout=_AWS_CONNECT_TIMEOUT,
        read_timeout=_AWS_READ_TIMEOUT,
        retries={"mode": "standard", "total_max_attempts": _AWS_ATTEMPTS},
    )


def dynamodb_client(session: Any, *, max_pool: int = 10) -> DynamoDBClient:
    client: DynamoDBClient = _client(session, "dynamodb", config=_aws_config(max_pool=max_pool))
    return client


def claims_client(session: Any, *, max_pool: int = 10) -> DynamoDBJsonClient:
    """The claim store's DynamoDB client (see :mod:`aggregator.claims.dynamodb` for why not boto3's).

    The endpoint is the one botocore's endpoint ruleset gives a boto3 client of the same
    session (``AWS_ENDPOINT_URL_DYNAMODB``, ``AWS_REGION``, FIPS, dual-stack ...), the
    credentials the session's own (refreshed as they expire), the trust store the one that
    client verifies with (``AWS_CA_BUNDLE``, the config file's ``ca_bundle``, or the SDK's
    default), and the proxies the ones it would use (``HTTPS_PROXY`` / ``NO_PROXY``).
    """
    resolved = _client(session, "dynamodb", config=_aws_config(max_pool=1))
    verify = botocore_private.client_verify(resolved)
    return DynamoDBJsonClient(
        endpoint_url=endpoints.service_url(resolved, "PutItem"), region=resolved.meta.region_name,
        credentials=session.get_credentials(), verify=str(get_cert_path(True)) if verify is True else verify,
        max_pool=max_pool, connect_timeout=_AWS_CONNECT_TIMEOUT, read_timeout=_AWS_READ_TIMEOUT,
        user_agent=f"aggregator-claims botocore/{botocore.__version__}", proxies=Proxies.from_client(resolved))


def secretsmanager_client(session: Any) -> SecretsManagerClient:
    _redactor.install()
    client: SecretsManagerClient = _client(session, "secretsmanager", config=_aws_config(max_pool=2))
    return client


def source_s3_client(session: Any, *, max_pool: int) -> S3Client:
    """The client for the GETs; ``max_pool`` must cover the fetch concurrency."""
    client: S3Client = _client(session, "s3", config=_aws_config(max_pool=max_pool))
    return client


def minio_client(secret: MinioSecret, *, max_pool: int = 10,
                 connect_timeout: float = DEFAULT_MINIO_CONNECT_TIMEOUT,
                 read_timeout: float = DEFAULT_MINIO_READ_TIMEOUT,
                 max_attempts: int = DEFAULT_MINIO_ATTEMPTS) -> S3Client:
    """An S3 client for the MinIO named by ``secret``; see the module docstring."""
    _redactor.protect(secret.access_key, secret.secret_key)
    config = Config(
        region_name=secret.region,
        signature_version="s3v4",
        s3={"addressing_style": secret.addressing_style},
        max_pool_connections=max_pool,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    verify: str | None = None  # SDK default: verification on, AWS_CA_BUNDLE honoured
    if secret.uses_tls and secret.ca_bundle:
        verify = ca_bundle_path(secret.ca_bundle)
    # A fresh session: the default one may carry a profile's or role's credentials.
    client: S3Client = _client(
        _session(),
        "s3",
        endpoint_url=secret.endpoint_url,
        region_name=secret.region,
        aws_access_key_id=secret.access_key,
        aws_secret_access_key=secret.secret_key,
        aws_session_token=None,
        verify=verify,
        config=config,
    )
    return client


_ca_lock = threading.Lock()
_ca_files: dict[str, str] = {}


def ca_bundle_path(pem: str) -> str:
    """A private file holding ``pem``: created once per distinct bundle, then reused.

    Old files are kept, not deleted on rotation: a client built before the rotation may
    still open connections, and urllib3 reads the file at each new connection.
    """
    digest = hashlib.sha256(pem.encode()).hexdigest()
    with _ca_lock:
        path = _ca_files.get(digest)
        if path is not None and os.path.exists(path):
            return path
        # mkstemp creates the file with mode 0600, owned by this process's user.
        fd, path = tempfile.mkstemp(prefix=f"minio-ca-{digest[:12]}-", suffix=".pem")
        with os.fdopen(fd, "w", encoding="ascii", errors="strict") as handle:
            handle.write(pem if pem.endswith("\n") else pem + "\n")
        _ca_files[digest] = path
        return path


class _RedactSecrets(logging.Filter):
    """Withholds Secrets Manager payloads and redacts registered keys in the SDK's records."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def protect(self, *values: str) -> None:
        with self._lock:
            self._secrets = self._secrets | {v for v in values if len(v) >= _MIN_REDACTED_LENGTH}
        self.install()

    def install(self) -> None:
        # Filters are per logger (children do not inherit them): attach to every SDK
        # logger that exists now and to the ones known to print bodies.
        with self._lock:
            names = set(_BODY_LOGGERS).union(
                name for name in list(logging.root.manager.loggerDict) if name.split(".")[0] in _LOGGER_PREFIXES)
            for name in names:
                logger = logging.getLogger(name)
                if self not in logger.filters:
                    logger.addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(marker in message for marker in _SECRET_VALUE_MARKERS):
            record.msg, record.args = "(message withheld: it holds a Secrets Manager secret value)", None
            return True
        secrets = self._secrets
        if any(s in message for s in secrets):
            # Longest first, so a key that contains another is not half-redacted.
            for secret in sorted(secrets, key=len, reverse=True):
                message = message.replace(secret, _REDACTED)
            record.msg, record.args = message, None
        return True


_redactor = _RedactSecrets()


def sqs_client(session: Any) -> Any:
    """The ingest queue's client, for the operator tools' backfill (``AWS_ENDPOINT_URL_SQS`` honoured)."""
    return _client(session, "sqs", config=_aws_config(max_pool=2))
