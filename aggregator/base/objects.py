"""What the fetch layer hands to the archive writer, one item per requested object.

Items arrive in completion order through a bounded queue. A small object arrives whole
(:class:`Fetched`); a large one arrives as :class:`Streamed`, whose chunks the single
writer must consume to the end before it asks for the next item. An object that no longer
exists at the named version is :class:`Missing`; any other failure is :class:`Failed`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from aggregator.base.errors import RetryableError
from aggregator.base.events import ObjectRef


@dataclass(frozen=True, slots=True)
class ObjectHead:
    """The response's view of the version fetched."""

    size: int
    last_modified: datetime  # timezone-aware, UTC
    etag: str  # without quotes
    version_id: str | None


@dataclass(frozen=True, slots=True)
class Fetched:
    ref: ObjectRef
    head: ObjectHead
    body: bytes


@dataclass(slots=True)
class Streamed:
    """A large body, read chunk by chunk by the writer.

    ``chunks`` yields exactly ``head.size`` bytes in total or raises
    :class:`~aggregator.base.errors.FetchError`; the writer then abandons the archive.
    """

    ref: ObjectRef
    head: ObjectHead
    chunks: Iterator[bytes]


@dataclass(frozen=True, slots=True)
class Missing:
    ref: ObjectRef


@dataclass(frozen=True, slots=True)
class Failed:
    ref: ObjectRef
    error: RetryableError


FetchResult = Fetched | Streamed | Missing | Failed
