"""Claims in DynamoDB: each object is archived by exactly one invocation.

One item per object, written once by one conditional PutItem (1 write unit):

* ``ObjectID`` (S, partition key): :func:`aggregator.base.names.object_id`;
* ``Owner`` (S): the claiming invocation's token;
* ``ArchiveKey`` (S): the one archive the owner may publish the object in;
* ``LeaseUntil`` (N, epoch seconds with ms): the owner's deadline plus the lease grace
  (:mod:`aggregator.base.deadline`); until then nobody else may touch the claim;
* ``ExpiresAt`` (N, epoch seconds, the table's TTL attribute): the claim's write time + ttl,
  rounded up to a whole second (the commit comes later, never earlier).
  There is no commit write to stamp the commit time on (below), and the write time is the
  closest the one write can know: the commit follows within the invocation, seconds later.
  The stale-event rule needs no more: an event younger than the ttl names an object whose
  claim, written after the event, has not expired. The ttl outlives the longest lease
  (``Settings``), so TTL never deletes a live claim.

There is no "completed" write. Whether the object was archived is a fact about MinIO, not
about the table: once the lease has ended, the archive named by ``ArchiveKey`` either exists
and lists the object in its manifest, or it never will (no write that could create it is
started after its owner's deadline minus a margin, and the grace covers one that the store
finishes late). So the claim records *where to look*, and the first later delivery looks::

                   claim (absent)                      lease ends
    absent ─────────────────────────▶ held by A ────────────────────────▶ A's lease over
      ▲   ▲    release (A, proven        │                                  │
      │   │    not published)            │        archive a lists it?       │
      │   └──────────────────────────────┘   yes: a duplicate, nothing written
      │                                      no:  take over, pinned to A's exact item
      └─────────────── TTL deletes the item at ExpiresAt ◀──────────────────┘

Timeline of invocation A (owner A, deadline D, grace g, planned archive key a)::

    t0     PutItem {Owner=A, ArchiveKey=a, LeaseUntil=D+g, ExpiresAt=t0+ttl}
           if attribute_not_exists(ObjectID), ReturnValuesOnConditionCheckFailure=ALL_OLD:
           the failure returns the holder, so one request settles each object:
             holder is A (our own earlier write whose answer was lost) -> claimed
             holder's lease not over                                   -> busy (retried later)
             holder's lease over                                       -> expired: the caller
                                                                          asks MinIO (recovery)
    ...    fetch, write, publish a (no key-creating request after D - margin)
    D+g    A's lease ends. A published a: the object is in a. A did not: it never will be.
    t2     B's PutItem fails on A's item, lease over; B reads a's manifest (bounded: a HEAD
           and a small sidecar object, whatever a's size). Listed: a duplicate, B writes
           nothing more. Not listed: B takes over with a PutItem conditioned on exactly A's
           item (Owner, ArchiveKey and LeaseUntil), so two takers cannot both win.
    release  DeleteItem if Owner = A: only when A *proved* a will never hold the object
           (failed before the publish, or the publish was definitely refused). An unknown
           publish outcome keeps the claim until the lease ends, and recovery decides.

Costs: a new object is one PutItem (1 WRU); a redelivered one is one failed conditional
PutItem (also 1 WRU) and a manifest read on MinIO, cached per archive. The writes of a
batch are sent concurrently (one item per request, so no transaction's 2x price and no
conflicts between items). No read is needed before publishing: nobody can take a claim
over before its lease ends, and we publish nothing after our deadline.

Throttling and transient failures are retried with bounded exponential backoff, then
raise :class:`ClaimStoreError` from the original (one mapping function, :func:`_map_error`).
A retried PutItem whose first answer was lost finds its own item: it counts as claimed.
``calls`` counts the requests this store sent, for calls-per-object figures.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from aggregator.base.errors import ClaimStoreError

if TYPE_CHECKING:
    from types_boto3_dynamodb import DynamoDBClient

    from aggregator.claims.dynamodb import DynamoDBJsonClient

# Writes in flight at once: one PutItem is one round trip (~5-10 ms to DynamoDB), so a
# batch of 100 takes about 100 / 16 round trips. The client's connection pool matches it.
CONCURRENT_WRITES = 16
_TRANSIENT_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "InternalFailure",
        "ServiceUnavailable",
        "TransactionConflictException",
    }
)
_CONDITION_FAILED = "ConditionalCheckFailedException"
# Conditions one object may fail within one call before it is reported busy: each failure
# means its item changed under us (released, taken over), which is rare and never endless.
_MAX_CONDITION_FAILURES = 3

# The conditional writes, each allowing exactly one transition (Owner is a reserved word).
_CLAIM_ABSENT = "attribute_not_exists(ObjectID)"
_TAKE_OVER = "#o = :owner AND #a = :archive AND #l = :lease"
_TAKE_OVER_NAMES = {"#o": "Owner", "#a": "ArchiveKey", "#l": "LeaseUntil"}
_RELEASE_OURS = "#o = :owner"
_RELEASE_NAMES = {"#o": "Owner"}


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
class Holder:
    """An existing claim, as a failed conditional write returned it (ALL_OLD)."""

    owner: str
    archive_key: str
    lease_until: float
    lease_text: str  # LeaseUntil exactly as stored, for a condition pinned to it

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Holder:
        lease = str(item.get("LeaseUntil", {}).get("N", "0"))
        return cls(owner=str(item.get("Owner", {}).get("S", "")),
                   archive_key=str(item.get("ArchiveKey", {}).get("S", "")),
                   lease_until=float(lease), lease_text=lease)


@dataclass(slots=True)
class ClaimResult:
    """What one claim call found; each id is in exactly one of the three."""

    claimed: list[str] = field(default_factory=list)  # ours now
    # Another invocation's live lease (its holder, when known): if its archive is already
    # published with the object, a duplicate; else retried later.
    busy: dict[str, Holder | None] = field(default_factory=dict)
    # Held by an invocation whose lease is over: whether its archive holds the object
    # decides between a duplicate and a takeover (:meth:`ClaimStore.take_over`).
    expired: dict[str, Holder] = field(default_factory=dict)


class ClaimStore:
    """Claims, takes over and releases objects in the claim table (see the module timeline)."""

    def __init__(
        self,
        client: DynamoDBClient | DynamoDBJsonClient,
        table_name: str,
        *,
        ttl_seconds: int,
        clock: Callable[[], float] = time.time,
        backoff: Backoff = Backoff(),
        sleep: Callable[[float], None] = time.sleep,
        concurrency: int = CONCURRENT_WRITES,
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self._client = client
        self._table = table_name
        self._ttl = ttl_seconds
        self._clock = clock
        self._backoff = backoff
        self._sleep = sleep
        self._concurrency = max(1, concurrency)
        self._lock = threading.Lock()
        self.calls = 0  # DynamoDB requests sent, retries included

    def claim(self, object_ids: Iterable[str], *, owner: str, lease_until: float, archive_key: str) -> ClaimResult:
        """Claim each id for ``owner`` until ``lease_until`` (epoch seconds), planning ``archive_key``.

        On :class:`ClaimStoreError` the claims made so far are released (nothing was
        published yet) and the error is raised.
        """
        expected: dict[str, Holder | None] = dict.fromkeys(object_ids)
        return self._write_all(expected, owner=owner, lease_until=lease_until, archive_key=archive_key)

    def take_over(self, holders: Mapping[str, Holder], *, owner: str, lease_until: float,
                  archive_key: str) -> ClaimResult:
        """Claim ids whose holders' leases are over and whose archives do not hold them.

        Each write is pinned to the holder that was examined: if the item changed since
        (another invocation took it over first), the id is reported busy or expired again.
        """
        return self._write_all(dict(holders), owner=owner, lease_until=lease_until, archive_key=archive_key)

    def release(self, object_ids: Iterable[str], *, owner: str) -> list[str]:
        """Delete ``owner``'s claims; return the ids actually released (others are left alone).

        Only for claims whose archive is proven never to hold the object.
        """
        ids = _unique(object_ids)
        values = {":owner": {"S": owner}}

        def delete(object_id: str) -> str | None:
            try:
                self._request("DeleteItem", lambda: self._client.delete_item(
                    TableName=self._table, Key={"ObjectID": {"S": object_id}}, ConditionExpression=_RELEASE_OURS,
                    ExpressionAttributeNames=_RELEASE_NAMES, ExpressionAttributeValues=values),
                    passthrough=(_CONDITION_FAILED,))
            except ClientError:
                return None  # not ours (any more), or already gone
            return object_id

        return [object_id for object_id in self._map(delete, ids) if object_id is not None]

    # -- writes ------------------------------------------------------------------------

    def _write_all(self, expected: dict[str, Holder | None], *, owner: str, lease_until: float,
                   archive_key: str) -> ClaimResult:
        if not owner or not archive_key:
            raise ValueError("owner and archive_key must not be empty")
        expires_at = math.ceil(self._clock()) + self._ttl
        item = {"Owner": {"S": owner}, "ArchiveKey": {"S": archive_key},
                "LeaseUntil": {"N": f"{lease_until:.3f}"}, "ExpiresAt": {"N": str(expires_at)}}
        result = ClaimResult()
        settled = self._map(lambda pair: self._settle(pair[0], pair[1], item=item, owner=owner),
                            list(expected.items()), collect_errors=True)
        errors = [outcome for outcome in settled if isinstance(outcome, ClaimStoreError)]
        for outcome in settled:
            if isinstance(outcome, ClaimStoreError):
                continue
            object_id, verdict, holder = outcome
            if verdict == "claimed":
                result.claimed.append(object_id)
            elif verdict == "busy":
                result.busy[object_id] = holder
            else:
                assert holder is not None
                result.expired[object_id] = holder
        if errors:
            self.release(result.claimed, owner=owner)  # best effort: the leases end anyway
            raise errors[0]
        return result

    def _settle(self, object_id: str, expected: Holder | None, *, item: dict[str, Any],
                owner: str) -> tuple[str, str, Holder | None]:
        """One object's conditional write, re-decided from the holder each failure returns."""
        for _ in range(_MAX_CONDITION_FAILURES):
            put = partial(self._client.put_item, **self._put(object_id, expected, item=item))
            try:
                self._request("PutItem", put, passthrough=(_CONDITION_FAILED,))
            except ClientError as e:
                found: Any = e.response.get("Item")  # ALL_OLD; absent when the item is gone
                current = Holder.from_item(found) if found else None
            else:
                return object_id, "claimed", None
            if current is None:
                expected = None  # released in between: claim it as new
            elif current.owner == owner:
                return object_id, "claimed", None  # our own write, its first answer lost
            elif current.lease_until > self._clock():
                return object_id, "busy", current
            elif expected is None or current != expected:
                return object_id, "expired", current  # recovery must look at this holder
            else:
                return object_id, "busy", None  # unreachable in practice: our pin held
        return object_id, "busy", None

    def _put(self, object_id: str, expected: Holder | None, *, item: dict[str, Any]) -> dict[str, Any]:
        put: dict[str, Any] = {"TableName": self._table, "Item": {"ObjectID": {"S": object_id}, **item},
                               "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}
        if expected is None:
            put["ConditionExpression"] = _CLAIM_ABSENT
        else:
            put["ConditionExpression"] = _TAKE_OVER
            put["ExpressionAttributeNames"] = _TAKE_OVER_NAMES
            put["ExpressionAttributeValues"] = {":owner": {"S": expected.owner},
                                                ":archive": {"S": expected.archive_key},
                                                ":lease": {"N": expected.lease_text}}
        return put

    # -- requests ----------------------------------------------------------------------

    def _map(self, work: Callable[[Any], Any], items: list[Any], *, collect_errors: bool = False) -> list[Any]:
        """``work`` over ``items``, CONCURRENT_WRITES at a time, in order. With
        ``collect_errors`` a ClaimStoreError is returned in its item's place, so one
        failure does not hide what the other writes did."""
        def run(item: Any) -> Any:
            try:
                return work(item)
            except ClaimStoreError as e:
                if not collect_errors:
                    raise
                return e

        if len(items) <= 1 or self._concurrency == 1:
            return [run(item) for item in items]
        # Threads for this call only: nothing of ours outlives the invocation.
        with ThreadPoolExecutor(max_workers=min(self._concurrency, len(items)),
                                thread_name_prefix="claims") as pool:
            return list(pool.map(run, items))

    def _request(self, operation: str, send: Callable[[], Any], *, passthrough: tuple[str, ...] = ()) -> Any:
        """Send one request, retrying transient failures; ``passthrough`` codes reach the caller."""
        attempt = 0
        while True:
            attempt += 1
            with self._lock:
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


def _map_error(operation: str, error: Exception) -> tuple[bool, ClaimStoreError]:
    """The one place DynamoDB failures become :class:`ClaimStoreError`: (retryable, error)."""
    if isinstance(error, BotoConnectionError | HTTPClientError):
        return True, ClaimStoreError(f"{operation}: could not reach DynamoDB ({type(error).__name__})")
    if not isinstance(error, ClientError):
        return False, ClaimStoreError(f"{operation}: {type(error).__name__}")
    code = _code(error)
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    retryable = code in _TRANSIENT_CODES or status >= 500
    return retryable, ClaimStoreError(f"{operation} failed: {code or 'unknown error'} (HTTP {status})")


def _code(error: BaseException | None) -> str:
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", ""))
    return ""


def _unique(object_ids: Iterable[str]) -> list[str]:
    """Each id once, in first-seen order."""
    return list(dict.fromkeys(object_ids))
