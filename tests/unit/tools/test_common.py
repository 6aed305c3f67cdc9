from __future__ import annotations

import io

import pytest

from aggregator.base.errors import ConfigError
from aggregator.base.settings import ToolSettings
from aggregator.tools.progress import Progress


def test_tool_settings_need_nothing_until_a_command_asks() -> None:
    settings = ToolSettings.from_env({})
    assert settings.archive_prefix == "archives" and settings.idempotency_table_name is None
    with pytest.raises(ConfigError, match="IDEMPOTENCY_TABLE_NAME is required"):
        settings.require("IDEMPOTENCY_TABLE_NAME")
    full = ToolSettings.from_env({"IDEMPOTENCY_TABLE_NAME": " claims ", "MINIO_SECRET_ID": "s",
                                  "AWS_REGION": "eu-west-2", "ARCHIVE_PREFIX": "/a/b/"})
    assert full.require("IDEMPOTENCY_TABLE_NAME") == "claims"
    assert (full.aws_region, full.archive_prefix) == ("eu-west-2", "a/b")


def test_tool_settings_keep_the_functions_guard_against_real_aws() -> None:
    with pytest.raises(ConfigError, match=r"would reach real AWS"):
        ToolSettings.from_env({"USE_MOTO": "true"})
    with pytest.raises(ConfigError, match="prod"):
        ToolSettings.from_env({"USE_MOTO": "true", "ENVIRONMENT": "prod", "AWS_ENDPOINT_URL": "http://127.0.0.1:1"})


def test_progress_off_a_terminal_is_a_plain_periodic_line() -> None:
    now = [0.0]
    stream = io.StringIO()
    progress = Progress("reconcile", stream=stream, interval_s=10, clock=lambda: now[0])
    progress.listed(1000)
    assert stream.getvalue() == ""
    now[0] = 11
    progress.checked(500)
    progress.done()
    assert stream.getvalue() == "reconcile: listed 1,000 object versions, checked 500 (45/s)\n"
