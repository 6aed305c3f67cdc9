"""Fetching in this process: the engine over the CRT transport, torn down on exit."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from aggregator.base.events import ObjectRef
from aggregator.base.objects import FetchResult
from aggregator.fetch.engine import Engine
from aggregator.fetch.retry import RetryPolicy
from aggregator.fetch.source import SourceConfig

CHUNK_SIZE = 1 << 20
_SHUTDOWN_WAIT = 2.0  # seconds granted to the CRT's event-loop threads to end


@contextmanager
def fetch_here(refs: Sequence[ObjectRef], *, source: SourceConfig, workers: int, queue_depth: int,
               stream_threshold: int, cancel: threading.Event | None,
               policy: RetryPolicy | None = None) -> Iterator[Iterator[FetchResult]]:
    with running_engine(refs, source=source, workers=workers, queue_depth=queue_depth,
                        stream_threshold=stream_threshold, cancel=cancel, policy=policy) as engine:
        yield engine.results()


@contextmanager
def running_engine(refs: Sequence[ObjectRef], *, source: SourceConfig, workers: int, queue_depth: int,
                   stream_threshold: int, cancel: threading.Event | None, policy: RetryPolicy | None = None,
                   in_child: bool = False) -> Iterator[Engine]:
    """A started engine over the CRT transport; stopped, and its threads ended, on exit."""
    from aggregator.fetch.transport import CrtTransport

    threads = _event_loop_threads(workers, in_child=in_child)
    transport = CrtTransport(source, window=CHUNK_SIZE, event_loop_threads=threads)
    shutdown = transport.shutdown_event
    engine = Engine(refs, source=source, transport=transport, workers=workers, queue_depth=queue_depth,
                    stream_threshold=stream_threshold, cancel=cancel, policy=policy, chunk_size=CHUNK_SIZE)
    try:
        engine.start()
        yield engine
    finally:
        engine.close()
        transport.close()
        del engine, transport
        # The event loops end once the last connection is released; waiting here means no
        # thread of ours outlives the context. The CRT ends its loops from a cleanup thread
        # of its own, joined by join_all_native_threads (documented as main-thread only).
        if shutdown.wait(_SHUTDOWN_WAIT) and threading.current_thread() is threading.main_thread():
            from awscrt.common import join_all_native_threads

            join_all_native_threads(timeout_sec=_SHUTDOWN_WAIT)


def _event_loop_threads(workers: int, *, in_child: bool = False) -> int:
    # In this process two loops keep both cores busy with TLS and parsing; a child is one
    # of several processes sharing the cores, where a second loop only adds wake-ups.
    return 1 if workers < 4 or in_child else 2
