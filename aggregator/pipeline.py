"""One invocation's work: claim -> fetch -> archive -> publish -> commit.

Everything the batch names goes into ONE archive. The order of steps is what makes each
object land in exactly one archive even when the invocation dies anywhere:

1. parse every message; a malformed one fails alone;
2. claim every object (in progress, lease = our deadline, planned archive key);
   completed claims are duplicates; live claims of others are retried later;
   expired claims of a dead invocation are recovered from its archive if it was published;
3. fetch the claimed objects, pinned to their versions, into one archive in a spool;
4. release the claims of objects that did not make it into the archive (before the
   upload, so every claim still pointing at the archive key is really in it);
5. publish the archive atomically (checksum metadata set with the object), then verify it;
6. commit the claims of the archived objects.

A death after 5 and before 6 leaves in-progress claims naming a published archive: the
next delivery finds the lease expired, reads that archive's manifest and commits there.
A failure before 5 releases the claims, so a retry proceeds at once.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, BinaryIO, Protocol

from aggregator.archive.manifest import read_manifest
from aggregator.archive.spool import ArchiveSpool
from aggregator.archive.writer import ArchiveWriter, stored_size_bound
from aggregator.base.errors import (
    AggregatorError,
    FetchError,
    MalformedMessage,
    OutOfTime,
    PermanentError,
    RetryableError,
)
from aggregator.base.events import ObjectRef, parse_body
from aggregator.base.names import archive_key, new_archive_id, object_id
from aggregator.base.objects import Fetched, FetchResult, Missing, Streamed
from aggregator.base.settings import Settings
from aggregator.claims.store import ClaimOutcome, ClaimStore

if TYPE_CHECKING:
    from logging import Logger

    from aggregator.fetch import SourceConfig

CODEC_BY_EXTENSION = {".tar.zst": "zstd", ".tar.gz": "gzip", ".tar": "none"}
# Assumed upload speed when budgeting time for the publish step (conservative).
_UPLOAD_BYTES_PER_SECOND = 20 << 20
# Publish needs delivery.MIN_START_SECONDS (0.5 s) left to start, plus the release round trip.
_MIN_RESERVE_SECONDS = 1.0
_MAX_CLAIM_KEY_BYTES = 2048  # DynamoDB's partition key limit


class Target(Protocol):
    """Where archives go (aggregator.delivery.MinioTarget)."""

    def publish(self, *, key: str, source: BinaryIO, size: int, sha256_hex: str, part_bytes: int,
                deadline: float | None = None) -> None: ...

    def exists(self, key: str) -> bool: ...

    def open_object(self, key: str) -> BinaryIO | None: ...


class Fetch(Protocol):
    def __call__(self, refs: Sequence[ObjectRef], *, source: SourceConfig, workers: int, processes: int,
                 queue_depth: int, cancel: threading.Event) -> AbstractContextManager[Iterator[FetchResult]]: ...


@dataclass(frozen=True)
class Message:
    message_id: str
    body: str | None


@dataclass
class Dependencies:
    settings: Settings
    claims: ClaimStore
    target: Target
    source: Callable[[], SourceConfig]  # called per invocation: credentials rotate
    fetch: Fetch
    logger: Logger
    clock: Callable[[], float] = time.time


@dataclass
class BatchOutcome:
    failed_message_ids: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    archive_key: str | None = None
    archive_bytes: int = 0
    archive_objects: int = 0


@dataclass
class _Work:
    """Bookkeeping of one batch: which messages wait on which objects."""

    refs: dict[str, ObjectRef] = field(default_factory=dict)  # object id -> ref
    messages_of: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    failed_messages: set[str] = field(default_factory=set)

    def fail_objects(self, ids: Iterable[str]) -> None:
        for oid in ids:
            self.failed_messages.update(self.messages_of[oid])


def run_batch(messages: Sequence[Message], *, deps: Dependencies, deadline: float, owner: str) -> BatchOutcome:
    """Archive every new object the messages name; say which messages must be retried."""
    outcome = BatchOutcome()
    work = _parse(messages, outcome=outcome, logger=deps.logger)
    if work.refs:
        try:
            _archive_batch(work, deps=deps, deadline=deadline, owner=owner, outcome=outcome)
        except RetryableError as e:
            # Claims were released (or left to expire) where the failure happened.
            deps.logger.warning("batch not archived; its messages will be retried", extra={"error": str(e)})
            work.fail_objects(work.refs)
    outcome.failed_message_ids = [m.message_id for m in messages if m.message_id in work.failed_messages]
    outcome.counts["BatchItemFailures"] = len(outcome.failed_message_ids)
    return outcome


def _parse(messages: Sequence[Message], *, outcome: BatchOutcome, logger: Logger) -> _Work:
    work = _Work()
    for message in messages:
        try:
            parsed = parse_body(message.body)
        except MalformedMessage as e:
            logger.error("malformed message", extra={"message_id": message.message_id, "reason": str(e)})
            outcome.counts["MalformedMessages"] += 1
            work.failed_messages.add(message.message_id)
            continue
        ids = [object_id(ref) for ref in parsed.objects]
        if any(len(oid.encode("utf-8")) > _MAX_CLAIM_KEY_BYTES for oid in ids):
            # A forged event with huge version fields: its claim key would not fit
            # DynamoDB's partition key and fail the whole claim transaction.
            logger.error("malformed message", extra={"message_id": message.message_id,
                                                     "reason": "object identity too long for a claim key"})
            outcome.counts["MalformedMessages"] += 1
            work.failed_messages.add(message.message_id)
            continue
        outcome.counts["EventsIgnored"] += parsed.ignored
        for ref, oid in zip(parsed.objects, ids, strict=True):
            if oid in work.refs:
                outcome.counts["DuplicatesSkipped"] += 1  # named twice in one batch
            work.refs.setdefault(oid, ref)
            work.messages_of[oid].add(message.message_id)
    return work


def _archive_batch(work: _Work, *, deps: Dependencies, deadline: float, owner: str, outcome: BatchOutcome) -> None:
    settings, claims, log = deps.settings, deps.claims, deps.logger
    created_at = datetime.fromtimestamp(deps.clock(), tz=UTC)
    archive_id = new_archive_id(created_at)
    key = archive_key(settings.archive_prefix, created_at, archive_id, settings.archive_extension)
    reserve = _reserve(settings, time_left=deadline - deps.clock())
    if deadline - deps.clock() < reserve:
        raise OutOfTime("too little time left to claim and archive anything")

    claimed = claims.claim(list(work.refs), owner=owner, lease_until=deadline, archive_key=key)
    outcome.counts["DuplicatesSkipped"] += len(claimed.completed)
    if claimed.busy:
        log.info("objects held by another invocation; retried later", extra={"objects": len(claimed.busy)})
        work.fail_objects(claimed.busy)
    # Claims in progress and ours, released if we fail. A claim taken over from a dead
    # invocation joins only once its earlier archives were read and do not list it: until
    # then it is the only record that one of them may hold the object.
    held = set(claimed.claimed) - claimed.taken_over.keys()
    try:
        recovered, undecided = _recover(claimed, deps=deps, owner=owner)
        outcome.counts["DuplicatesSkipped"] += len(recovered)
        work.fail_objects(undecided)
        held |= claimed.taken_over.keys() - recovered - undecided
        mine = [oid for oid in claimed.claimed if oid in held]
        if mine:
            _archive_and_publish(mine, held=held, work=work, deps=deps, deadline=deadline, reserve=reserve,
                                 owner=owner, key=key, archive_id=archive_id, created_at=created_at,
                                 outcome=outcome)
    finally:
        if held:
            _release(held, claims=claims, owner=owner, log=log)


def _recover(claimed: ClaimOutcome, *, deps: Dependencies, owner: str) -> tuple[set[str], set[str]]:
    """Commit objects a dead invocation managed to publish before it could commit them.

    Returns (recovered, undecided): undecided objects were taken over from an archive we
    could not read; they are neither archived nor released now (a release would forget
    that archive), so their messages are retried after our lease ends.
    """
    recovered: set[str] = set()
    undecided: set[str] = set()
    listings: dict[str, set[str] | None] = {}  # archive key -> object ids it lists (None: unreadable)
    found_in: defaultdict[str, list[str]] = defaultdict(list)
    for oid, previous_key in claimed.taken_over.items():
        for key in claimed.earlier_archives.get(oid) or [previous_key]:
            if key not in listings:
                listings[key] = _read_listing(key, deps=deps)
            listing = listings[key]
            if listing is None:
                undecided.add(oid)
            elif oid in listing:
                found_in[key].append(oid)
                break
        else:
            continue
        undecided.discard(oid)  # found in a readable archive: decided after all
    for key, ids in found_in.items():
        deps.claims.commit(ids, owner=owner, archive_key=key)
        recovered.update(ids)
        deps.logger.info("recovered objects from a published archive", extra={"archive_key": key, "objects": len(ids)})
    return recovered, undecided


def _read_listing(key: str, *, deps: Dependencies) -> set[str] | None:
    try:
        return _archived_ids(key, target=deps.target)
    except (AggregatorError, ValueError, OSError) as e:
        deps.logger.error("cannot read a dead invocation's archive; its objects wait",
                          extra={"archive_key": key, "error": str(e)})
        return None


def _archived_ids(key: str, *, target: Target) -> set[str]:
    codec = next((c for ext, c in CODEC_BY_EXTENSION.items() if key.endswith(ext)), None)
    if codec is None:
        return set()
    body = target.open_object(key)
    if body is None:
        return set()
    with contextlib.closing(body):
        manifest = read_manifest(body, codec=codec)
    ids = set()
    for entry in manifest.get("objects", []):
        # The claim is keyed by the *event's* identity. An event without a versionId (moto's
        # S3 notifications, say) is keyed by eTag and sequencer, while the manifest records
        # the version the GET answered with: accept both forms, or such an object would be
        # archived again.
        for version_id in dict.fromkeys((entry.get("version_id"), None)):
            ref = ObjectRef(bucket=entry["bucket"], key=entry["key"], size=entry.get("size"), etag=entry.get("etag"),
                            version_id=version_id, sequencer=entry.get("sequencer"))
            ids.add(object_id(ref))
    return ids


@dataclass
class _Tally:
    """Where each claimed object of this archive ended up."""

    archived: list[str] = field(default_factory=list)
    not_archived: list[str] = field(default_factory=list)  # released before the publish


def _archive_and_publish(mine: list[str], *, held: set[str], work: _Work, deps: Dependencies, deadline: float,
                         reserve: float, owner: str, key: str, archive_id: str, created_at: datetime,
                         outcome: BatchOutcome) -> None:
    settings, log = deps.settings, deps.logger
    started = time.monotonic()
    refs = [work.refs[oid] for oid in mine]
    pending = {oid: work.refs[oid].size or 0 for oid in mine}  # upper bound of what is left to write
    tally = _Tally()
    with ArchiveSpool(max_memory=settings.spool_max_memory_bytes, expected_size=archive_size_bound(refs),
                      still_to_write=lambda: sum(pending.values())) as spool:
        refs, too_big = _admit(refs, capacity=spool.capacity())
        if too_big:
            # Only these messages wait for a smaller batch (or the DLQ); the rest go on.
            log.warning("objects do not fit the spool now; retried later", extra={"objects": len(too_big)})
            tally.not_archived += [object_id(ref) for ref in too_big]
            work.fail_objects(tally.not_archived)
            for oid in tally.not_archived:
                pending.pop(oid)
        with ArchiveWriter(spool, codec=settings.compression, level=settings.compression_level,
                           threads=settings.zstd_threads, archive_id=archive_id, created_at=created_at) as writer:
            _fetch_into(writer, refs, ids={work.refs[oid]: oid for oid in mine}, pending=pending, tally=tally,
                        work=work, deps=deps, stop_at=deadline - reserve, outcome=outcome)
            unfinished = [oid for oid in mine if oid in pending]  # never fetched: the deadline came first
            work.fail_objects(unfinished)
            tally.not_archived += unfinished
            summary = writer.finish() if tally.archived else None

        # Step 4: only claims of objects really in the archive may name it from now on.
        if tally.not_archived:
            _release(tally.not_archived, claims=deps.claims, owner=owner, log=log)
            held.difference_update(tally.not_archived)
        if summary is None:
            return
        if _time_left(deps, deadline) < max(reserve / 2, _MIN_RESERVE_SECONDS / 2):
            raise OutOfTime("deadline reached before the archive could be published")
        lost = set(tally.archived) - deps.claims.still_ours(tally.archived, owner=owner)
        if lost:
            # Someone else holds some of these now: publishing could archive them twice.
            held.difference_update(lost)  # theirs: never release them
            raise _ClaimsLost(f"{len(lost)} claims are no longer ours; the archive is not published")
        _publish(spool, key=key, size=summary.size, sha256_hex=summary.sha256_hex, deps=deps, deadline=deadline,
                 archived=tally.archived, held=held)

    # Step 6. From here on the archive is published: never release these claims.
    held.difference_update(tally.archived)
    try:
        deps.claims.commit(tally.archived, owner=owner, archive_key=key)
    except RetryableError:
        # The claims stay in progress naming this archive; the next delivery after our
        # deadline recovers them from its manifest. Retry the messages to get there.
        log.warning("commit failed after publish; recovery will commit", extra={"archive_key": key})
        work.fail_objects(tally.archived)
        raise
    outcome.archive_key = key
    outcome.archive_bytes = summary.size
    outcome.archive_objects = len(tally.archived)
    outcome.counts["ObjectsArchived"] += len(tally.archived)
    outcome.counts["ArchiveDurationMs"] = int((time.monotonic() - started) * 1000)
    log.info("archive published", extra={"archive_key": key, "objects": len(tally.archived), "bytes": summary.size})


def _fetch_into(writer: ArchiveWriter, refs: list[ObjectRef], *, ids: dict[ObjectRef, str], pending: dict[str, int],
                tally: _Tally, work: _Work, deps: Dependencies, stop_at: float, outcome: BatchOutcome) -> None:
    """Fetch ``refs`` into the archive until done or until ``stop_at`` (epoch seconds).
    ``ids`` maps each ref to its object id (a lookup costs a tenth of computing one).

    Two ways to stop in time: checking the clock as items arrive, and a timer that cancels
    the fetch when no item arrives (a GET that stalls) so that what did arrive is kept.
    """
    if not refs:
        return
    settings, log = deps.settings, deps.logger
    cancel, out_of_time = threading.Event(), threading.Event()

    def time_is_up() -> None:
        out_of_time.set()
        cancel.set()

    timer = threading.Timer(max(0.0, stop_at - deps.clock()), time_is_up)
    timer.daemon = True
    timer.start()
    try:
        with deps.fetch(refs, source=deps.source(), workers=settings.max_fetch_workers,
                        processes=settings.fetch_processes, queue_depth=settings.fetch_queue_depth,
                        cancel=cancel) as results:
            for item in results:
                oid = ids[item.ref]
                pending.pop(oid, None)
                _record(item, oid=oid, writer=writer, tally=tally, work=work, outcome=outcome, log=log)
                if deps.clock() + writer.stored_bytes / _UPLOAD_BYTES_PER_SECOND > stop_at:
                    log.warning("deadline near: archiving what is fetched so far")
                    return
    except FetchError:
        if not out_of_time.is_set() or writer.broken:
            raise
        log.warning("deadline near: a slow fetch was cancelled; archiving what arrived")
    finally:
        timer.cancel()
        timer.join()


def _record(item: FetchResult, *, oid: str, writer: ArchiveWriter, tally: _Tally, work: _Work,
            outcome: BatchOutcome, log: Logger) -> None:
    ref = item.ref
    if isinstance(item, Fetched | Streamed):
        try:
            writer.add(item)
        except (FetchError, PermanentError) as e:
            if writer.broken:  # part of a member is written: abandon the archive
                raise
            log.warning("object not archivable now", extra={"bucket": ref.bucket, "key": ref.key, "error": str(e)})
            tally.not_archived.append(oid)
            work.fail_objects([oid])
        else:
            tally.archived.append(oid)
    elif isinstance(item, Missing):
        outcome.counts["ObjectsMissing"] += 1
        log.warning("object gone at the named version; acknowledged", extra={"bucket": ref.bucket, "key": ref.key})
        tally.not_archived.append(oid)
    else:
        log.warning("fetch failed; retried later", extra={"bucket": ref.bucket, "key": ref.key,
                                                          "error": str(item.error)})
        tally.not_archived.append(oid)
        work.fail_objects([oid])


def _publish(spool: ArchiveSpool, *, key: str, size: int, sha256_hex: str, deps: Dependencies, deadline: float,
             archived: list[str], held: set[str]) -> None:
    try:
        deps.target.publish(key=key, source=spool.rewind(), size=size, sha256_hex=sha256_hex,
                            part_bytes=deps.settings.multipart_part_bytes, deadline=deadline)
    except AggregatorError as e:
        try:
            published = _published_anyway(key, target=deps.target, log=deps.logger)
        except _Undecided:
            held.difference_update(archived)  # may be published: leave them to recovery
            raise
        if not published:
            raise
        deps.logger.warning("publish reported an error but the archive is complete", extra={"error": str(e)})


def _published_anyway(key: str, *, target: Target, log: Logger) -> bool:
    """After an ambiguous publish failure: is the archive there after all?

    If we cannot tell, the claims must not be released (a release could let the objects
    be archived twice): re-raise and let the lease expire into the recovery path.
    """
    try:
        return target.exists(key)
    except AggregatorError as e:
        log.error("cannot tell whether the archive was published; claims left to expire",
                  extra={"archive_key": key, "error": str(e)})
        raise _Undecided(str(e)) from e


class _ClaimsLost(RetryableError):
    """A claim changed hands while we archived: abandon the archive, retry the messages."""


class _Undecided(RetryableError):
    """Publish state unknown: keep the claims, fail the messages."""


def _release(ids: Iterable[str], *, claims: ClaimStore, owner: str, log: Logger) -> None:
    ids = list(ids)
    try:
        claims.release(ids, owner=owner)
    except RetryableError as e:
        # Not fatal: the leases end at our deadline and the objects become claimable.
        log.warning("could not release claims; they expire at the deadline", extra={"error": str(e)})


def _time_left(deps: Dependencies, deadline: float) -> float:
    return deadline - deps.clock()


def archive_size_bound(refs: list[ObjectRef]) -> int | None:
    """An upper bound of the archive of ``refs`` from their events' sizes (None: unknown)."""
    if any(ref.size is None for ref in refs):
        return None
    return stored_size_bound((ref.size or 0, sum(len(text.encode("utf-8", "surrogatepass")) for text in (
        ref.bucket, ref.key, ref.etag or "", ref.version_id or "", ref.sequencer or ""))) for ref in refs)


def _admit(refs: list[ObjectRef], *, capacity: int) -> tuple[list[ObjectRef], list[ObjectRef]]:
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


def _reserve(settings: Settings, *, time_left: float) -> float:
    """Time kept back for publish and commit: DEADLINE_RESERVE_MS, but at most a quarter of
    a short invocation (a 4 s invocation keeps 1 s, not 10)."""
    return min(settings.deadline_reserve_ms / 1000, max(_MIN_RESERVE_SECONDS, time_left / 4))


def new_owner(request_id: str) -> str:
    """A token unique to this invocation attempt (a retried request id is a new owner)."""
    return f"{request_id}:{uuid.uuid4().hex[:12]}"
