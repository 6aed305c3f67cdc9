"""Step 3 of a batch: fetch the claimed objects, pinned to their versions, into one archive.

Two ways to stop in time: checking the clock as items arrive, and a timer that cancels the
fetch when no item arrives (a GET that stalls) so that what did arrive is kept.

One bad object fails only its own message: a large body (``Streamed``) is staged whole to a
temporary file beside the spool before its member is started (:mod:`aggregator.archive.
staging`), so a body that breaks on every GET, or that the deadline cuts, costs that object
alone and the archive goes on without it. Small bodies arrive whole and go straight in.
Large refs are fetched after the small ones, so a slow large body does not hold up the
many small objects behind it.

Admission (:func:`admit`) happens before any GET, from the events' sizes: disk (the archive
plus the largest staged body) and time (large bodies at a conservative speed, the upload).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from aggregator.archive.staging import stage
from aggregator.archive.writer import ArchiveWriter, stored_size_bound
from aggregator.base.errors import FetchError, PermanentError, RetryableError
from aggregator.base.events import ObjectRef
from aggregator.base.objects import Fetched, FetchResult, Missing, Streamed
from aggregator.fetch import STREAM_THRESHOLD

if TYPE_CHECKING:
    from logging import Logger

    from aggregator.archive.spool import ArchiveSpool
    from aggregator.base.settings import Settings
    from aggregator.fetch import SourceConfig

# Assumed upload speed when budgeting time for the publish step (conservative).
UPLOAD_BYTES_PER_SECOND = 20 << 20
# Assumed speed of one large body (over the stream threshold) from S3 into its staging file,
# when admitting refs. Large bodies are staged one after another (one writer), so their
# times add up. One GET stream from S3 in the same region gives tens of MiB/s and /tmp
# writes faster still; a quarter of that leaves room for a throttled or resumed GET and for
# a source in another region, and a 15-minute invocation still admits about 6 GiB.
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
    try:
        with fetch(refs, source=source, workers=settings.max_fetch_workers, processes=settings.fetch_processes,
                   queue_depth=settings.fetch_queue_depth, cancel=cancel) as results:
            for item in results:
                oid = ids[item.ref]
                pending.pop(oid, None)
                _record(item, oid=oid, writer=writer, tally=tally, log=log, spool=spool)
                if clock() + writer.stored_bytes / UPLOAD_BYTES_PER_SECOND > stop_at:
                    log.warning("deadline near: archiving what is fetched so far")
                    break
    except FetchError:
        if not out_of_time.is_set() or writer.broken:
            raise
        log.warning("deadline near: a slow fetch was cancelled; archiving what arrived")
    finally:
        timer.cancel()
        timer.join()
    return [ids[ref] for ref in refs if ids[ref] in pending]


def _record(item: FetchResult, *, oid: str, writer: ArchiveWriter, tally: Tally, log: Logger,
            spool: ArchiveSpool) -> None:
    ref = item.ref
    if isinstance(item, Fetched | Streamed):
        try:
            if isinstance(item, Fetched):
                writer.add(item)
            else:
                # Received whole first: a body that breaks or is cancelled costs this object only.
                with stage(item.chunks, size=item.head.size, directory=spool.directory,
                           free_space=spool.free_space, name=f"{ref.bucket}/{ref.key}") as body:
                    writer.add_staged(ref, item.head, body)
        except (RetryableError, PermanentError) as e:
            if writer.broken:  # part of a member is written (a disk error): abandon the archive
                raise
            log.warning("object not archivable now", extra={"bucket": ref.bucket, "key": ref.key, "error": str(e)})
            tally.failed.append(oid)
        else:
            tally.archived.append(oid)
    elif isinstance(item, Missing):
        log.warning("object gone at the named version; acknowledged", extra={"bucket": ref.bucket, "key": ref.key})
        tally.missing.append(oid)
    else:
        log.warning("fetch failed; retried later", extra={"bucket": ref.bucket, "key": ref.key,
                                                          "error": str(item.error)})
        tally.failed.append(oid)


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

    The disk holds the archive and, while one is staged, the largest large body a second
    time: both are counted. A ref that does not fit is skipped and later ones may still fit.
    """
    admission = Admission()
    total = largest_staged = 0
    time_needed = 0.0
    for ref in refs:
        size = ref.size or 0
        staged = max(largest_staged, size) if _is_large(ref) else largest_staged
        needs = expected_seconds(ref)
        if total + size + staged > capacity:
            admission.no_room.append(ref)
        elif time_needed + needs > seconds:
            admission.no_time.append(ref)
        else:
            admission.admitted.append(ref)
            total += size
            largest_staged = staged
            time_needed += needs
    return admission
