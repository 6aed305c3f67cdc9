"""The fetch engine of one process: ``workers`` GETs in flight, driven by callbacks.

No Python thread waits on a request. Each of ``workers`` *slots* owns one keep-alive
connection and runs its objects one after another: the callback that completes one GET
starts the next, on the transport's event-loop thread. Measured here, that halves the
client CPU of a small GET compared with one blocked Python thread per request, because no
thread has to be woken per object. One timer thread runs the backoffs, the read-timeout
watchdog and the cancel check.

Back-pressure: a slot takes a *credit* before it starts an object and the consumer gives
it back when it takes the result, so at most ``workers`` GETs are in flight and at most
``workers + queue_depth`` results wait; a slot without a credit parks until the consumer
frees one. Slots also park while the bodies waiting add up to ``BUFFER_BYTES`` (objects
just under ``stream_threshold`` must not fill a Lambda's memory). A large object (over
``stream_threshold``) is handed over as soon as its head arrives; its body stays in the
socket under HTTP flow control (a window of ``chunk_size`` bytes) and moves only as fast
as the consumer reads it. At most ``MAX_OPEN_STREAMS`` large objects are open at once (the
events give the sizes; a head larger than its event said is counted when it arrives): the
writer reads one at a time, and each open one holds its first window.

Timeline of one object on its slot::

    take credit -> [connect] -> sign + send -> head -> body -> complete -> deliver -> next
                        \\ error / 5xx / throttled / timeout: backoff (timer) -> send again
    streamed:  head -> deliver Streamed -> body under flow control -> complete -> next
                        \\ broken mid-way: backoff -> Range from the bytes received -> ...
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from aggregator.base.errors import FetchError
from aggregator.base.events import ObjectRef
from aggregator.base.objects import Failed, Fetched, FetchResult, Missing, ObjectHead, Streamed
from aggregator.fetch import protocol
from aggregator.fetch.protocol import GetTarget, Outcome
from aggregator.fetch.retry import RetryPolicy
from aggregator.fetch.source import SourceConfig
from aggregator.fetch.stream import Chunks, FetchCancelled, StreamState
from aggregator.fetch.timer import Timer
from aggregator.fetch.transport import Connection, Stream, Transport
from aggregator.sdk.endpoints import BucketEndpoint, Origin

__all__ = ["BUFFER_BYTES", "MAX_OPEN_STREAMS", "Engine", "FetchCancelled"]

_DONE = object()
_CANCELLED = object()
_TICK = 0.1  # seconds between cancel and watchdog checks
_POLL = 0.5  # the consumer's longest wait before it checks the cancel event itself
# Defaults of the engine's two memory bounds (keyword arguments of Engine):
BUFFER_BYTES = 64 << 20  # whole bodies waiting for the consumer before the slots pause
# Large objects open at once. The writer reads one stream at a time and each waiting one
# holds its first window (~2 MiB with the CRT's buffer): two keep the next one ready.
MAX_OPEN_STREAMS = 2


class Engine:
    def __init__(self, refs: Sequence[ObjectRef], *, source: SourceConfig, transport: Transport, workers: int,
                 queue_depth: int, stream_threshold: int, cancel: threading.Event | None = None,
                 policy: RetryPolicy | None = None, chunk_size: int = 1 << 20,
                 buffer_bytes: int = BUFFER_BYTES, max_open_streams: int = MAX_OPEN_STREAMS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if (workers < 1 or queue_depth < 1 or stream_threshold < 0 or chunk_size < 1 or buffer_bytes < 1
                or max_open_streams < 1):
            raise ValueError("workers, queue_depth, chunk_size, buffer_bytes and max_open_streams must be positive")
        self._refs = list(refs)
        self._source = source
        self._endpoints: dict[str, BucketEndpoint] = {}
        self._max_open_streams = max_open_streams
        self._read_timeout = source.read_timeout
        self._transport = transport
        self._threshold = stream_threshold
        self._chunk_size = chunk_size
        self._window = chunk_size  # must match the transport's initial window
        self._policy = policy or RetryPolicy()
        self._clock = clock
        self._cancel_event = cancel or threading.Event()
        self._lock = threading.Lock()
        self._next = 0
        self._credits = workers + queue_depth
        self._buffered = 0  # bytes of whole bodies delivered and not yet taken
        self._buffer_limit = max(buffer_bytes, stream_threshold)
        self._parked: list[_Slot] = []
        self._large_open = 0  # jobs of large objects started and not ended
        self._large_waiting: deque[tuple[_Slot, int]] = deque()  # their slots, with the index each took
        self._undelivered = len(self._refs)
        self._cancelled = False
        self._out: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._slots = [_Slot() for _ in range(min(workers, len(self._refs)))]
        self._timer = Timer(self._tick, clock=clock, period=_TICK)
        self._open_stream: StreamState | None = None

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        if not self._refs:
            self._out.put(_DONE)
            return
        self._timer.start()
        for slot in self._slots:
            self._advance(slot)

    def close(self) -> None:
        """Stop everything: no request is started after this, every connection is closed
        and the timer thread is joined. Idempotent."""
        self._cancel_now(signal_consumer=False)
        self._timer.stop()
        for slot in self._slots:
            slot.attempt = None
            slot.conn = None

    # -- consumer side ----------------------------------------------------------------

    def results(self) -> Iterator[FetchResult]:
        """One result per ref, in completion order; raises :class:`FetchCancelled` once
        cancelled."""
        for _, result in self.indexed_results():
            yield result

    def indexed_results(self) -> Iterator[tuple[int, FetchResult]]:
        """Like :meth:`results`, each with the position of its ref in ``refs``."""
        while True:
            self._abandon_open_stream()
            try:
                item = self._out.get(timeout=_POLL)
            except queue.Empty:
                if self._cancel_event.is_set():
                    self._cancel_now(signal_consumer=True)
                continue
            if item is _DONE:
                return
            if item is _CANCELLED:
                raise FetchCancelled("fetch cancelled")
            result = item[1]
            self._release_credit(len(result.body) if isinstance(result, Fetched) else 0)
            if isinstance(result, Streamed) and isinstance(result.chunks, Chunks):
                self._open_stream = result.chunks.state
            yield item

    def ready(self) -> bool:
        """Whether the next result (or the end) is already waiting: no need to block."""
        return not self._out.empty()

    def _abandon_open_stream(self) -> None:
        # The writer must read a stream to its end before asking for the next item; if it
        # did not, free the slot rather than leave its connection waiting for ever.
        state, self._open_stream = self._open_stream, None
        if state is not None and not state.finished:
            state.abandon()

    def _release_credit(self, size: int) -> None:
        with self._lock:
            self._credits += 1
            self._buffered -= size
            woken: list[_Slot] = []
            if self._buffered < self._buffer_limit:
                # Wake as many parked slots as there are credits (each takes one in _advance).
                while self._parked and len(woken) < self._credits:
                    woken.append(self._parked.pop())
        for slot in woken:
            self._advance(slot)

    # -- slot state machine -----------------------------------------------------------

    def _advance(self, slot: _Slot) -> None:
        """The slot is free: start its next object, or park it without a credit (or, for a
        large object, until fewer than ``MAX_OPEN_STREAMS`` are open)."""
        with self._lock:
            ended, slot.job = slot.job, None
            resumed = self._stream_closed() if ended is not None and ended.large else None
            index = self._take_next(slot)
        if resumed is not None:
            self._start(*resumed)
        if index is not None:
            self._start(slot, index)

    def _take_next(self, slot: _Slot) -> int | None:
        """Under the lock: the index this slot starts now, if any."""
        if self._cancelled or self._next >= len(self._refs):
            return None
        if self._credits == 0 or self._buffered >= self._buffer_limit:
            self._parked.append(slot)
            return None
        self._credits -= 1
        index = self._next
        self._next += 1
        size = self._refs[index].size
        if size is not None and size > self._threshold:  # the event says: a stream
            if self._large_open >= self._max_open_streams:
                self._large_waiting.append((slot, index))
                return None
            self._large_open += 1
        return index

    def _stream_closed(self) -> tuple[_Slot, int] | None:
        """Under the lock: a large job ended; the waiting one that may start now, if any."""
        self._large_open -= 1
        if self._large_waiting and not self._cancelled:
            self._large_open += 1
            return self._large_waiting.popleft()
        return None

    def _start(self, slot: _Slot, index: int) -> None:
        ref = self._refs[index]
        large = ref.size is not None and ref.size > self._threshold
        try:
            job = _Job(index, ref, protocol.target(self._bucket_endpoint(ref.bucket), ref))
        except Exception as e:  # an unencodable key: this object alone fails
            if large:
                with self._lock:
                    resumed = self._stream_closed()
                if resumed is not None:
                    self._start(*resumed)
            self._deliver(index, Failed(ref, FetchError(f"cannot build the GET for {_name(ref)}: {e}")))
            self._advance(slot)
            return
        job.large = large
        slot.job = job
        self._try(slot, job)

    def _try(self, slot: _Slot, job: _Job) -> None:
        if self._cancelled:
            return
        if job.stream is not None and job.stream.abandoned:
            self._advance(slot)
            return
        conn = slot.conn
        if conn is not None and slot.origin == job.target.origin and conn.is_open():
            self._send(slot, job, conn)
            return
        slot.conn = None
        if conn is not None:
            _quietly(conn.close)
        slot.origin = job.target.origin
        attempt = _Attempt(self, slot, job, None, self._clock())
        slot.attempt = attempt
        try:
            self._transport.connect(job.target.origin, lambda c, e: self._connected(attempt, c, e))
        except Exception as e:
            self._attempt_failed(attempt, f"cannot connect: {e}", throttled=False)

    def _connected(self, attempt: _Attempt, conn: Connection | None, error: BaseException | None) -> None:
        slot = attempt.slot
        if slot.attempt is not attempt or self._cancelled:
            if conn is not None:
                _quietly(conn.close)
            return
        if conn is None:
            if _is_tls_failure(error):  # a certificate that is not trusted now will not be in a second
                self._finish(slot, attempt.job, Failed(attempt.job.ref, FetchError(
                    f"GET {_name(attempt.job.ref)}: cannot connect: {_describe(error)}")))
                return
            self._attempt_failed(attempt, f"cannot connect: {_describe(error)}", throttled=False)
            return
        slot.conn = conn
        slot.served = 0
        self._send(slot, attempt.job, conn)

    def _send(self, slot: _Slot, job: _Job, conn: Connection) -> None:
        if job.stream is not None and job.stream.abandoned:  # given up while we reconnected
            self._advance(slot)
            return
        attempt = _Attempt(self, slot, job, conn, self._clock())
        attempt.reused = slot.served > 0
        slot.attempt = attempt
        offset = job.stream.received if job.stream is not None else 0
        etag = job.head.etag if job.head is not None else None
        headers = protocol.request_headers(job.ref, job.target, offset=offset, etag=etag)
        try:
            conn.request(job.target, headers, attempt)
        except Exception as e:
            slot.conn = None
            _quietly(conn.close)
            self._attempt_failed(attempt, f"cannot send: {_describe(e)}", throttled=False)

    # -- callbacks (event-loop threads) -----------------------------------------------

    def _on_response(self, attempt: _Attempt) -> None:
        job = attempt.job
        if job.stream is not None and job.stream.abandoned:
            attempt.bad = "stream abandoned"
            if attempt.conn is not None:
                _quietly(attempt.conn.close)  # ends the attempt, and with it the job
            return
        if attempt.status not in (200, 206):
            return  # an error body is small: it fits the initial window
        try:
            if job.stream is None:
                self._on_first_head(attempt)
            else:
                self._on_resumed_head(attempt)
        except protocol.BadResponse as e:
            attempt.bad = str(e)
        if attempt.bad and attempt.conn is not None:
            _quietly(attempt.conn.close)  # do not read a body we will not use

    def _on_first_head(self, attempt: _Attempt) -> None:
        job = attempt.job
        if attempt.status != 200:
            raise protocol.BadResponse(f"HTTP {attempt.status} to a GET without Range")
        head = protocol.parse_head(attempt.headers)
        mismatch = protocol.check_pin(job.ref, head)
        if mismatch:
            raise protocol.BadResponse(mismatch)
        job.head = head
        if head.size > self._threshold:
            if not job.large:  # its event said less: count it now
                with self._lock:
                    self._large_open += 1
                job.large = True
            state = StreamState(owner=job, size=head.size, window=attempt.stream, cancel=self._cancel_event,
                                on_abandon=self._abandon)
            job.stream = state
            self._deliver(job.index, Streamed(job.ref, head, Chunks(state, chunk_size=self._chunk_size)))
        elif head.size > self._window and attempt.stream is not None:
            attempt.stream.update_window(head.size - self._window)

    def _on_resumed_head(self, attempt: _Attempt) -> None:
        job, state = attempt.job, attempt.job.stream
        assert state is not None and job.head is not None
        if attempt.status != 206:
            raise protocol.BadResponse(f"HTTP {attempt.status} to a Range GET")
        start, total = protocol.parse_content_range(attempt.headers)
        etag = protocol.header_map(attempt.headers).get("etag", "").strip('"')
        if start != state.received or total != job.head.size or (etag and etag != job.head.etag):
            raise protocol.BadResponse("the resumed range does not continue the same object")
        state.attach(attempt.stream)

    def _on_complete(self, attempt: _Attempt, error: BaseException | None) -> None:
        slot, job = attempt.slot, attempt.job
        if slot.attempt is not attempt or self._cancelled:
            return
        slot.attempt = None
        if attempt.bad:
            self._finish(slot, job, Failed(job.ref, FetchError(f"GET {_name(job.ref)}: {attempt.bad}")))
            if job.stream is not None:
                job.stream.fail(FetchError(f"GET {_name(job.ref)}: {attempt.bad}"))
            return
        if error is not None or attempt.timed_out:
            slot.conn = None
            if attempt.conn is not None:
                _quietly(attempt.conn.close)
            if attempt.reused and attempt.status == 0 and not attempt.timed_out:
                # A kept-alive connection the server had already closed: not a failure of
                # this object. Try again at once on a new connection, without counting it.
                self._try(slot, job)
                return
            reason = "read timeout" if attempt.timed_out else _describe(error)
            self._attempt_failed(attempt, reason, throttled=False)
            return
        slot.served += 1
        status = attempt.status
        if status == 0:
            self._attempt_failed(attempt, "connection ended before a response", throttled=False)
            return
        outcome, code = protocol.classify(status, b"".join(attempt.parts))
        if job.stream is not None:
            self._stream_attempt_done(attempt, outcome, code)
            return
        if outcome is Outcome.OK:
            assert job.head is not None
            if attempt.received != job.head.size:
                self._attempt_failed(attempt, f"truncated body: {attempt.received} of {job.head.size} bytes",
                                     throttled=False)
            else:
                self._finish(slot, job, Fetched(job.ref, job.head, b"".join(attempt.parts)))
        elif outcome is Outcome.MISSING:
            self._finish(slot, job, Missing(job.ref))
        elif outcome is Outcome.FAIL:
            self._finish(slot, job, Failed(job.ref, FetchError(f"GET {_name(job.ref)}: HTTP {status} {code}")))
        else:
            self._attempt_failed(attempt, f"HTTP {status} {code}", throttled=outcome is Outcome.THROTTLED)

    def _stream_attempt_done(self, attempt: _Attempt, outcome: Outcome, code: str) -> None:
        slot, job, state = attempt.slot, attempt.job, attempt.job.stream
        assert state is not None and job.head is not None
        if outcome is Outcome.OK and state.received == job.head.size:
            state.finish()
            self._advance(slot)
        elif outcome is Outcome.OK:
            self._attempt_failed(attempt, f"body ended at {state.received} of {job.head.size} bytes", throttled=False)
        elif outcome in (Outcome.MISSING, Outcome.FAIL):
            state.fail(FetchError(f"GET {_name(job.ref)} while streaming: HTTP {attempt.status} {code}"))
            self._advance(slot)
        else:
            self._attempt_failed(attempt, f"HTTP {attempt.status} {code}", throttled=outcome is Outcome.THROTTLED)

    # -- retries, results ---------------------------------------------------------------

    def _attempt_failed(self, attempt: _Attempt, reason: str, *, throttled: bool) -> None:
        slot, job = attempt.slot, attempt.job
        if slot.attempt is attempt:
            slot.attempt = None
        if self._cancelled:
            return
        state = job.stream
        if state is not None:
            if state.abandoned:
                self._advance(slot)
                return
            if state.received > job.resume_mark:  # progress since the last resume
                job.resume_mark, job.resumes = state.received, 0
            job.resumes += 1
            if job.resumes > self._policy.resumes:
                state.fail(FetchError(f"GET {_name(job.ref)}: body broke off {job.resumes} times "
                                      f"at {state.received} of {state.size} bytes: {reason}"))
                self._advance(slot)
                return
            failures = job.resumes
        else:
            job.failures += 1
            failures = job.failures
            if failures >= self._policy.attempts:
                self._finish(slot, job, Failed(
                    job.ref, FetchError(f"GET {_name(job.ref)} failed {failures} times: {reason}")))
                return
        self._timer.schedule(self._policy.delay(failures, throttled=throttled), lambda: self._retry(slot, job))

    def _retry(self, slot: _Slot, job: _Job) -> None:
        try:
            self._try(slot, job)
        except Exception as e:  # a bug must cost this object, never leave it unreported
            error = FetchError(f"GET {_name(job.ref)}: internal error: {e!r}")
            if job.stream is not None:
                job.stream.fail(error)
            self._finish(slot, job, Failed(job.ref, error))

    def _finish(self, slot: _Slot, job: _Job, result: FetchResult) -> None:
        if job.stream is None:
            self._deliver(job.index, result)
        self._advance(slot)

    def _deliver(self, index: int, result: FetchResult) -> None:
        with self._lock:
            if self._cancelled:
                return
            self._undelivered -= 1
            if isinstance(result, Fetched):
                self._buffered += len(result.body)
            last = self._undelivered == 0
        self._out.put((index, result))
        if last:
            self._out.put(_DONE)

    # -- cancel, watchdog ---------------------------------------------------------------

    def _cancel_now(self, *, signal_consumer: bool) -> None:
        with self._lock:
            already = self._cancelled
            self._cancelled = True
            self._parked.clear()
            self._large_waiting.clear()
        if already:
            return
        for slot in self._slots:
            job, conn = slot.job, slot.conn
            if job is not None and job.stream is not None:
                job.stream.fail(FetchCancelled("fetch cancelled"))
            if conn is not None:
                _quietly(conn.close)
        if signal_consumer:
            self._out.put(_CANCELLED)

    def _tick(self, now: float) -> None:
        if self._cancel_event.is_set():
            self._cancel_now(signal_consumer=True)
            return
        for slot in self._slots:
            attempt = slot.attempt
            if attempt is None or attempt.conn is None or attempt.completed:
                continue
            state = attempt.job.stream
            if state is not None and state.buffered and not state.abandoned:
                attempt.last_progress = now  # waiting for the reader, not for the network
                continue
            if now - attempt.last_progress > self._read_timeout:
                attempt.timed_out = True
                _quietly(attempt.conn.close)

    # Streams call these from the consumer thread.

    def _bucket_endpoint(self, bucket: str) -> BucketEndpoint:
        endpoint = self._endpoints.get(bucket)
        if endpoint is None:
            endpoint = self._endpoints[bucket] = self._source.bucket_endpoint(bucket)
        return endpoint

    def _abandon(self, state: StreamState) -> None:
        # Closing the connection ends the job's current attempt (a reconnect in progress
        # sends nothing: _send and _on_response check ``abandoned``), and the slot moves on.
        for slot in self._slots:
            if slot.job is state.owner:
                attempt = slot.attempt
                for conn in {id(c): c for c in (slot.conn, attempt.conn if attempt else None) if c}.values():
                    _quietly(conn.close)


class _Slot:
    __slots__ = ("attempt", "conn", "job", "origin", "served")

    def __init__(self) -> None:
        self.served = 0  # responses on the current connection
        self.conn: Connection | None = None
        self.origin: Origin | None = None
        self.job: _Job | None = None
        self.attempt: _Attempt | None = None


class _Job:
    __slots__ = ("failures", "head", "index", "large", "ref", "resume_mark", "resumes", "stream", "target")

    def __init__(self, index: int, ref: ObjectRef, target: GetTarget) -> None:
        self.index = index
        self.ref = ref
        self.target = target
        self.failures = 0
        self.resumes = 0
        self.resume_mark = 0
        self.head: ObjectHead | None = None
        self.stream: StreamState | None = None
        self.large = False  # counted in Engine._large_open


class _Attempt:
    """One request of one job: the transport's handler. Events of an attempt that is no
    longer its slot's current one are ignored."""

    __slots__ = ("bad", "completed", "conn", "engine", "headers", "job", "last_progress", "parts", "received",
                 "reused", "slot", "status", "stream", "timed_out")

    def __init__(self, engine: Engine, slot: _Slot, job: _Job, conn: Connection | None, now: float) -> None:
        self.engine = engine
        self.slot = slot
        self.job = job
        self.conn = conn
        self.last_progress = now
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.parts: list[bytes] = []
        self.received = 0
        self.stream: Stream | None = None
        self.bad = ""
        self.timed_out = False
        self.completed = False
        self.reused = False

    def on_response(self, stream: Stream, status: int, headers: list[tuple[str, str]]) -> None:
        self.stream, self.status, self.headers = stream, status, headers
        self.last_progress = self.engine._clock()
        if self.slot.attempt is self:
            self.engine._on_response(self)

    def on_body(self, chunk: bytes) -> None:
        self.last_progress = self.engine._clock()
        state = self.job.stream
        if state is not None and state.current is self.stream and self.stream is not None:
            state.push(chunk)
        else:
            self.parts.append(chunk)
            self.received += len(chunk)

    def on_complete(self, error: BaseException | None) -> None:
        self.completed = True
        try:
            self.engine._on_complete(self, error)
        except Exception as e:  # a bug must cost one object, never the slot
            self.engine._finish(self.slot, self.job, Failed(self.job.ref, FetchError(f"internal error: {e!r}")))
        finally:
            # The transport's stream refers back to this handler: break the cycle so the
            # connection (and at the end the event loops) are freed without the GC.
            self.stream = None
            self.conn = None


def _name(ref: ObjectRef) -> str:
    version = f" version {ref.version_id}" if ref.version_id else ""
    return f"s3://{ref.bucket}/{ref.key}{version}"


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "unknown error"
    name = getattr(error, "name", "") or error.__class__.__name__
    return f"{name}: {error}" if str(error) and str(error) != name else name


def _is_tls_failure(error: BaseException | None) -> bool:
    return "TLS" in getattr(error, "name", "")


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    # Closing or nudging something already gone: nothing to do about it.
    with contextlib.suppress(Exception):
        fn(*args)
