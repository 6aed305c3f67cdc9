"""Version-pinned S3 GETs, many at a time, in this process or in child processes.

    with fetch_objects(refs, source=source, workers=16, processes=1, queue_depth=64) as results:
        for result in results:  # Fetched | Streamed | Missing | Failed, in completion order
            ...

Modules: ``source`` (where and how to sign), ``protocol`` (GetObject rules: URLs, pins,
statuses), ``retry`` (backoff), ``transport`` (signed HTTP over the AWS CRT), ``engine``
(callback-driven GETs of one process), ``local`` (the engine here), ``processes`` /
``child`` / ``frames`` (the engine in child processes, results framed over pipes).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from aggregator.base.events import ObjectRef
from aggregator.base.objects import FetchResult
from aggregator.fetch.source import SourceConfig, source_config_from_client
from aggregator.fetch.stream import FetchCancelled

__all__ = ["STREAM_THRESHOLD", "FetchCancelled", "SourceConfig", "fetch_objects", "source_config_from_client"]

# Objects larger than this arrive as ``Streamed`` (their bodies never wait whole in memory).
STREAM_THRESHOLD = 8 << 20


@contextmanager
def fetch_objects(refs: Sequence[ObjectRef], *, source: SourceConfig, workers: int, processes: int,
                  queue_depth: int, stream_threshold: int = STREAM_THRESHOLD, cancel: threading.Event | None = None
                  ) -> Iterator[Iterator[FetchResult]]:
    """Yields an iterator of FetchResult (aggregator.base.objects), one per ref, in completion order.

    ``workers`` GETs are in flight per process; ``processes > 1`` runs that many child
    processes, each fetching its share. At most about ``queue_depth`` results wait for the
    consumer (per process), so fetching pauses when the writer is behind. Objects larger
    than ``stream_threshold`` arrive as :class:`Streamed`, to be read to the end before the
    next item is asked for.

    Setting ``cancel``, leaving the block early or an exception in it stops every GET; the
    iterator then raises :class:`FetchCancelled` (a ``FetchError``). On exit no thread or
    child process of the fetch is left running.
    """
    if workers < 1 or processes < 1 or queue_depth < 1 or stream_threshold < 0:
        raise ValueError("workers, processes and queue_depth must be at least 1")
    # Each bucket's endpoint is resolved once for the whole batch (botocore's ruleset).
    source = source.for_buckets(ref.bucket for ref in refs)
    if processes > 1 and len(refs) > 1:
        source = source.for_processes()  # plain values: endpoints and a credential snapshot
        from aggregator.fetch.processes import fetch_in_children

        with fetch_in_children(refs, source=source, workers=workers, processes=min(processes, len(refs)),
                               queue_depth=queue_depth, stream_threshold=stream_threshold,
                               cancel=cancel) as results:
            yield results
    else:
        from aggregator.fetch.local import fetch_here

        with fetch_here(refs, source=source, workers=workers, queue_depth=queue_depth,
                        stream_threshold=stream_threshold, cancel=cancel) as results:
            yield results
