"""The fetch's switches and bounds: validated settings, constructor arguments, the child environment."""

from __future__ import annotations

import pytest

from aggregator.base.errors import ConfigError
from aggregator.base.settings import Settings
from aggregator.fetch.engine import Engine
from aggregator.fetch.processes import child_environment
from aggregator.fetch.source import SourceConfig

REQUIRED = {"IDEMPOTENCY_TABLE_NAME": "t", "MINIO_SECRET_ID": "s"}


def test_the_thread_state_hold_is_on_by_default_and_switchable() -> None:
    assert Settings.from_env(REQUIRED).fetch_thread_state_hold is True
    assert Settings.from_env({**REQUIRED, "FETCH_THREAD_STATE_HOLD": "off"}).fetch_thread_state_hold is False
    assert Settings.from_env({**REQUIRED, "FETCH_THREAD_STATE_HOLD": "on"}).fetch_thread_state_hold is True
    with pytest.raises(ConfigError, match="FETCH_THREAD_STATE_HOLD"):
        Settings.from_env({**REQUIRED, "FETCH_THREAD_STATE_HOLD": "maybe"})


@pytest.mark.parametrize("bad", [{"buffer_bytes": 0}, {"max_open_streams": 0}])
def test_engine_bounds_are_validated(bad: dict[str, int]) -> None:
    source = SourceConfig("http://127.0.0.1:9", "eu-west-2", "a", "b", None)
    with pytest.raises(ValueError, match="positive"):
        Engine([], source=source, transport=None, workers=1, queue_depth=1, stream_threshold=1, **bad)  # type: ignore[arg-type]


def test_fetch_processes_get_no_aws_variables() -> None:
    parent = {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/var/lang/lib", "AWS_ACCESS_KEY_ID": "AKID",
              "AWS_SECRET_ACCESS_KEY": "secret", "AWS_SESSION_TOKEN": "token",
              "AWS_CONTAINER_CREDENTIALS_FULL_URI": "x",
              "HTTPS_PROXY": "http://proxy:3128", "PYTHONPATH": "/somewhere"}
    assert child_environment(parent) == {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/var/lang/lib"}
