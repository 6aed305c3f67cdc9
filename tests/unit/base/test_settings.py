"""Settings.from_env: docs/contract.md §2 defaults, one ConfigError per bad value."""

from __future__ import annotations

import dataclasses
import os
import types
from collections.abc import Iterator, Mapping

import pytest

from aggregator.base import settings as settings_module
from aggregator.base.codecs import CODECS
from aggregator.base.errors import AggregatorError, ConfigError
from aggregator.base.settings import ENDPOINT_VARIABLES, Settings

REQUIRED = {"IDEMPOTENCY_TABLE_NAME": "claims-table", "MINIO_SECRET_ID": "aggregator/minio"}


def build(**overrides: str) -> Settings:
    return Settings.from_env({**REQUIRED, **overrides})


def config_error(**overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        build(**overrides)
    assert type(info.value) is ConfigError
    return str(info.value)


# --- defaults ------------------------------------------------------------------------


def test_defaults_are_the_contract_table() -> None:
    s = build()
    assert s.idempotency_table_name == "claims-table"
    assert s.minio_secret_id == "aggregator/minio"
    assert s.archive_prefix == "archives"
    assert s.compression == "zstd"
    assert s.compression_level == 3  # zstd's own default
    assert s.max_fetch_workers == 16
    assert s.fetch_processes == 1
    assert s.spool_max_memory_bytes == 67108864
    assert s.idempotency_ttl_seconds == 1296000
    # Longer than SQS's 14-day maximum retention, so a redelivery still finds its claim.
    assert s.idempotency_ttl_seconds > 14 * 24 * 3600
    assert s.environment == "dev"
    assert s.lease_grace_seconds == 30
    assert s.minio_allow_http is False and s.minio_http_allowed
    assert s.archive_extension == ".tar.zst"


def test_dataclass_defaults_match_from_env_defaults() -> None:
    """Someone building Settings(...) directly in a test gets the same defaults."""
    direct = Settings(idempotency_table_name="claims-table", minio_secret_id="aggregator/minio")
    assert direct == build()


def test_empty_strings_mean_default() -> None:
    """Serverless renders an unset parameter as an empty string: that is the default, not an error."""
    names = ("COMPRESSION", "COMPRESSION_LEVEL", "MAX_FETCH_WORKERS", "FETCH_PROCESSES", "SPOOL_MAX_MEMORY_BYTES",
             "IDEMPOTENCY_TTL_SECONDS", "LEASE_GRACE_SECONDS", "ENVIRONMENT", "USE_MOTO", "MINIO_ALLOW_HTTP")
    assert build(**dict.fromkeys(names, "")) == build()
    assert build(**dict.fromkeys(names, "  ")) == build()


@pytest.mark.parametrize(
    ("codec", "level", "extension"),
    [("zstd", 3, ".tar.zst"), ("gzip", 6, ".tar.gz"), ("none", None, ".tar")],
)
def test_codec_defaults_and_extensions(codec: str, level: int | None, extension: str) -> None:
    s = build(COMPRESSION=codec)
    assert (s.compression, s.compression_level, s.archive_extension) == (codec, level, extension)


def test_choices_are_case_and_space_insensitive() -> None:
    s = build(COMPRESSION=" GZip ", ENVIRONMENT="Staging")
    assert (s.compression, s.environment) == ("gzip", "staging")


def test_settings_are_frozen() -> None:
    s = build()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.compression = "gzip"  # type: ignore[misc]


def test_values_are_taken() -> None:
    s = build(ARCHIVE_PREFIX="/landing/archives/", COMPRESSION="gzip", COMPRESSION_LEVEL="9", MAX_FETCH_WORKERS="64",
              FETCH_PROCESSES="2", SPOOL_MAX_MEMORY_BYTES="0", IDEMPOTENCY_TTL_SECONDS="86400",
              ENVIRONMENT="prod")
    assert s.archive_prefix == "landing/archives"  # slashes at the ends would make empty key segments
    assert (s.compression, s.compression_level) == ("gzip", 9)
    assert (s.max_fetch_workers, s.fetch_processes) == (64, 2)
    assert s.spool_max_memory_bytes == 0
    assert s.idempotency_ttl_seconds == 86400
    assert s.environment == "prod"


@pytest.mark.parametrize("prefix", ["", "/", "//"])
def test_empty_archive_prefix_is_allowed(prefix: str) -> None:
    assert build(ARCHIVE_PREFIX=prefix).archive_prefix == ""


# --- required ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REQUIRED))
@pytest.mark.parametrize("value", [None, "", "   "])
def test_required_variables(name: str, value: str | None) -> None:
    env = dict(REQUIRED)
    if value is None:
        del env[name]
    else:
        env[name] = value
    with pytest.raises(ConfigError, match=name) as info:
        Settings.from_env(env)
    assert "required" in str(info.value)


def test_required_values_are_stripped() -> None:
    assert Settings.from_env({"IDEMPOTENCY_TABLE_NAME": " t ", "MINIO_SECRET_ID": "s\n"}).minio_secret_id == "s"


# --- invalid values: one ConfigError naming the variable and what is allowed ------------


INVALID = [
    # (variable, value, text the message must contain to say what is allowed)
    ("COMPRESSION", "lz4", "zstd, gzip, none"),
    ("COMPRESSION", "zst", "zstd, gzip, none"),
    ("ENVIRONMENT", "production", "dev, staging, prod"),
    ("ENVIRONMENT", "test", "dev, staging, prod"),
    ("USE_MOTO", "maybe", "true or false"),
    ("USE_MOTO", "2", "true or false"),
    ("MAX_FETCH_WORKERS", "0", "from 1 to 256"),
    ("MAX_FETCH_WORKERS", "-4", "from 1 to 256"),
    ("MAX_FETCH_WORKERS", "257", "from 1 to 256"),
    ("MAX_FETCH_WORKERS", "sixteen", "from 1 to 256"),
    ("MAX_FETCH_WORKERS", "16.0", "from 1 to 256"),
    ("FETCH_PROCESSES", "-1", "from 0 to 64"),
    ("FETCH_PROCESSES", "65", "from 0 to 64"),
    ("FETCH_PROCESSES", "auto", "from 0 to 64"),
    ("SPOOL_MAX_MEMORY_BYTES", "-1", "from 0 to"),
    ("SPOOL_MAX_MEMORY_BYTES", "64MiB", "from 0 to"),
    ("SPOOL_MAX_MEMORY_BYTES", "1e6", "from 0 to"),
    ("SPOOL_MAX_MEMORY_BYTES", str((8 << 30) + 1), "from 0 to"),
    ("IDEMPOTENCY_TTL_SECONDS", "0", "from 60 to"),
    ("IDEMPOTENCY_TTL_SECONDS", "15d", "from 60 to"),
    ("IDEMPOTENCY_TTL_SECONDS", "9" * 5000, "from 60 to"),  # beyond int()'s digit limit
    ("COMPRESSION_LEVEL", "high", "from 1 to 22 for COMPRESSION=zstd"),
    ("FETCH_QUEUE_DEPTH", "0", "from 1 to 4096"),
    ("ZSTD_THREADS", "-1", "from 0 to 64"),
    ("MULTIPART_PART_BYTES", str((5 << 20) - 1), "from 5242880 to"),
    ("DEADLINE_RESERVE_MS", "ten", "from 0 to 600000"),
]


@pytest.mark.parametrize(("name", "value", "allowed"), INVALID)
def test_invalid_value_names_variable_and_allowed(name: str, value: str, allowed: str) -> None:
    message = config_error(**{name: value})
    assert message.startswith(name), message
    assert allowed in message
    assert len(message) < 300 + len(value)


def test_config_error_is_a_value_error_and_an_aggregator_error() -> None:
    with pytest.raises(ValueError):
        build(COMPRESSION="brotli")
    with pytest.raises(AggregatorError):
        build(COMPRESSION="brotli")


def test_several_bad_values_give_one_error() -> None:
    with pytest.raises(ConfigError) as info:
        build(COMPRESSION="lz4", MAX_FETCH_WORKERS="0", ENVIRONMENT="qa")
    assert not isinstance(info.value, BaseExceptionGroup)
    assert info.value.__cause__ is None


# --- compression level per codec -------------------------------------------------------


@pytest.mark.parametrize("codec", ["zstd", "gzip"])
def test_compression_level_bounds(codec: str) -> None:
    low, high = CODECS[codec].lowest_level, CODECS[codec].highest_level
    assert build(COMPRESSION=codec, COMPRESSION_LEVEL=str(low)).compression_level == low
    assert build(COMPRESSION=codec, COMPRESSION_LEVEL=str(high)).compression_level == high
    for bad in (low - 1, high + 1):
        message = config_error(COMPRESSION=codec, COMPRESSION_LEVEL=str(bad))
        assert "COMPRESSION_LEVEL" in message
        assert f"from {low} to {high}" in message
        assert f"COMPRESSION={codec}" in message


def test_codec_ranges() -> None:
    assert (CODECS["zstd"].lowest_level, CODECS["zstd"].highest_level) == (1, 22)
    assert (CODECS["gzip"].lowest_level, CODECS["gzip"].highest_level) == (1, 9)


def test_level_valid_for_zstd_is_refused_for_gzip() -> None:
    assert build(COMPRESSION_LEVEL="19").compression_level == 19
    assert "COMPRESSION=gzip" in config_error(COMPRESSION="gzip", COMPRESSION_LEVEL="19")


@pytest.mark.parametrize("value", ["", "0", "3", "22"])
def test_uncompressed_ignores_a_valid_level(value: str) -> None:
    """serverless.yml's default compressionLevel stays set when a stage picks none."""
    assert build(COMPRESSION="none", COMPRESSION_LEVEL=value).compression_level is None


@pytest.mark.parametrize("value", ["high", "-1", "23", "3.5"])
def test_uncompressed_still_refuses_garbage(value: str) -> None:
    """An invalid value fails even where it would be ignored: a typo must not pass silently."""
    message = config_error(COMPRESSION="none", COMPRESSION_LEVEL=value)
    assert message.startswith("COMPRESSION_LEVEL must be an integer from 0 to 22")
    assert "COMPRESSION=none" in message


# --- FETCH_PROCESSES -------------------------------------------------------------------


def test_fetch_processes_zero_means_one_per_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 7)
    assert build(FETCH_PROCESSES="0").fetch_processes == 7


