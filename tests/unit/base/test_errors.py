"""The error tree decides what happens to a message: retry, DLQ, or acknowledge."""

from __future__ import annotations

import pytest

from aggregator.base import errors
from aggregator.base.errors import (
    AggregatorError,
    ClaimStoreError,
    ConfigError,
    DeliveryError,
    FetchError,
    MalformedMessage,
    OutOfTime,
    PermanentError,
    RetryableError,
)


@pytest.mark.parametrize("error", [FetchError, ClaimStoreError, DeliveryError, OutOfTime])
def test_retryable(error: type[Exception]) -> None:
    assert issubclass(error, RetryableError)
    assert not issubclass(error, PermanentError)


def test_malformed_is_permanent_only() -> None:
    assert issubclass(MalformedMessage, PermanentError)
    assert not issubclass(MalformedMessage, RetryableError)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
    assert not issubclass(ConfigError, RetryableError | PermanentError)


def test_every_error_is_an_aggregator_error() -> None:
    classes = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, Exception)]
    assert len(classes) == 10  # BadResponse joined the tree, ObjectMissing left it (issue 17)
    for cls in classes:
        assert issubclass(cls, AggregatorError)
        assert cls.__doc__


def test_docstring_draws_every_class() -> None:
    assert errors.__doc__
    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, Exception) and cls is not errors.AggregatorError:
            assert f"── {cls.__name__} " in errors.__doc__, cls.__name__


def test_cause_is_kept() -> None:
    try:
        try:
            raise OSError("connection reset")
        except OSError as e:
            raise FetchError("GET failed") from e
    except FetchError as caught:
        assert isinstance(caught.__cause__, OSError)
