"""Errors, grouped by what the caller should do about them.

    AggregatorError
    ├── ConfigError        bad environment: fail before anything is written
    ├── RetryableError     may succeed later: release claims, report the messages
    │   ├── FetchError         an S3 GET failed (5xx, throttling, reset, truncated body)
    │   │   └── BadResponse        a 2xx whose headers do not describe what was asked for
    │   ├── ClaimStoreError    DynamoDB failed after retries
    │   ├── DeliveryError      MinIO upload or verification failed
    │   └── OutOfTime          the invocation's deadline is too close to go on
    └── PermanentError     will never succeed as it is: the message goes to the DLQ
        └── MalformedMessage   a body that is no known event shape

An object whose named version is gone is not an error: the fetch layer reports it as a
``Missing`` result (acknowledged and counted).

Service error codes are mapped to this tree in one function per adapter.
Messages never contain credentials: adapters raise with their own wording ``from`` the
original error.
"""

from __future__ import annotations


class AggregatorError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(AggregatorError, ValueError):
    """An environment variable (or the MinIO secret) holds an invalid value."""


class RetryableError(AggregatorError):
    """A transient failure: the same work may succeed on a later delivery."""


class FetchError(RetryableError):
    """An S3 GET failed in a way worth retrying."""


class BadResponse(FetchError, ValueError):
    """A 2xx response whose headers do not describe what was asked for (a server that
    ignored the version pin, a missing Content-Length ...)."""


class ClaimStoreError(RetryableError):
    """The claim table could not be read or written."""


class DeliveryError(RetryableError):
    """The archive could not be stored or verified in MinIO."""


class OutOfTime(RetryableError):
    """Too little of the invocation's time is left to finish safely."""


class PermanentError(AggregatorError):
    """Retrying cannot help."""


class MalformedMessage(PermanentError):
    """An SQS message body that is not one of the accepted event shapes."""
