"""The handler's outside contract (CONTRACT.md section 1): its return value and its
deadline. No sockets: the batches below never reach a service."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from aggregator import lambda_app


@dataclass
class Context:
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_name: str = "aggregator"
    invoked_function_arn: str = "arn:aws:lambda:eu-west-2:123456789012:function:aggregator"
    memory_limit_in_mb: int | str = "1024"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in {"IDEMPOTENCY_TABLE_NAME": "claims", "MINIO_SECRET_ID": "minio", "USE_MOTO": "true",
                        "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "ENVIRONMENT": "dev"}.items():
        monkeypatch.setenv(name, value)
    lambda_app.warm_dependencies.cache_clear()
    yield
    lambda_app.warm_dependencies.cache_clear()


def test_an_empty_batch_returns_an_empty_partial_batch_response(configured: None) -> None:
    assert lambda_app.handler({"Records": []}, Context()) == {"batchItemFailures": []}


def test_the_deadline_is_the_time_left_when_the_handler_was_entered(configured: None,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # A context answering a constant, as test harnesses do: the set-up's time must come out
    # of the invocation's, or the lease would end later than the caller computes.
    import time

    from aggregator.pipeline import BatchReport

    seen: dict[str, float] = {}
    real_warm = lambda_app.warm_dependencies

    def slow_warm() -> object:
        deps = real_warm()
        time.sleep(0.3)  # a slow cold start
        return deps

    slow_warm.cache_clear = real_warm.cache_clear  # type: ignore[attr-defined]

    def run_batch(messages: object, *, deps: object, deadline: object, owner: str) -> BatchReport:
        seen["at"] = deadline.at  # type: ignore[attr-defined]
        return BatchReport()

    monkeypatch.setattr(lambda_app, "warm_dependencies", slow_warm)
    monkeypatch.setattr(lambda_app, "_require_minio_secret", lambda deps: None)
    monkeypatch.setattr(lambda_app, "run_batch", run_batch)
    entered = time.time()
    lambda_app.handler({"Records": [{"messageId": "m-1", "body": "{}"}]}, Context())
    assert seen["at"] - entered == pytest.approx(30.0, abs=0.1)
