"""The one settings object, built from the environment and validated when built.

No other module reads ``os.environ``: everything configurable arrives through
:class:`Settings`. Each invalid value raises one :class:`ConfigError` naming the
variable and what it allows, before anything is written anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from aggregator.base.codecs import CODECS, DEFAULT_CODEC, codec
from aggregator.base.errors import ConfigError

T = TypeVar("T")

ENVIRONMENTS = ("dev", "staging", "prod")
# An in-progress claim is written with ExpiresAt = claim time + IDEMPOTENCY_TTL_SECONDS and a
# lease that ends at the deadline + LEASE_GRACE_SECONDS, so the TTL must outlive the longest
# lease, or DynamoDB may delete a live claim under its holder. The code cannot know the
# function's configured timeout when settings are read, so it assumes Lambda's maximum. The
# margin covers clock skew between the function and DynamoDB's TTL clock, and ExpiresAt's
# rounding to whole seconds, with room to spare.
MAX_FUNCTION_TIMEOUT_SECONDS = 900
# Where the delivery layer keeps manifests and published markers (delivery/publish.py):
# archives must not mix with them.
_SIDECAR_FOLDER = "_manifests"
TTL_MARGIN_SECONDS = 300
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}
# Endpoint variables that make the SDK talk to something other than real AWS.
ENDPOINT_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_DYNAMODB",
    "AWS_ENDPOINT_URL_SECRETS_MANAGER",
)


@dataclass(frozen=True, slots=True)
class Settings:
    idempotency_table_name: str
    minio_secret_id: str
    archive_prefix: str = "archives"
    compression: str = DEFAULT_CODEC
    compression_level: int | None = CODECS[DEFAULT_CODEC].default_level
    max_fetch_workers: int = 16
    fetch_processes: int = 1
    spool_max_memory_bytes: int = 64 * 1024 * 1024
    idempotency_ttl_seconds: int = 15 * 24 * 3600
    # How long after an invocation's deadline its claims stay its own (base/deadline.py).
    lease_grace_seconds: int = 30
    environment: str = "dev"
    # Beyond the contract: tuning knobs with safe defaults.
    fetch_queue_depth: int = 64
    zstd_threads: int = 0
    multipart_part_bytes: int = 16 * 1024 * 1024
    # Time kept back from the deadline for upload, verification and commit.
    deadline_reserve_ms: int = 10_000
    # The SDK's region as Lambda sets it: boto3 itself reads only AWS_DEFAULT_REGION.
    aws_region: str | None = None
    # Plain-HTTP MinIO endpoints are refused with ENVIRONMENT=prod unless this is set.
    minio_allow_http: bool = False
    # Keep a Python thread state on the CRT's event-loop thread (aggregator.fetch.threadstate);
    # off: plain awscrt.
    fetch_thread_state_hold: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        compression = _choice(env, "COMPRESSION", tuple(CODECS), DEFAULT_CODEC)
        chosen = codec(compression)
        level = chosen.default_level
        if level is not None:
            level = _int(env, "COMPRESSION_LEVEL", level, chosen.lowest_level, chosen.highest_level,
                         hint=f"for COMPRESSION={compression}")
        else:
            # Unused, but still checked: garbage must not pass silently. Any level some codec
            # accepts is allowed, so switching to none does not require unsetting the level.
            _int(env, "COMPRESSION_LEVEL", 0, 0, max(c.highest_level for c in CODECS.values()),
                 hint=f"(ignored for COMPRESSION={compression})")
        environment = _choice(env, "ENVIRONMENT", ENVIRONMENTS, "dev")
        use_moto = _bool(env, "USE_MOTO")
        if use_moto and environment == "prod":
            raise ConfigError("USE_MOTO is a test-only switch and is refused with ENVIRONMENT=prod")
        if use_moto:
            _check_moto_endpoints(env)
        fetch_processes = _int(env, "FETCH_PROCESSES", 1, 0, 64)
        if fetch_processes == 0:
            fetch_processes = os.cpu_count() or 1
        prefix = env.get("ARCHIVE_PREFIX", "archives").strip("/")
        if prefix and (any(seg in ("", ".", "..") for seg in prefix.split("/")) or not prefix.isprintable()
                       or prefix.split("/")[0] == _SIDECAR_FOLDER):
            raise ConfigError(
                "ARCHIVE_PREFIX must be a plain key prefix: '/'-separated segments of printable characters, "
                f"none empty, '.' or '..', not under {_SIDECAR_FOLDER}/ (the manifests' folder); got {prefix!r}"
            )
        return cls(
            idempotency_table_name=_required(env, "IDEMPOTENCY_TABLE_NAME"),
            minio_secret_id=_required(env, "MINIO_SECRET_ID"),
            archive_prefix=prefix,
            compression=compression,
            compression_level=level,
            max_fetch_workers=_int(env, "MAX_FETCH_WORKERS", 16, 1, 256),
            fetch_processes=fetch_processes,
            spool_max_memory_bytes=_int(env, "SPOOL_MAX_MEMORY_BYTES", 64 * 1024 * 1024, 0, 8 << 30),
            idempotency_ttl_seconds=_int(env, "IDEMPOTENCY_TTL_SECONDS", 15 * 24 * 3600, 60, 10 * 365 * 24 * 3600),
            lease_grace_seconds=_int(env, "LEASE_GRACE_SECONDS", 30, 1, 300),
            environment=environment,
            fetch_queue_depth=_int(env, "FETCH_QUEUE_DEPTH", 64, 1, 4096),
            zstd_threads=_int(env, "ZSTD_THREADS", 0, 0, 64),
            multipart_part_bytes=_int(env, "MULTIPART_PART_BYTES", 16 << 20, 5 << 20, 512 << 20),
            deadline_reserve_ms=_int(env, "DEADLINE_RESERVE_MS", 10_000, 0, 600_000),
            fetch_thread_state_hold=_bool(env, "FETCH_THREAD_STATE_HOLD", default=True),
            aws_region=(env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "").strip() or None,
            minio_allow_http=_bool(env, "MINIO_ALLOW_HTTP"),
        )

    def __post_init__(self) -> None:
        # Checked here rather than in from_env so that a Settings built directly obeys it too.
        floor = ttl_floor_seconds(self.lease_grace_seconds)
        if self.idempotency_ttl_seconds < floor:
            raise ConfigError(
                f"IDEMPOTENCY_TTL_SECONDS must be at least {floor} "
                f"with LEASE_GRACE_SECONDS={self.lease_grace_seconds}: "
                f"a claim must outlive the longest lease (Lambda's maximum timeout, {MAX_FUNCTION_TIMEOUT_SECONDS} s, "
                f"plus the grace) by a margin of {TTL_MARGIN_SECONDS} s; got {self.idempotency_ttl_seconds}"
            )

    @property
    def minio_http_allowed(self) -> bool:
        """Whether the MinIO secret may name an ``http://`` endpoint: outside prod, or when allowed."""
        return self.environment != "prod" or self.minio_allow_http

    @property
    def archive_extension(self) -> str:
        return codec(self.compression).extension


