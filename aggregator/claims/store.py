"""Claims in DynamoDB: each object is archived by exactly one invocation.

One item per object:

* ``ObjectID`` (S, partition key): :func:`aggregator.base.names.object_id`;
* ``State``: ``IN_PROGRESS`` or ``COMPLETED``; ``Owner``: the claiming invocation's token;
* ``LeaseUntil`` (N, epoch seconds with ms): the holder's deadline (in progress only);
* ``ArchiveKey`` (S): the planned archive while in progress, the archive that holds the
  object once completed; ``EarlierArchiveKeys`` (L of S): see the takeover below;
* ``ExpiresAt`` (N, epoch seconds, the table's TTL attribute): claim or commit time + ttl.

States::

                      claim                                  commit
    absent ──────────────────────▶ IN_PROGRESS ─────────────────────────▶ COMPLETED
      ▲  ▲     release (ours)        │      ▲                                  │
      │  └───────────────────────────┘      │ claim after LeaseUntil           │
      │                                     │ (takeover, pinned to the holder) │
      │                                     └──────────────────────────────────┤
      └────────────────────────── TTL deletes the item at ExpiresAt ◀──────────┘

Timeline of invocation A (owner token A, deadline D, planned archive key a)::

    t0   claim    absent → IN_PROGRESS{Owner=A, LeaseUntil=D, ArchiveKey=a, ExpiresAt=t0+ttl}
                  if attribute_not_exists(ObjectID)
                  COMPLETED{ArchiveKey=k}  → completed[id] = k   (a duplicate: nothing written)
                  IN_PROGRESS, LeaseUntil >= t0, other owner → busy  (fail the message; retried later)
         ...      fetch, write the tar, upload a to MinIO
    t1   commit   → COMPLETED{Owner=A, ArchiveKey=a, ExpiresAt=t1+ttl}, unconditionally:
                  the object *is* in a, so writing that truth is always right (see below)
    or   release  IN_PROGRESS{Owner=A} → absent
                  if Owner = A AND State = IN_PROGRESS      (never someone else's claim)
    D    A's lease ends. A Lambda is dead by its deadline, so if A never committed or
         released, a later invocation B (t2 > D) may take the claim over:
    t2   claim    IN_PROGRESS{Owner=A, ArchiveKey=a, LeaseUntil=D} → IN_PROGRESS{Owner=B, ...}
                  if State = IN_PROGRESS AND Owner = A AND ArchiveKey = a AND LeaseUntil < t2
                  B gets taken_over[id] = a: A may have uploaded a and died before its commit,
                  so B looks for a in MinIO and, when a lists the object, commits it there
                  instead of archiving it again. B's item keeps EarlierArchiveKeys=[a, ...]:
                  if B dies too before deciding, C must look in b *and* a
                  (earlier_archives[id] = [b, a]); overwriting a would forget an archive
                  that may hold the object.
    t1+ttl        TTL removes the completed item. ttl outlives SQS retention, so no
                  redelivery of the same event can arrive after that.

How a takeover learns the previous holder's ``ArchiveKey`` (cheapest race-free way):
ReturnValuesOnConditionCheckFailure=ALL_OLD answers only for items whose condition
failed, so the first TransactWriteItems round of up to 100 items expects every item to be
absent (``attribute_not_exists``). When it is cancelled, the reasons carry each failing
item's current state: completed and live ones are settled without another write, expired
ones go into the next round with a condition pinned to exactly what was read (holder,
archive key, expired lease), and the rest are retried unchanged (an item the service did
not report fails again in a later round and is settled then). A pinned condition that
fails again returns the newer state, and so on; an item whose state keeps changing under
us is reported busy, which is safe (its message is simply retried later). New objects (the
common case) cost one call per 100; each round with duplicates or expired claims costs one
more. Reading first with BatchGetItem would add a call per 100 objects every time and still
need the same pinned conditions, since the state can change between the read and the
write. A round cancelled by TransactionConflict (another transaction on the same item) is
retried with backoff; items that keep conflicting fall back to conditional PutItems.

Commit is a BatchWriteItem of unconditional puts (25 per call, UnprocessedItems retried
with backoff) rather than transactions conditioned on Owner: if A's lease was taken over
by B and A commits late, a conditional commit would leave the object in A's archive with
no record of it (B may release, and the next delivery archives it again); the
unconditional one records the truth. B's release then no longer matches (State is
COMPLETED) and B's own commit, if B archived the object too, overwrites the record with
B's archive, which also holds it. That double archive can only happen if A's upload ends
after its lease does; the pipeline keeps a reserve before the deadline so it does not.

Release is a TransactWriteItems of conditional deletes; a cancelled round drops the items
that are no longer ours and retries the rest.

Throttling and transient failures are retried with bounded exponential backoff, then
raise :class:`ClaimStoreError` from the original (one mapping function, :func:`_map_error`).
``calls`` counts the requests this store sent, for calls-per-object figures. One store is
used by one thread at a time.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from aggregator.base.errors import ClaimStoreError

if TYPE_CHECKING:
    from types_boto3_dynamodb import DynamoDBClient
    from types_boto3_dynamodb.type_defs import (
        PutTypeDef,
        TransactWriteItemTypeDef,
        UniversalAttributeValueTypeDef,
        WriteRequestTypeDef,
    )

    from aggregator.claims.dynamodb import DynamoDBJsonClient

    _Item = Mapping[str, UniversalAttributeValueTypeDef]

IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"

TRANSACTION_LIMIT = 100  # items per TransactWriteItems
BATCH_WRITE_LIMIT = 25  # requests per BatchWriteItem
# A cancelled transaction names each item's reason. These mean "try again later";
# the service spells them without the "Exception" suffix that the call errors carry.
_TRANSIENT_CODES = frozenset(
    {
        "ProvisionedThroughputExceeded",
        "ProvisionedThroughputExceededException",
        "ThrottlingError",
        "ThrottlingException",
        "Throttling",
        "RequestLimitExceeded",
        "InternalServerError",
        "InternalFailure",
        "ServiceUnavailable",
        "TransactionConflict",
        "TransactionConflictException",
        "TransactionInProgressException",
    }
)
_CONFLICT = "TransactionConflict"
_CONDITION_FAILED = "ConditionalCheckFailed"
_NO_FAILURE = "None"
# Rounds cancelled by TransactionConflict before the conflicting items go one by one.
_CONFLICT_ROUNDS_BEFORE_FALLBACK = 2
# Conditions an item may fail within one claim before it is reported busy.
_MAX_CONDITION_FAILURES = 3

# The conditional writes, each allowing exactly one transition. State and Owner are
# reserved words, hence the placeholders (DynamoDB refuses unused ones, hence two sets).
_CLAIM_ABSENT = "attribute_not_exists(ObjectID)"
_CLAIM_TAKEOVER = "#s = :in_progress AND #o = :previous_owner AND #a = :previous_archive AND #l < :now"
_TAKEOVER_NAMES = {"#s": "State", "#o": "Owner", "#l": "LeaseUntil", "#a": "ArchiveKey"}
_RELEASE_OURS = "#o = :owner AND #s = :in_progress"
_RELEASE_NAMES = {"#s": "State", "#o": "Owner"}


@dataclass(frozen=True, slots=True)
class Backoff:
    """Bounded exponential backoff with jitter: ``attempts`` tries in all.

    The only retries of a request (the DynamoDB client sends each once): sized to ride out
    a few seconds of throttling or 5xx (up to ~5 s of waits in all), not just a blip.
    """

    attempts: int = 8
    base: float = 0.05
    cap: float = 2.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.cap, self.base * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.0)


@dataclass(frozen=True, slots=True)
class ClaimOutcome:
    """What :meth:`ClaimStore.claim` found, each id in exactly one of the first three."""

    claimed: list[str] = field(default_factory=list)  # ours now
    completed: dict[str, str] = field(default_factory=dict)  # already archived: id -> archive key
    busy: list[str] = field(default_factory=list)  # someone else's live lease
    # Subset of claimed whose previous holder's lease had expired: id -> its planned archive key.
    taken_over: dict[str, str] = field(default_factory=dict)
    # Same ids: every archive key an earlier, undecided holder planned, newest first (the first
    # is taken_over[id]). More than one when a holder died after taking the claim over itself.
    earlier_archives: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Holder:
    """An existing claim as a cancelled write returned it (ALL_OLD)."""

    state: str
    owner: str
    lease_until: float
    archive_key: str
    earlier: tuple[str, ...]  # EarlierArchiveKeys

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> _Holder:
        def text(name: str) -> str:
            value = item.get(name, {}).get("S", "")
            return str(value)

        lease = item.get("LeaseUntil", {}).get("N")
        earlier = item.get("EarlierArchiveKeys", {}).get("L", [])
        return cls(
            state=text("State"),
            owner=text("Owner"),
            lease_until=float(lease) if lease is not None else 0.0,
            archive_key=text("ArchiveKey"),
            earlier=tuple(str(value.get("S", "")) for value in earlier),
        )

    @property
    def archives(self) -> list[str]:
        """Archive keys that may hold the object while this holder is undecided, newest first."""
        return [key for key in dict.fromkeys((self.archive_key, *self.earlier)) if key]


class ClaimStore:
    """Claims, commits and releases objects in the claim table (see the module timeline)."""

    def __init__(
        self,
        client: DynamoDBClient | DynamoDBJsonClient,
        table_name: str,
        *,
        ttl_seconds: int,
        clock: Callable[[], float] = time.time,
        backoff: Backoff = Backoff(),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self._client = client
        self._table = table_name
        self._ttl = ttl_seconds
        self._clock = clock
        self._backoff = backoff
        self._sleep = sleep
        self.calls = 0  # DynamoDB requests sent, retries included

    # -- claim -------------------------------------------------------------------------

    def claim(self, object_ids: Iterable[str], *, owner: str, lease_until: float, archive_key: str) -> ClaimOutcome:
        """Claim each id for ``owner`` until ``lease_until`` (epoch seconds), planning ``archive_key``.

        Each distinct id ends up in exactly one of claimed, completed and busy. Claiming an
        id this owner already holds returns it as claimed. On :class:`ClaimStoreError` the
        fresh claims made so far are released; taken-over ones are kept (releasing them
        would forget their earlier archives) and simply expire with ``lease_until``.
        """
        if not owner or not archive_key:
            raise ValueError("owner and archive_key must not be empty")
        outcome = ClaimOutcome()
        try:
            self._claim_all(outcome, _unique(object_ids), owner=owner, lease_until=lease_until,
                            archive_key=archive_key)
        except ClaimStoreError:
            fresh = [object_id for object_id in outcome.claimed if object_id not in outcome.taken_over]
            with contextlib.suppress(ClaimStoreError):
                self.release(fresh, owner=owner)  # best effort: the leases end anyway
            raise
        return outcome

    def _claim_all(self, outcome: ClaimOutcome, object_ids: list[str], *, owner: str, lease_until: float,
                   archive_key: str) -> None:
        # id -> the holder we expect to replace (None: we expect no item at all).
        pending: dict[str, _Holder | None] = dict.fromkeys(object_ids)
        failures: dict[str, int] = {}
        transient = _TransientRounds(self._backoff, self._sleep)
        while pending:
            chunk = dict(list(pending.items())[:TRANSACTION_LIMIT])
            for object_id in chunk:
                del pending[object_id]
            now = self._clock()
            items: list[TransactWriteItemTypeDef] = [
                {"Put": self._claim_put(i, e, owner=owner, lease_until=lease_until, archive_key=archive_key, now=now)}
                for i, e in chunk.items()
            ]
            reasons = self._transact(items)
            if reasons is None:
                for object_id, expected in chunk.items():
                    _settle_claimed(outcome, object_id, expected)
                transient.progress()
                continue
            transient.cancelled(reasons)  # backs off, or raises when it cannot go on
            retry: dict[str, _Holder | None] = {}
            one_by_one: dict[str, _Holder | None] = {}
            for (object_id, expected), reason in zip(chunk.items(), reasons.reasons, strict=True):
                code = reason.get("Code", _NO_FAILURE)
                if code == _NO_FAILURE:
                    retry[object_id] = expected
                elif code == _CONDITION_FAILED:
                    current = _Holder.from_item(reason["Item"]) if reason.get("Item") else None
                    failures[object_id] = failures.get(object_id, 0) + 1
                    self._reclassify(outcome, retry, object_id, expected, current, owner=owner, now=self._clock(),
                                     exhausted=failures[object_id] >= _MAX_CONDITION_FAILURES)
                elif code == _CONFLICT and transient.conflict_rounds >= _CONFLICT_ROUNDS_BEFORE_FALLBACK:
                    one_by_one[object_id] = expected
                else:  # transient: retried after the backoff above
                    retry[object_id] = expected
            for object_id, expected in one_by_one.items():
                self._claim_one(outcome, object_id, expected, owner=owner, lease_until=lease_until,
                                archive_key=archive_key)
            # Retried items go last: fresh chunks first, then the retries fill whole transactions.
            pending = {**pending, **retry}

    def _claim_put(self, object_id: str, expected: _Holder | None, *, owner: str, lease_until: float,
                   archive_key: str, now: float) -> PutTypeDef:
        item: _Item = {
            "ObjectID": {"S": object_id},
            "State": {"S": IN_PROGRESS},
            "Owner": {"S": owner},
            "LeaseUntil": {"N": f"{lease_until:.3f}"},
            "ArchiveKey": {"S": archive_key},
            "ExpiresAt": {"N": str(int(now) + self._ttl)},
        }
        if expected is None:
            return {"TableName": self._table, "Item": item, "ConditionExpression": _CLAIM_ABSENT,
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}
        return {
            "TableName": self._table,
            "Item": {**item, "EarlierArchiveKeys": {"L": [{"S": key} for key in expected.archives]}},
            "ConditionExpression": _CLAIM_TAKEOVER,
            "ExpressionAttributeNames": _TAKEOVER_NAMES,
            "ExpressionAttributeValues": {
                ":in_progress": {"S": IN_PROGRESS},
                ":previous_owner": {"S": expected.owner},
                ":previous_archive": {"S": expected.archive_key},
                ":now": {"N": f"{now:.3f}"},
            },
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }

    @staticmethod
    def _reclassify(outcome: ClaimOutcome, retry: dict[str, _Holder | None], object_id: str,
                    expected: _Holder | None, current: _Holder | None, *, owner: str, now: float,
                    exhausted: bool) -> None:
        """Settle an item whose condition failed, from the state the failure returned."""
        if current is not None and current.state == COMPLETED:
            outcome.completed[object_id] = current.archive_key
        elif current is not None and current.state == IN_PROGRESS and current.owner == owner:
            # Ours already: an earlier attempt of this very write succeeded but its answer
            # was lost (timeout, retry), or the caller claimed it before.
            _settle_claimed(outcome, object_id, expected)
        elif exhausted:
            outcome.busy.append(object_id)
        elif current is None:
            retry[object_id] = None  # released in between: claim it as new
        elif current.state == IN_PROGRESS and current.lease_until < now:
            retry[object_id] = current  # expired: take over exactly this holder
        else:
            outcome.busy.append(object_id)

    def _claim_one(self, outcome: ClaimOutcome, object_id: str, expected: _Holder | None, *, owner: str,
                   lease_until: float, archive_key: str) -> None:
        """The per-item fallback for items whose transactions keep conflicting."""
        for _ in range(_MAX_CONDITION_FAILURES):
            now = self._clock()
            put = self._claim_put(object_id, expected, owner=owner, lease_until=lease_until,
                                  archive_key=archive_key, now=now)
            try:
                self._request("PutItem", partial(self._client.put_item, **put),
                              passthrough=("ConditionalCheckFailedException",))
            except ClientError as e:
                current = _Holder.from_item(e.response["Item"]) if e.response.get("Item") else None  # type: ignore[typeddict-item]
                retry: dict[str, _Holder | None] = {}
                self._reclassify(outcome, retry, object_id, expected, current, owner=owner, now=self._clock(),
                                 exhausted=False)
                if object_id not in retry:
                    return
                expected = retry[object_id]
            except ClaimStoreError as e:
                if _code(e.__cause__) in ("TransactionConflictException", "TransactionConflict"):
                    # Still being changed by someone else's transaction: it is theirs to finish.
                    outcome.busy.append(object_id)
                    return
                raise
            else:
                _settle_claimed(outcome, object_id, expected)
                return
        outcome.busy.append(object_id)

    # -- commit ------------------------------------------------------------------------

    def commit(self, object_ids: Iterable[str], *, owner: str, archive_key: str) -> None:
        """Record that each id is in ``archive_key``, now durably stored (unconditional)."""
        if not archive_key:
            raise ValueError("archive_key must not be empty")
        expires_at = {"N": str(int(self._clock()) + self._ttl)}
        requests: list[WriteRequestTypeDef] = [
            {"PutRequest": {"Item": {
                "ObjectID": {"S": object_id},
                "State": {"S": COMPLETED},
                "Owner": {"S": owner},
                "ArchiveKey": {"S": archive_key},
                "ExpiresAt": expires_at,
            }}}
            for object_id in _unique(object_ids)
        ]
        stalled = 0
        while requests:
            batch, requests = requests[:BATCH_WRITE_LIMIT], requests[BATCH_WRITE_LIMIT:]
            response = self._request("BatchWriteItem",
                                     partial(self._client.batch_write_item, RequestItems={self._table: batch}))
            unprocessed = list(response.get("UnprocessedItems", {}).get(self._table, []))
            if not unprocessed:
                stalled = 0
                continue
            # Throttled inside the batch: back off, and give up only if nothing gets through.
            stalled = stalled + 1 if len(unprocessed) == len(batch) else 0
            if stalled >= self._backoff.attempts:
                raise ClaimStoreError(f"BatchWriteItem on {self._table}: {len(unprocessed)} commits left unprocessed")
            self._sleep(self._backoff.delay(max(stalled, 1)))
            requests = unprocessed + requests

    # -- release -----------------------------------------------------------------------

    def release(self, object_ids: Iterable[str], *, owner: str) -> list[str]:
        """Delete ``owner``'s in-progress claims; return the ids actually released.

        Ids that are someone else's, completed or absent are left alone (an id whose delete
        was retried after a lost answer is released but not listed). Releasing an id this
        owner took over forgets its earlier archives: do that only once none of them holds it.
        """
        released: list[str] = []
        pending = _unique(object_ids)
        transient = _TransientRounds(self._backoff, self._sleep)
        values: _Item = {":owner": {"S": owner}, ":in_progress": {"S": IN_PROGRESS}}
        while pending:
            chunk, pending = pending[:TRANSACTION_LIMIT], pending[TRANSACTION_LIMIT:]
            deletes: list[TransactWriteItemTypeDef] = [
                {"Delete": {"TableName": self._table, "Key": {"ObjectID": {"S": object_id}},
                            "ConditionExpression": _RELEASE_OURS, "ExpressionAttributeNames": _RELEASE_NAMES,
                            "ExpressionAttributeValues": values}}
                for object_id in chunk
            ]
            reasons = self._transact(deletes)
            if reasons is None:
                released.extend(chunk)
                transient.progress()
                continue
            transient.cancelled(reasons)  # backs off, or raises when it cannot go on
            retry: list[str] = []
            for object_id, reason in zip(chunk, reasons.reasons, strict=True):
                code = reason.get("Code", _NO_FAILURE)
                if code == _CONDITION_FAILED:
                    continue  # not ours (any more): leave it alone
                if code == _CONFLICT and transient.conflict_rounds >= _CONFLICT_ROUNDS_BEFORE_FALLBACK:
                    if self._release_one(object_id, values):
                        released.append(object_id)
                    continue
                retry.append(object_id)
            pending = pending + retry
        return released

    def _release_one(self, object_id: str, values: _Item) -> bool:
        try:
            delete = partial(self._client.delete_item, TableName=self._table, Key={"ObjectID": {"S": object_id}},
                             ConditionExpression=_RELEASE_OURS, ExpressionAttributeNames=_RELEASE_NAMES,
                             ExpressionAttributeValues=values)
            self._request("DeleteItem", delete, passthrough=("ConditionalCheckFailedException",))
        except ClientError:
            return False  # not ours
        return True

    # -- requests ----------------------------------------------------------------------

    def _transact(self, items: list[TransactWriteItemTypeDef]) -> _Cancelled | None:
        """One TransactWriteItems; the cancellation reasons when it was cancelled."""
        try:
            self._request("TransactWriteItems", partial(self._client.transact_write_items, TransactItems=items),
                          passthrough=("TransactionCanceledException",))
        except ClientError as e:
            # The stubs mistype the reasons' Item: read them untyped.
            reasons: Any = e.response.get("CancellationReasons")
            if not isinstance(reasons, list) or len(reasons) != len(items):
                raise _map_error("TransactWriteItems", e)[1] from e
            return _Cancelled(error=e, reasons=reasons)
        return None

    # -- verify ------------------------------------------------------------------------

    def still_ours(self, object_ids: Iterable[str], *, owner: str) -> set[str]:
        """The ids whose claim is, by a strongly consistent read now, ours and in progress.

        Checked just before publishing: if any claim is no longer ours (our lease was taken
        over, or a store without transactional isolation, such as moto's server, let a
        concurrent claim through), the archive must not be published. One BatchGetItem per
        100 ids; unprocessed keys are retried with backoff.
        """
        ids = list(dict.fromkeys(object_ids))
        ours: set[str] = set()
        for start in range(0, len(ids), TRANSACTION_LIMIT):
            pending: Any = {self._table: {
                "Keys": [{"ObjectID": {"S": oid}} for oid in ids[start:start + TRANSACTION_LIMIT]],
                "ConsistentRead": True,
                "ProjectionExpression": "ObjectID, #s, #o",
                "ExpressionAttributeNames": {"#s": "State", "#o": "Owner"},
            }}
            attempt = 0
            while pending:
                response = self._request("BatchGetItem", partial(self._client.batch_get_item, RequestItems=pending))
                for item in response.get("Responses", {}).get(self._table, []):
                    if item.get("State", {}).get("S") == IN_PROGRESS and item.get("Owner", {}).get("S") == owner:
                        ours.add(str(item["ObjectID"]["S"]))
                pending = response.get("UnprocessedKeys") or None
                if pending:
                    attempt += 1
                    if attempt >= self._backoff.attempts:
                        raise ClaimStoreError("BatchGetItem left keys unprocessed after retries")
                    self._sleep(self._backoff.delay(attempt))
        return ours

    def _request(self, operation: str, send: Callable[[], Any], *, passthrough: tuple[str, ...] = ()) -> Any:
        """Send one request, retrying transient failures; ``passthrough`` codes reach the caller."""
        attempt = 0
        while True:
            attempt += 1
            self.calls += 1
            try:
                return send()
            except ClientError as e:
                if _code(e) in passthrough:
                    raise
                error: Exception = e
            except (BotoConnectionError, HTTPClientError) as e:
                error = e
            retryable, mapped = _map_error(operation, error)
            if not retryable or attempt >= self._backoff.attempts:
                raise mapped from error
            self._sleep(self._backoff.delay(attempt))


@dataclass(frozen=True, slots=True)
class _Cancelled:
    error: ClientError
    reasons: list[dict[str, Any]]


class _TransientRounds:
    """Counts transaction rounds cancelled for transient reasons; backs off or gives up."""

    def __init__(self, backoff: Backoff, sleep: Callable[[float], None]) -> None:
        self._backoff = backoff
        self._sleep = sleep
        self._in_a_row = 0
        self.conflict_rounds = 0

    def progress(self) -> None:
        self._in_a_row = 0

    def cancelled(self, cancelled: _Cancelled) -> None:
        codes = {r.get("Code", _NO_FAILURE) for r in cancelled.reasons} - {_NO_FAILURE, _CONDITION_FAILED}
        if not codes:
            self._in_a_row = 0  # conditions only: the next round already knows more
            return
        retryable, mapped = _map_error("TransactWriteItems", cancelled.error)
        if not retryable:
            raise mapped from cancelled.error
        if _CONFLICT in codes:
            self.conflict_rounds += 1
        self._in_a_row += 1
        if self._in_a_row >= self._backoff.attempts:
            raise mapped from cancelled.error
        self._sleep(self._backoff.delay(self._in_a_row))


def _map_error(operation: str, error: Exception) -> tuple[bool, ClaimStoreError]:
    """The one place DynamoDB failures become :class:`ClaimStoreError`: (retryable, error).

    A cancelled transaction is retryable when every item that failed for a reason other
    than its condition failed transiently (throttling, conflict, internal error).
    """
    if isinstance(error, BotoConnectionError | HTTPClientError):
        return True, ClaimStoreError(f"{operation}: could not reach DynamoDB ({type(error).__name__})")
    if not isinstance(error, ClientError):
        return False, ClaimStoreError(f"{operation}: {type(error).__name__}")
    code = _code(error)
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code == "TransactionCanceledException":
        reasons: Any = error.response.get("CancellationReasons") or []
        codes = sorted({r.get("Code", _NO_FAILURE) for r in reasons} - {_NO_FAILURE, _CONDITION_FAILED})
        retryable = all(c in _TRANSIENT_CODES for c in codes)
        return retryable, ClaimStoreError(f"{operation} cancelled: {', '.join(codes) or 'conditions failed'}")
    retryable = code in _TRANSIENT_CODES or status >= 500
    return retryable, ClaimStoreError(f"{operation} failed: {code or 'unknown error'} (HTTP {status})")


def _code(error: BaseException | None) -> str:
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", ""))
    return ""


def _settle_claimed(outcome: ClaimOutcome, object_id: str, expected: _Holder | None) -> None:
    outcome.claimed.append(object_id)
    if expected is not None:
        outcome.taken_over[object_id] = expected.archive_key
        outcome.earlier_archives[object_id] = expected.archives


def _unique(object_ids: Iterable[str]) -> list[str]:
    """Each id once, in first-seen order (a transaction may not touch an item twice)."""
    return list(dict.fromkeys(object_ids))