def test_fetch_processes_zero_when_cpu_count_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert build(FETCH_PROCESSES="0").fetch_processes == 1


def test_fetch_processes_one_is_threads_only() -> None:
    assert build(FETCH_PROCESSES="1").fetch_processes == 1


# --- USE_MOTO --------------------------------------------------------------------------

MOTO = "http://127.0.0.1:5000"


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "on", " On "])
def test_use_moto_truthy(value: str) -> None:
    """The switch is only checked, never stored: set, it demands moto endpoints."""
    assert build(USE_MOTO=value, AWS_ENDPOINT_URL=MOTO) == build(AWS_ENDPOINT_URL=MOTO)
    assert "USE_MOTO" in config_error(USE_MOTO=value)


@pytest.mark.parametrize("value", ["0", "false", "no", "off", ""])
def test_use_moto_falsy_needs_no_endpoint(value: str) -> None:
    assert build(USE_MOTO=value) == build()


@pytest.mark.parametrize("environment", ["prod", "PROD", " prod "])
def test_use_moto_refused_in_prod(environment: str) -> None:
    message = config_error(USE_MOTO="1", ENVIRONMENT=environment, AWS_ENDPOINT_URL=MOTO)
    assert "USE_MOTO" in message
    assert "prod" in message


@pytest.mark.parametrize("environment", ["dev", "staging"])
def test_use_moto_allowed_outside_prod(environment: str) -> None:
    assert build(USE_MOTO="1", ENVIRONMENT=environment, AWS_ENDPOINT_URL=MOTO).environment == environment


