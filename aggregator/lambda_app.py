"""The Lambda entry point: Powertools around :func:`aggregator.pipeline.run_batch`.

Nothing here runs at import beyond creating Powertools objects (no network, no client):
settings are validated and clients built on the first invocation, then reused by the
warm container. The archive is built for the whole batch at once; Powertools'
``BatchProcessor`` then turns the pipeline's verdict into the partial batch response.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any, Protocol

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from aggregator import clients
from aggregator.base.deadline import Deadline
from aggregator.base.errors import ConfigError, RetryableError
from aggregator.base.settings import Settings
from aggregator.claims.store import ClaimStore
from aggregator.delivery.publish import MinioTarget
from aggregator.delivery.secret import MinioSecretProvider
from aggregator.fetch import fetch_objects, source_config_from_client
from aggregator.pipeline import BatchReport, Dependencies, Message, new_owner, run_batch

SECRET_MAX_AGE_SECONDS = 300
MINIO_CONNECT_TIMEOUT = 3.0
MINIO_READ_TIMEOUT = 30.0

# Powertools reads POWERTOOLS_SERVICE_NAME / POWERTOOLS_METRICS_NAMESPACE itself; the
# defaults below apply only where those are unset.
logger = Logger(service=None)
metrics = Metrics()


def _tracer_if_enabled() -> Tracer | None:
    """The X-Ray tracer, built only when tracing is on.

    Building a Tracer imports the X-Ray SDK even when tracing is disabled (~0.2 s of every
    cold start, measured by benchmarks/test_cold_start.py). Powertools' own test decides,
    so POWERTOOLS_TRACE_DISABLED and "not in Lambda" mean the same as for a Tracer.
    """
    if Tracer._is_tracer_disabled():
        return None
    return Tracer(patch_modules=["botocore"])


tracer = _tracer_if_enabled()

DEFAULT_METRICS_NAMESPACE = "S3MinioAggregator"
# The processor only learns our verdict; what went wrong is logged by the pipeline.
_QUIET = logging.getLogger("aggregator.batch_processor")
_QUIET.disabled = True

_COUNTERS = ("ObjectsArchived", "DuplicatesSkipped", "ObjectsMissing", "EventsIgnored", "StaleEvents",
             "MalformedMessages", "PublishOutcomeUnknown", "BatchItemFailures")


class LambdaContextLike(Protocol):
    aws_request_id: str
    function_name: str
    invoked_function_arn: str
    memory_limit_in_mb: int | str

    def get_remaining_time_in_millis(self) -> int: ...


class BatchItemFailed(Exception):
    """Raised for a record the pipeline could not safely archive: Powertools reports it."""


def _route_all_logging_through_json() -> None:
    """Every line on stdout/stderr must be JSON, including library warnings."""
    root = logging.getLogger()
    if not any(isinstance(h.formatter, LambdaPowertoolsFormatter) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(LambdaPowertoolsFormatter())
        root.handlers = [handler]
        root.setLevel(logging.WARNING)
    # The service logger writes through its own handler (stdout, with the Lambda context);
    # propagating to the root handler as well would write every record twice (stderr).
    logging.getLogger(logger.name).propagate = False
    logging.captureWarnings(True)


def build_dependencies(settings: Settings) -> Dependencies:
    session = clients.aws_session(region=settings.aws_region)
    pool = settings.max_fetch_workers + 4
    claims = ClaimStore(clients.claims_client(session, max_pool=pool), settings.idempotency_table_name,
                        ttl_seconds=settings.idempotency_ttl_seconds)
    provider = MinioSecretProvider(clients.secretsmanager_client(session), settings.minio_secret_id,
                                   max_age_seconds=SECRET_MAX_AGE_SECONDS, allow_http=settings.minio_http_allowed)

    def minio(secret: Any) -> Any:
        return clients.minio_client(secret, max_pool=pool, connect_timeout=MINIO_CONNECT_TIMEOUT,
                                    read_timeout=MINIO_READ_TIMEOUT)

    source_client = clients.source_s3_client(session, max_pool=pool)
    return Dependencies(
        settings=settings,
        claims=claims,
        target=MinioTarget(provider, minio),
        source=lambda: source_config_from_client(source_client, thread_state_hold=settings.fetch_thread_state_hold),
        fetch=fetch_objects,
        logger=logger,  # type: ignore[arg-type]
    )


@functools.cache
def warm_dependencies() -> Dependencies:
    """Settings and clients, built on the first invocation and kept while the sandbox is
    warm (``warm_dependencies.cache_clear()`` forgets them)."""
    _route_all_logging_through_json()
    settings = Settings.from_env()  # ConfigError here, before anything is written
    if metrics.namespace is None:
        metrics.namespace = DEFAULT_METRICS_NAMESPACE
    metrics.set_default_dimensions(environment=settings.environment)
    return build_dependencies(settings)


@logger.inject_lambda_context(log_event=False)
def _handler(event: dict[str, Any], context: LambdaContextLike) -> dict[str, Any]:
    # The time left is read first: the set-up below (clients, the secret) comes out of it.
    entered = time.monotonic()
    remaining_at_entry = context.get_remaining_time_in_millis() / 1000
    try:
        deps = warm_dependencies()
        records = _records(event)
        if records:
            _require_minio_secret(deps)
    except Exception as e:
        # Refused before anything is written (configuration, clients, event shape):
        # say why in a JSON line of our own, not only in the runtime's traceback.
        logger.error("invocation refused", extra={"error": str(e), "error_type": type(e).__name__})
        raise
    if not records:
        # Powertools refuses an event without records; the answer to nothing is no failure.
        return {"batchItemFailures": []}
    try:
        remaining = remaining_at_entry - (time.monotonic() - entered)
        outcome = _run(records, deps=deps, context=context, remaining_s=remaining)
    except Exception:
        logger.exception("invocation failed; the whole batch will be retried")
        metrics.flush_metrics()
        raise
    try:
        failed = set(outcome.failed_message_ids)

        def verdict(record: SQSRecord) -> None:
            if record.message_id in failed:
                raise BatchItemFailed(record.message_id)

        processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False,
                                   logger=_QUIET)
        response: dict[str, Any] = process_partial_response(  # type: ignore[assignment]
            event=event, record_handler=verdict, processor=processor, context=context)  # type: ignore[arg-type]
        return response
    finally:
        metrics.flush_metrics()


handler = tracer.capture_lambda_handler(_handler, capture_response=False) if tracer else _handler


def _require_minio_secret(deps: Dependencies) -> None:
    """The MinIO secret, read before anything is written.

    A MINIO_SECRET_ID that names no secret this function may read, or a secret that is not
    a valid MinIO secret, fails the invocation here with one error naming the variable,
    not after the claims and the GETs. The provider keeps the secret five minutes, so a warm
    invocation sends nothing. Secrets Manager not answering now is the publish's to meet:
    it asks again and, failing, reports the batch for a retry.
    """
    try:
        deps.target.ready()
    except ConfigError as e:
        raise ConfigError(f"MINIO_SECRET_ID ({deps.settings.minio_secret_id!r}) must name a Secrets Manager secret "
                          "this function may read, holding the MinIO JSON object (endpoint_url, access_key, "
                          f"secret_key, bucket): {e}") from e
    except RetryableError:
        pass


def _records(event: Any) -> list[dict[str, Any]]:
    if not isinstance(event, dict) or not isinstance(event.get("Records"), list):
        raise ValueError("the event is not an SQS batch: expected an object with a Records list")
    records: list[dict[str, Any]] = event["Records"]
    for index, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("messageId"), str):
            raise ValueError(f"SQS record {index} has no messageId")
    return records


def _run(records: list[dict[str, Any]], *, deps: Dependencies, context: LambdaContextLike,
         remaining_s: float) -> BatchReport:
    deadline = Deadline.after(remaining_s, grace=deps.settings.lease_grace_seconds, clock=deps.clock)
    messages = [Message(record["messageId"], record.get("body")) for record in records]
    started = time.monotonic()
    outcome = run_batch(messages, deps=deps, deadline=deadline, owner=new_owner(context.aws_request_id))
    _publish_metrics(outcome, elapsed_ms=(time.monotonic() - started) * 1000)
    return outcome


def _publish_metrics(outcome: BatchReport, *, elapsed_ms: float) -> None:
    for name in _COUNTERS:
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=outcome.counts.get(name, 0))
    if outcome.archive_key:
        metrics.add_metric(name="ArchiveBytes", unit=MetricUnit.Bytes, value=outcome.archive_bytes)
        metrics.add_metric(name="ArchiveObjects", unit=MetricUnit.Count, value=outcome.archive_objects)
        metrics.add_metric(name="ArchiveDurationMs", unit=MetricUnit.Milliseconds,
                           value=outcome.counts.get("ArchiveDurationMs", elapsed_ms))