def ttl_floor_seconds(lease_grace_seconds: int) -> int:
    """The shortest IDEMPOTENCY_TTL_SECONDS that outlives every lease, with the margin."""
    return MAX_FUNCTION_TIMEOUT_SECONDS + lease_grace_seconds + TTL_MARGIN_SECONDS


def _check_moto_endpoints(env: Mapping[str, str]) -> None:
    """Refuse USE_MOTO unless every service the function calls is pointed away from AWS."""
    if env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").strip().lower() == "true":
        raise ConfigError(
            "USE_MOTO is set but AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true makes the SDK ignore every "
            "endpoint override: refusing to call real AWS"
        )
    global_endpoint, *per_service = ENDPOINT_VARIABLES
    if env.get(global_endpoint, "").strip():
        return
    missing = [name for name in per_service if not env.get(name, "").strip()]
    if missing:
        # One service left on its default endpoint is enough to reach real AWS.
        raise ConfigError(
            f"USE_MOTO is set but {global_endpoint} is not, nor {', '.join(missing)}: those calls would "
            f"reach real AWS; point {global_endpoint} (or each of them) at a moto server"
        )


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is required and must not be empty")
    return value


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = env.get(name, default).strip().lower() or default
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int, *, hint: str = "") -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    value = _parse(raw, int)
    if value is None or not low <= value <= high:
        where = f" {hint}" if hint else ""
        raise ConfigError(f"{name} must be an integer from {low} to {high}{where}; got {raw!r}")
    return value


def _bool(env: Mapping[str, str], name: str, *, default: bool = False) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false (1/0, yes/no, on/off); got {raw!r}")


def _parse(raw: str, kind: Callable[[str], T]) -> T | None:
    try:
        return kind(raw)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class ToolSettings:
    """What the operator commands (:mod:`aggregator.tools`) read from the function's environment.

    Unlike :class:`Settings` nothing is required up front: ``verify`` of a local file needs
    no variable at all. A command that needs the table or the secret asks for it with
    :meth:`require`, which names the missing variable.
    """

    idempotency_table_name: str | None = None
    minio_secret_id: str | None = None
    archive_prefix: str = "archives"
    aws_region: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ToolSettings:
        env = os.environ if env is None else env
        if _bool(env, "USE_MOTO"):
            if _choice(env, "ENVIRONMENT", ENVIRONMENTS, "dev") == "prod":
                raise ConfigError("USE_MOTO is a test-only switch and is refused with ENVIRONMENT=prod")
            _check_moto_endpoints(env)
        return cls(
            idempotency_table_name=env.get("IDEMPOTENCY_TABLE_NAME", "").strip() or None,
            minio_secret_id=env.get("MINIO_SECRET_ID", "").strip() or None,
            archive_prefix=env.get("ARCHIVE_PREFIX", "archives").strip("/"),
            aws_region=(env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "").strip() or None,
        )

    def require(self, name: str) -> str:
        """The value of the environment variable ``name`` (upper case), or :class:`ConfigError`."""
        value: str | None = getattr(self, name.lower())
        if not value:
            raise ConfigError(f"{name} is required for this command and must not be empty")
        return value