def test_use_moto_without_endpoint_is_refused() -> None:
    message = config_error(USE_MOTO="1")
    assert "USE_MOTO" in message
    assert "AWS_ENDPOINT_URL" in message


def test_use_moto_with_empty_endpoint_is_refused() -> None:
    assert "USE_MOTO" in config_error(USE_MOTO="1", AWS_ENDPOINT_URL="")


def test_use_moto_with_per_service_endpoints() -> None:
    per_service = {name: MOTO for name in ENDPOINT_VARIABLES if name != "AWS_ENDPOINT_URL"}
    assert build(USE_MOTO="1", **per_service) == build()


@pytest.mark.parametrize("covered", [name for name in ENDPOINT_VARIABLES if name != "AWS_ENDPOINT_URL"])
def test_use_moto_with_one_service_endpoint_is_refused(covered: str) -> None:
    """Only S3 pointed at moto would send DynamoDB and Secrets Manager calls to real AWS."""
    message = config_error(USE_MOTO="1", **{covered: MOTO})
    assert "USE_MOTO" in message
    assert "AWS_ENDPOINT_URL" in message


def test_use_moto_refused_when_endpoint_overrides_are_ignored() -> None:
    """botocore drops every endpoint override when this is set: the calls would go to real AWS."""
    message = config_error(USE_MOTO="1", AWS_ENDPOINT_URL=MOTO, AWS_IGNORE_CONFIGURED_ENDPOINT_URLS="true")
    assert "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS" in message


def test_the_settings_object_keeps_no_use_moto_field() -> None:
    assert "use_moto" not in {f.name for f in dataclasses.fields(Settings)}


# --- IDEMPOTENCY_TTL_SECONDS floor and LEASE_GRACE_SECONDS ------------------------------


def test_a_ttl_shorter_than_the_longest_lease_is_refused() -> None:
    """60 s would let DynamoDB delete a live claim under its holder."""
    message = config_error(IDEMPOTENCY_TTL_SECONDS="60")
    assert message.startswith("IDEMPOTENCY_TTL_SECONDS must be at least 1230 ")
    assert "LEASE_GRACE_SECONDS=30" in message and "got 60" in message


