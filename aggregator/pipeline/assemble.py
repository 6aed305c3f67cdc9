"""Step 3 of a batch: fetch the claimed objects, pinned to their versions, into one archive.

Two ways to stop in time: checking the clock as items arrive, and a timer that cancels the
fetch when no item arrives (a GET that stalls) so that what did arrive is kept.

One bad object fails only its own message: a large body (``Streamed``) is staged whole to a
temporary file beside the spool before its member is started (:mod:`aggregator.archive.
staging`), so a body that breaks on every GET, or that the deadline cuts, costs that object
alone and the archive goes on without it. Small bodies arrive whole and go straight in. A
helper thread receives each large body while this thread, the one writer, archives the one
received before (:class:`Recorder`). Large refs are fetched after the small ones, so a slow
large body does not hold up the many small objects behind it.

Admission (:func:`admit`) happens before any GET, from the events' sizes: disk (the archive
plus the two largest staged bodies) and time (large bodies at a conservative speed, the upload).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from aggregator.archive.staging import StagedBody, stage
from aggregator.archive.writer import ArchiveWriter, stored_size_bound
from aggregator.base.errors import FetchError, PermanentError, RetryableError
from aggregator.base.events import ObjectRef
from aggregator.base.objects import Failed, Fetched, FetchResult, Missing, Streamed
from aggregator.fetch import STREAM_THRESHOLD

if TYPE_CHECKING:
    from logging import Logger

    from aggregator.archive.spool import ArchiveSpool
    from aggregator.base.settings import Settings
    from aggregator.fetch import SourceConfig

# Assumed upload speed when budgeting time for the publish step (conservative).
UPLOAD_BYTES_PER_SECOND = 20 << 20
# Assumed speed of one large body (over the stream threshold) from S3 into its staging file,
# when admitting refs. Large bodies are received one at a time, so their times add up. One
# GET stream from S3 in the same region gives tens of MiB/s and /tmp writes faster still; a
# quarter of that leaves room for a throttled or resumed GET and for a source in another
# region, and a 15-minute invocation still admits about 5 GiB (with the upload counted).
LARGE_FETCH_BYTES_PER_SECOND = 8 << 20


class Fetch(Protocol):
    def __call__(self, refs: Sequence[ObjectRef], *, source: SourceConfig, workers: int, processes: int,
                 queue_depth: int, cancel: threading.Event) -> AbstractContextManager[Iterator[FetchResult]]: ...


@dataclass
class Tally:
    """Where each claimed object of this archive ended up."""

    archived: list[str] = field(default_factory=list)  # written into the archive
    missing: list[str] = field(default_factory=list)  # gone at the named version: acknowledged
    failed: list[str] = field(default_factory=list)  # not archived now: its message is retried

    @property
    def left_out(self) -> list[str]:
        """Claimed but not in the archive: these claims must not keep naming it."""
        return self.missing + self.failed


def fetch_into(writer: ArchiveWriter, refs: list[ObjectRef], *, ids: dict[ObjectRef, str], pending: dict[str, int],
               tally: Tally, fetch: Fetch, source: SourceConfig, settings: Settings, stop_at: float,
               clock: Callable[[], float], log: Logger, spool: ArchiveSpool) -> list[str]:
    """Fetch ``refs`` into the archive until done or until ``stop_at`` (epoch seconds).

    ``ids`` maps each ref to its object id (a lookup costs a tenth of computing one);
    ``pending`` (id -> size bound, what is left to write, which the spool reads) loses each
    id as its result arrives. Large bodies are staged beside ``spool`` (same directory,
    same disk probe) before they become members. Returns the ids never fetched because the
    deadline came first.
    """
    if not refs:
        return []
    refs = sorted(refs, key=_is_large)  # small first (stable): a slow large body delays none of them
    cancel, out_of_time = threading.Event(), threading.Event()

    def time_is_up() -> None:
        out_of_time.set()
        cancel.set()

    timer = threading.Timer(max(0.0, stop_at - clock()), time_is_up)
    timer.daemon = True
    timer.start()
    recorder = Recorder(writer, spool=spool, tally=tally, log=log, cancel=cancel, clock=clock, stop_at=stop_at)
    try:
        try:
            with fetch(refs, source=source, workers=settings.max_fetch_workers,
                       processes=settings.fetch_processes, queue_depth=settings.fetch_queue_depth,
                       cancel=cancel) as results:
                for item in results:
                    oid = ids[item.ref]
                    pending.pop(oid, None)
                    recorder.record(item, oid=oid)
                    if clock() + recorder.to_upload / UPLOAD_BYTES_PER_SECOND > stop_at:
                        log.warning("deadline near: archiving what is fetched so far")
                        break
        except FetchError:
            if not out_of_time.is_set() or writer.broken:
                raise
            log.warning("deadline near: a slow fetch was cancelled; archiving what arrived")
        finally:
            timer.cancel()
            timer.join()
        recorder.finish()
    finally:
        recorder.close()
    return [ids[ref] for ref in refs if ids[ref] in pending]


class Recorder:
    """Puts each fetch result where it belongs: in the archive, or in the tally's lists.

    A small body goes straight in. A large body (``Streamed``) is received whole into its
    staging file on a helper thread while this thread, the one writer, archives the large
    body received before it: the network and the codec overlap as they did when bodies were
    streamed into the tar, and a body never becomes a member unless all of it arrived. A GET
    that breaks on every retry, a cancel (the deadline), a size that does not match or a full
    disk fails that object alone (:mod:`aggregator.archive.staging`).

    A large body is also given up, alone, once the upload of what is archived plus that
    body would end past ``stop_at``: a slow body then leaves the others their time to be
    published, rather than holding them until the deadline timer fires.

    ``finish`` archives the last large body received; ``close`` frees whatever is left (an
    archive given up). Raises only when the archive must be abandoned (``writer.broken``).
    """

    def __init__(self, writer: ArchiveWriter, *, spool: ArchiveSpool, tally: Tally, log: Logger,
                 cancel: threading.Event, clock: Callable[[], float] | None = None,
                 stop_at: float = math.inf) -> None:
        self._clock = clock
        self._stop_at = stop_at
        self._writer = writer
        self._spool = spool
        self._tally = tally
        self._log = log
        self._cancel = cancel
        self._ready: _Staging | None = None  # received whole, not yet in the archive

    @property
    def to_upload(self) -> int:
        """At most how many stored bytes the archive will have from what arrived so far."""
        ready = self._ready
        return self._writer.stored_bytes + (ready.item.head.size if ready is not None else 0)

    def record(self, item: FetchResult, *, oid: str) -> None:
        if not isinstance(item, Streamed):
            _record(item, oid=oid, writer=self._writer, tally=self._tally, log=self._log)
            return
        staging = _Staging(item, oid=oid, spool=self._spool, too_late=self._too_late(item.head.size))
        try:
            self._archive_ready()
        except BaseException:
            self._cancel.set()  # stop the helper's GET now: this archive is given up
            staging.join()
            staging.discard()
            raise
        staging.join()
        if staging.received(tally=self._tally, log=self._log):
            self._ready = staging

    def finish(self) -> None:
        self._archive_ready()

    def _too_late(self, size: int) -> Callable[[], bool] | None:
        clock, stop_at, writer = self._clock, self._stop_at, self._writer
        if clock is None or stop_at == math.inf:
            return None
        # Read from the staging thread: stored_bytes only grows; a stale read is one member behind at most.
        return lambda: clock() + (writer.stored_bytes + size) / UPLOAD_BYTES_PER_SECOND > stop_at

    def close(self) -> None:
        ready, self._ready = self._ready, None
        if ready is not None:
            ready.discard()

    def _archive_ready(self) -> None:
        ready, self._ready = self._ready, None
        if ready is not None:
            ready.archive(self._writer, tally=self._tally, log=self._log)


def _record(item: FetchResult, *, oid: str, writer: ArchiveWriter, tally: Tally, log: Logger) -> None:
    ref = item.ref
    if isinstance(item, Fetched):
        try:
            writer.add(item)
        except (FetchError, PermanentError) as e:
            if writer.broken:  # part of a member is written: abandon the archive
                raise
            _not_archivable(ref, e, log=log)
            tally.failed.append(oid)
        else:
            tally.archived.append(oid)
    elif isinstance(item, Missing):
        log.warning("object gone at the named version; acknowledged", extra={"bucket": ref.bucket, "key": ref.key})
        tally.missing.append(oid)
    elif isinstance(item, Failed):
        log.warning("fetch failed; retried later", extra={"bucket": ref.bucket, "key": ref.key,
                                                          "error": str(item.error)})
        tally.failed.append(oid)
    else:
        raise TypeError(f"a Streamed item is staged, not recorded: {ref.key}")


def _not_archivable(ref: ObjectRef, error: BaseException, *, log: Logger) -> None:
    log.warning("object not archivable now", extra={"bucket": ref.bucket, "key": ref.key, "error": str(error)})


class _Staging:
    """One large body received whole into its staging file on a helper thread, which
    touches only that file and the body's stream; the tar writer stays with the caller."""

    def __init__(self, item: Streamed, *, oid: str, spool: ArchiveSpool,
                 too_late: Callable[[], bool] | None = None) -> None:
        self.item = item
        self.oid = oid
        self._spool = spool
        self._too_late = too_late
        self._body: StagedBody | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="stage-body", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ref, head = self.item.ref, self.item.head
        try:
            self._body = stage(self.item.chunks, size=head.size, directory=self._spool.directory,
                               free_space=self._spool.free_space, name=f"{ref.bucket}/{ref.key}",
                               too_late=self._too_late)
        except BaseException as e:  # handed to the writer's thread by received()
            self._error = e

    def join(self) -> None:
        self._thread.join()

    def received(self, *, tally: Tally, log: Logger) -> bool:
        """After join: whether the whole body is staged; if not, the object is failed."""
        if self._body is not None:
            return True
        error = self._error
        if not isinstance(error, RetryableError | PermanentError):
            raise error or RuntimeError("staging ended without a body or an error")
        _not_archivable(self.item.ref, error, log=log)
        tally.failed.append(self.oid)
        return False

    def archive(self, writer: ArchiveWriter, *, tally: Tally, log: Logger) -> None:
        """Copy the staged body into the archive as its next member, then free the file."""
        assert self._body is not None
        ref = self.item.ref
        try:
            writer.add_staged(ref, self.item.head, self._body)
        except (FetchError, PermanentError) as e:
            if writer.broken:  # the file failed part-way (the disk): abandon the archive
                raise
            _not_archivable(ref, e, log=log)
            tally.failed.append(self.oid)
        else:
            tally.archived.append(self.oid)
        finally:
            self.discard()

    def discard(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None


def _is_large(ref: ObjectRef) -> bool:
    return ref.size is not None and ref.size > STREAM_THRESHOLD


def archive_size_bound(refs: Iterable[ObjectRef]) -> int | None:
    """An upper bound of the archive of ``refs`` from their events' sizes (None: unknown)."""
    refs = list(refs)
    if any(ref.size is None for ref in refs):
        return None
    return stored_size_bound((ref.size or 0, sum(len(text.encode("utf-8", "surrogatepass")) for text in (
        ref.bucket, ref.key, ref.etag or "", ref.version_id or "", ref.sequencer or ""))) for ref in refs)


@dataclass
class Admission:
    """Which refs a batch fetches now; the others' messages fail and are retried later."""

    admitted: list[ObjectRef] = field(default_factory=list)
    no_room: list[ObjectRef] = field(default_factory=list)  # the archive and its staging would not fit the disk
    no_time: list[ObjectRef] = field(default_factory=list)  # would not be fetched and uploaded in time

    @property
    def rejected(self) -> list[ObjectRef]:
        return self.no_room + self.no_time


def expected_seconds(ref: ObjectRef) -> float:
    """How long ``ref`` is expected to take, from its event's size: its upload, and for a
    large body its GET into the staging file as well (small GETs overlap by the dozen)."""
    size = ref.size or 0
    seconds = size / UPLOAD_BYTES_PER_SECOND
    if _is_large(ref):
        seconds += size / LARGE_FETCH_BYTES_PER_SECOND
    return seconds


def admit(refs: list[ObjectRef], *, capacity: int, seconds: float = math.inf) -> Admission:
    """The refs, in order, whose sizes (from their events) fit in ``capacity`` bytes of disk
    and whose expected times fit in ``seconds``, the time left for fetching; and the rest.

    The disk holds the archive and, while they are staged, the two largest large bodies a
    second time (one being received while the one before is archived): all are counted. A
    ref that does not fit is skipped, and later ones may still fit.

    One ref whose estimate alone exceeds ``seconds`` is still tried, last and outside the
    others' time: rejecting it would reject it on every delivery until the DLQ, while the
    estimate is conservative and a body the deadline cuts fails alone.
    """
    admission = Admission()
    total = 0
    staged: list[int] = []  # the two largest large bodies admitted so far
    time_needed = 0.0
    long_shot: ObjectRef | None = None
    for ref in refs:
        size = ref.size or 0
        largest = sorted([*staged, size], reverse=True)[:2] if _is_large(ref) else staged
        needs = expected_seconds(ref)
        if total + size + sum(largest) > capacity:
            admission.no_room.append(ref)
        elif time_needed + needs > seconds and (needs <= seconds or long_shot is not None):
            admission.no_time.append(ref)
        else:
            total += size
            staged = largest
            if needs > seconds:
                long_shot = ref
            else:
                admission.admitted.append(ref)
                time_needed += needs
    if long_shot is not None:  # fetched last: large refs come after small ones, in this order
        admission.admitted.append(long_shot)
    return admission
