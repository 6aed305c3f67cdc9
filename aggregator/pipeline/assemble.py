"""Step 3 of a batch: fetch the claimed objects, pinned to their versions, into one archive.

Two ways to stop in time: checking the clock as items arrive, and a timer that cancels the
fetch when no item arrives (a GET that stalls) so that what did arrive is kept.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from aggregator.archive.writer import ArchiveWriter, stored_size_bound
from aggregator.base.errors import FetchError, PermanentError
from aggregator.base.events import ObjectRef
from aggregator.base.objects import Fetched, FetchResult, Missing, Streamed

if TYPE_CHECKING:
    from logging import Logger

    from aggregator.base.settings import Settings
    from aggregator.fetch import SourceConfig

# Assumed upload speed when budgeting time for the publish step (conservative).
UPLOAD_BYTES_PER_SECOND = 20 << 20


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
               clock: Callable[[], float], log: Logger) -> list[str]:
    """Fetch ``refs`` into the archive until done or until ``stop_at`` (epoch seconds).

    ``ids`` maps each ref to its object id (a lookup costs a tenth of computing one);
    ``pending`` (id -> size bound, what is left to write, which the spool reads) loses each
    id as its result arrives. Returns the ids never fetched because the deadline came first.
    """
    if not refs:
        return []
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
                _record(item, oid=oid, writer=writer, tally=tally, log=log)
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


def _record(item: FetchResult, *, oid: str, writer: ArchiveWriter, tally: Tally, log: Logger) -> None:
    ref = item.ref
    if isinstance(item, Fetched | Streamed):
        try:
            writer.add(item)
        except (FetchError, PermanentError) as e:
            if writer.broken:  # part of a member is written: abandon the archive
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


def archive_size_bound(refs: Iterable[ObjectRef]) -> int | None:
    """An upper bound of the archive of ``refs`` from their events' sizes (None: unknown)."""
    refs = list(refs)
    if any(ref.size is None for ref in refs):
        return None
    return stored_size_bound((ref.size or 0, sum(len(text.encode("utf-8", "surrogatepass")) for text in (
        ref.bucket, ref.key, ref.etag or "", ref.version_id or "", ref.sequencer or ""))) for ref in refs)


def admit(refs: list[ObjectRef], *, capacity: int) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """The refs whose sizes (from their events) fit in ``capacity``, in order, and the rest."""
    admitted: list[ObjectRef] = []
    rejected: list[ObjectRef] = []
    total = 0
    for ref in refs:
        size = ref.size or 0
        if total + size <= capacity:
            admitted.append(ref)
            total += size
        else:
            rejected.append(ref)
    return admitted, rejected