@pytest.mark.parametrize(("grace", "floor"), [("1", 1201), ("30", 1230), ("300", 1500)])
def test_the_ttl_floor_is_the_longest_lease_plus_the_margin(grace: str, floor: int) -> None:
    assert settings_module.ttl_floor_seconds(int(grace)) == floor == 900 + int(grace) + 300
    assert build(LEASE_GRACE_SECONDS=grace, IDEMPOTENCY_TTL_SECONDS=str(floor)).idempotency_ttl_seconds == floor
    assert "IDEMPOTENCY_TTL_SECONDS" in config_error(LEASE_GRACE_SECONDS=grace, IDEMPOTENCY_TTL_SECONDS=str(floor - 1))


def test_one_hour_stays_a_valid_ttl() -> None:
    assert build(IDEMPOTENCY_TTL_SECONDS="3600", LEASE_GRACE_SECONDS="300").idempotency_ttl_seconds == 3600


def test_a_settings_built_directly_obeys_the_ttl_floor() -> None:
    with pytest.raises(ConfigError, match="IDEMPOTENCY_TTL_SECONDS"):
        Settings(idempotency_table_name="t", minio_secret_id="s", idempotency_ttl_seconds=60)


@pytest.mark.parametrize("bad", ["0", "301", "-1", "thirty"])
def test_lease_grace_range(bad: str) -> None:
    message = config_error(LEASE_GRACE_SECONDS=bad)
    assert message.startswith("LEASE_GRACE_SECONDS must be an integer from 1 to 300")


# --- MINIO_ALLOW_HTTP ------------------------------------------------------------------


@pytest.mark.parametrize(("environment", "allow", "allowed"), [
    ("dev", "", True), ("staging", "", True), ("prod", "", False), ("prod", "false", False), ("prod", "true", True),
    ("dev", "true", True),
])
def test_minio_http_is_allowed_outside_prod_or_when_set(environment: str, allow: str, allowed: bool) -> None:
    assert build(ENVIRONMENT=environment, MINIO_ALLOW_HTTP=allow).minio_http_allowed is allowed


def test_minio_allow_http_is_validated() -> None:
    assert config_error(MINIO_ALLOW_HTTP="maybe").startswith("MINIO_ALLOW_HTTP must be true or false")


# --- ARCHIVE_PREFIX --------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["a//b", "../archives", "archives/..", "a/./b", ".", "archives\n", "ar\x00c",
                                    "_manifests", "_manifests/archives"])
def test_unsafe_archive_prefix(prefix: str) -> None:
    message = config_error(ARCHIVE_PREFIX=prefix)
    assert message.startswith("ARCHIVE_PREFIX")
    assert "segments" in message  # says what a plain prefix is


@pytest.mark.parametrize("prefix", ["archives", "a/b/c", "prod archives", "archivés", "a.b/..c/d.."])
def test_plain_archive_prefix(prefix: str) -> None:
    assert build(ARCHIVE_PREFIX=prefix).archive_prefix == prefix


def test_unset_archive_prefix_is_the_default() -> None:
    assert Settings.from_env(REQUIRED).archive_prefix == "archives"


# --- environment access ----------------------------------------------------------------


class _RecordingEnv(Mapping[str, str]):
    """A read-only mapping that records which variables were asked for."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("from_env must look variables up by name, not scan the environment")

    def __len__(self) -> int:
        return len(self._values)


class _NoEnviron:
    """Stands in for the ``os`` module: any read of ``environ`` fails the test."""

    @property
    def environ(self) -> Mapping[str, str]:
        raise AssertionError("os.environ was read although a mapping was given")

    @staticmethod
    def cpu_count() -> int:
        return 3


def test_from_env_with_a_mapping_never_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPRESSION", "lz4")  # would fail if it leaked in
    monkeypatch.setattr(settings_module, "os", _NoEnviron())
    env = _RecordingEnv({**REQUIRED, "FETCH_PROCESSES": "0", "USE_MOTO": "1", "AWS_ENDPOINT_URL": MOTO})
    s = Settings.from_env(env)
    assert s.fetch_processes == 3
    assert s.compression == "zstd"
    assert "COMPRESSION" in env.asked
    assert "AWS_ENDPOINT_URL" in env.asked


def test_from_env_accepts_any_read_only_mapping() -> None:
    assert Settings.from_env(types.MappingProxyType(REQUIRED)) == build()


def test_from_env_without_a_mapping_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in REQUIRED.items():
        monkeypatch.setenv(name, value)
    for name in ("ARCHIVE_PREFIX", "COMPRESSION_LEVEL", "MAX_FETCH_WORKERS", "FETCH_PROCESSES", "USE_MOTO",
                 "ENVIRONMENT", "SPOOL_MAX_MEMORY_BYTES", "IDEMPOTENCY_TTL_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COMPRESSION", "gzip")
    assert Settings.from_env().compression == "gzip"
