"""One invocation's batch: its messages, the claims it holds, its clock, and its outcome.

:class:`Batch` is the only owner of the claims it holds (``_held``): a claim leaves that
set only by being settled, and whatever is still in it when the batch ends is released,
because by construction it names an archive that is proven never to hold its object.
Claims whose archive may still appear (a publish with an unknown outcome) leave ``_held``
without a release and stay until the lease ends; a later delivery's recovery decides.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from aggregator.archive.spool import ArchiveSpool
from aggregator.archive.writer import ArchiveSummary, ArchiveWriter
from aggregator.base.errors import MalformedMessage, OutOfTime, RetryableError
from aggregator.base.events import ObjectRef, parse_body
from aggregator.base.names import archive_key, new_archive_id, object_id
from aggregator.delivery.publish import Publication, PublishOutcome
from aggregator.pipeline import recovery
from aggregator.pipeline.assemble import Fetch, Tally, admit, archive_size_bound, fetch_into

if TYPE_CHECKING:
    from logging import Logger

    from aggregator.base.deadline import Deadline
    from aggregator.base.settings import Settings
    from aggregator.claims.store import ClaimStore
    from aggregator.fetch import SourceConfig

# Publish needs the write margin left to start, plus the release round trip.
_MIN_RESERVE_SECONDS = 1.0
_MAX_CLAIM_KEY_BYTES = 2048  # DynamoDB's partition key limit
_LOGGED_OBJECTS = 10  # objects named in one log line; the count says how many more


class Target(Protocol):
    """Where archives go (:class:`aggregator.delivery.publish.MinioTarget`)."""

    def publish(self, *, key: str, source: BinaryIO, size: int, sha256_hex: str, manifest: bytes,
                part_bytes: int, deadline: Deadline | None = None) -> Publication: ...

    def listing(self, key: str) -> dict[str, Any] | None: ...

    def ready(self) -> object: ...

    def open_object(self, key: str) -> BinaryIO | None: ...


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
class BatchReport:
    """What the batch did: the messages to retry, the metrics, the archive it published."""

    failed_message_ids: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    archive_key: str | None = None
    archive_bytes: int = 0
    archive_objects: int = 0


def run_batch(messages: Sequence[Message], *, deps: Dependencies, deadline: Deadline, owner: str) -> BatchReport:
    """Archive every new object the messages name; say which messages must be retried."""
    return Batch(deps=deps, deadline=deadline, owner=owner).run(messages)


def new_owner(request_id: str) -> str:
    """A token unique to this invocation attempt (a retried request id is a new owner)."""
    return f"{request_id}:{uuid.uuid4().hex[:12]}"


class Batch:
    def __init__(self, *, deps: Dependencies, deadline: Deadline, owner: str) -> None:
        self._deps = deps
        self._settings = deps.settings
        self._log = deps.logger
        self._deadline = deadline
        self._owner = owner
        self.report = BatchReport()
        self._refs: dict[str, ObjectRef] = {}  # object id -> ref, in arrival order
        self._messages_of: defaultdict[str, set[str]] = defaultdict(set)
        self._failed_messages: set[str] = set()
        self._settled: set[str] = set()  # archived, duplicates, gone: their part is done
        self._held: set[str] = set()  # our claims on objects in no archive that may appear
        created_at = datetime.fromtimestamp(deps.clock(), tz=UTC)
        self._archive_id = new_archive_id(created_at)
        self._created_at = created_at
        self._key = archive_key(self._settings.archive_prefix, created_at, self._archive_id,
                                self._settings.archive_extension)

    def run(self, messages: Sequence[Message]) -> BatchReport:
        self._parse(messages)
        self._refuse_stale()
        if self._refs:
            try:
                self._archive()
            except RetryableError as e:
                self._log.warning("batch not archived; its messages will be retried", extra={"error": str(e)})
                self._fail(oid for oid in self._refs if oid not in self._settled)
            finally:
                self._release(self._held)
        self.report.failed_message_ids = [m.message_id for m in messages if m.message_id in self._failed_messages]
        self.report.counts["BatchItemFailures"] = len(self.report.failed_message_ids)
        return self.report

    # -- step 1: messages -> objects -------------------------------------------------------

    def _parse(self, messages: Sequence[Message]) -> None:
        counts = self.report.counts
        for message in messages:
            try:
                parsed = parse_body(message.body)
                ids = [object_id(ref) for ref in parsed.objects]
                if any(len(oid.encode("utf-8")) > _MAX_CLAIM_KEY_BYTES for oid in ids):
                    # A forged event with huge version fields: its claim key would not fit.
                    raise MalformedMessage("object identity too long for a claim key")
            except MalformedMessage as e:
                self._log.error("malformed message", extra={"message_id": message.message_id, "reason": str(e)})
                counts["MalformedMessages"] += 1
                self._failed_messages.add(message.message_id)
                continue
            counts["EventsIgnored"] += parsed.ignored
            for ref, oid in zip(parsed.objects, ids, strict=True):
                if oid in self._refs:
                    counts["DuplicatesSkipped"] += 1  # named twice in one batch
                self._refs.setdefault(oid, ref)
                self._messages_of[oid].add(message.message_id)

    def _refuse_stale(self) -> None:
        """Events older than the claim TTL: their claim may be gone, so a claim now proves
        nothing. Never archived blindly; the README's runbook archives them deliberately."""
        oldest = self._deps.clock() - self._settings.idempotency_ttl_seconds
        stale = [oid for oid, ref in self._refs.items()
                 if ref.event_time is not None and ref.event_time.timestamp() < oldest]
        by_message: defaultdict[str, list[ObjectRef]] = defaultdict(list)
        for oid in stale:
            ref = self._refs.pop(oid)
            for message_id in sorted(self._messages_of[oid]):
                by_message[message_id].append(ref)
        for message_id, refs in by_message.items():  # one line per failed message, saying why
            named = [{"bucket": ref.bucket, "key": ref.key} for ref in refs[:_LOGGED_OBJECTS]]
            oldest_event = min(ref.event_time for ref in refs if ref.event_time is not None)
            self._log.error("event older than the claim TTL refused; see the README's runbook for stale events",
                            extra={"message_id": message_id, "stale_objects": len(refs), "objects": named,
                                   "oldest_event_time": oldest_event.isoformat()})
        self.report.counts["StaleEvents"] += len(stale)
        self._fail(stale)

    # -- steps 2-5 ---------------------------------------------------------------------------

    def _archive(self) -> None:
        reserve = self._reserve()
        if self._deadline.remaining() < reserve:
            raise OutOfTime("too little time left to claim and archive anything")
        ids = list(self._refs)
        claims = self._deps.claims
        lease_until = self._deadline.lease_until
        claimed = claims.claim(ids, owner=self._owner, lease_until=lease_until, archive_key=self._key)
        self._held.update(claimed.claimed)
        self._fail(oid for oid, holder in claimed.busy.items() if holder is None)
        live = {oid: holder for oid, holder in claimed.busy.items() if holder is not None}
        if claimed.expired or live:
            decision = recovery.decide(claimed.expired, live=live, reader=self._deps.target,
                                       time_left=self._deadline.remaining, reserve=reserve, log=self._log)
            self._settled.update(decision.duplicates)
            self.report.counts["DuplicatesSkipped"] += len(decision.duplicates)
            if decision.undecided:
                self._log.info("objects held by another invocation or undecided; retried later",
                               extra={"objects": len(decision.undecided)})
            self._fail(decision.undecided)
            if decision.takeable:
                taken = claims.take_over(decision.takeable, owner=self._owner, lease_until=lease_until,
                                         archive_key=self._key)
                self._held.update(taken.claimed)
                self._fail([*taken.busy, *taken.expired])
        mine = [oid for oid in ids if oid in self._held]
        if mine:
            self._assemble_and_publish(mine, reserve=reserve)

    def _assemble_and_publish(self, mine: list[str], *, reserve: float) -> None:
        settings = self._settings
        started = time.monotonic()
        refs = [self._refs[oid] for oid in mine]
        pending = {oid: self._refs[oid].size or 0 for oid in mine}  # upper bound of what is left to write
        tally = Tally()
        with ArchiveSpool(max_memory=settings.spool_max_memory_bytes, expected_size=archive_size_bound(refs),
                          still_to_write=lambda: sum(pending.values())) as spool:
            stop_at = self._deadline.at - reserve
            admission = admit(refs, capacity=spool.capacity(), seconds=stop_at - self._deps.clock())
            refs = admission.admitted
            # Only these messages wait for a smaller batch or more time (or the DLQ); the rest go on.
            if admission.no_room:
                self._log.warning("objects do not fit the spool now; retried later",
                                  extra={"objects": len(admission.no_room)})
            if admission.no_time:
                self._log.warning("objects would not be fetched and uploaded in the time left; retried later",
                                  extra={"objects": len(admission.no_time)})
            for ref in admission.rejected:
                tally.failed.append(object_id(ref))
                pending.pop(object_id(ref))
            with ArchiveWriter(spool, codec=settings.compression, level=settings.compression_level,
                               threads=settings.zstd_threads, archive_id=self._archive_id,
                               created_at=self._created_at) as writer:
                tally.failed += fetch_into(writer, refs, ids={self._refs[oid]: oid for oid in mine}, pending=pending,
                                           tally=tally, fetch=self._deps.fetch, source=self._deps.source(),
                                           settings=settings, stop_at=stop_at, clock=self._deps.clock,
                                           log=self._log, spool=spool)
                summary = writer.finish() if tally.archived else None
            self._leave_out(tally)
            if summary is None:
                return
            if self._deadline.remaining() < max(reserve / 2, _MIN_RESERVE_SECONDS / 2):
                raise OutOfTime("deadline reached before the archive could be published")
            self._publish(spool, summary, archived=tally.archived)
        self.report.counts["ArchiveDurationMs"] = int((time.monotonic() - started) * 1000)

    def _leave_out(self, tally: Tally) -> None:
        """Objects claimed but not in the archive: released now, so that every claim still
        naming the archive is really in it."""
        self._settled.update(tally.missing)
        self.report.counts["ObjectsMissing"] += len(tally.missing)
        self._fail(tally.failed)
        self._release(tally.left_out)

    def _publish(self, spool: ArchiveSpool, summary: ArchiveSummary, *, archived: list[str]) -> None:
        # From here on only the outcome may release these claims.
        self._held.difference_update(archived)
        publication = self._deps.target.publish(
            key=self._key, source=spool.rewind(), size=summary.size, sha256_hex=summary.sha256_hex,
            manifest=summary.manifest, part_bytes=self._settings.multipart_part_bytes, deadline=self._deadline)
        if publication.outcome is PublishOutcome.PUBLISHED:
            self._settled.update(archived)
            self.report.archive_key = self._key
            self.report.archive_bytes = summary.size
            self.report.archive_objects = len(archived)
            self.report.counts["ObjectsArchived"] += len(archived)
            self._log.info("archive published", extra={"archive_key": self._key, "objects": len(archived),
                                                       "bytes": summary.size})
        elif publication.outcome is PublishOutcome.NOT_PUBLISHED:
            self._held.update(archived)  # proven absent: released when the batch ends
            self._fail(archived)
        else:
            self.report.counts["PublishOutcomeUnknown"] += 1
            self._log.error("publish outcome unknown; claims kept until the lease ends, then recovery decides",
                            extra={"archive_key": self._key, "objects": len(archived),
                                   "lease_until": self._deadline.lease_until, "reason": publication.reason})
            self._fail(archived)

    # -- bookkeeping ---------------------------------------------------------------------------

    def _fail(self, ids: Iterable[str]) -> None:
        for oid in ids:
            self._failed_messages.update(self._messages_of[oid])

    def _release(self, ids: Iterable[str]) -> None:
        ids = [oid for oid in ids if oid in self._held]
        if not ids:
            return
        self._held.difference_update(ids)
        try:
            self._deps.claims.release(ids, owner=self._owner)
        except RetryableError as e:
            # Not fatal: the leases end and recovery finds these objects in no archive.
            self._log.warning("could not release claims; they end with the lease", extra={"error": str(e)})

    def _reserve(self) -> float:
        """Time kept back for publish: DEADLINE_RESERVE_MS, but at most a quarter of a short
        invocation (a 4 s invocation keeps 1 s, not 10)."""
        return min(self._settings.deadline_reserve_ms / 1000,
                   max(_MIN_RESERVE_SECONDS, self._deadline.remaining() / 4))
