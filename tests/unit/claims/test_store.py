"""ClaimStore: every transition of the claim state machine, batching, races and retries.

The table lives in in-process moto (``mock_aws``). moto's DynamoDB handles concurrent
requests without any isolation (a TransactWriteItems deep-copies the table to roll back,
and crashes or undoes another thread's writes when one lands meanwhile), unlike the real
service, whose conditional writes and transactions are atomic. The race test therefore
serialises moto's request handling, which is what DynamoDB guarantees per request.
Error injection uses botocore's Stubber or a small fake client.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from botocore.stub import ANY, Stubber
from moto import mock_aws
from moto.core.botocore_stubber import BotocoreStubber

from aggregator.base.errors import ClaimStoreError, RetryableError
from aggregator.base.events import ObjectRef
from aggregator.base.names import object_id
from aggregator.claims.store import COMPLETED, IN_PROGRESS, Backoff, ClaimStore
from tests.support.tables import create_claims_table, scan_claims

TABLE = "claims"
TTL = 1_296_000
T0 = 1_750_000_000.25  # a fixed "now", with a fraction to check the ms precision


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def client() -> Iterator[Any]:
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="eu-west-2")
        create_claims_table(dynamodb, TABLE)
        yield dynamodb


@pytest.fixture
def clock() -> Clock:
    return Clock()


def store_for(client: Any, clock: Clock, **kwargs: Any) -> ClaimStore:
    return ClaimStore(client, TABLE, ttl_seconds=TTL, clock=clock, sleep=Sleeps(), **kwargs)


@pytest.fixture
def store(client: Any, clock: Clock) -> ClaimStore:
    return store_for(client, clock)


def ids(n: int, prefix: str = "obj") -> list[str]:
    refs = (ObjectRef("bucket", f"{prefix}/{i}", 1, "e", None, f"s{i}") for i in range(n))
    return [object_id(ref) for ref in refs]


def claim(store: ClaimStore, object_ids: list[str], owner: str, lease: float = T0 + 60) -> Any:
    return store.claim(object_ids, owner=owner, lease_until=lease, archive_key=f"archives/{owner}.tar.zst")


# -- transitions ------------------------------------------------------------------------


def test_absent_to_in_progress_writes_every_attribute(store: ClaimStore, client: Any) -> None:
    some = ids(3)
    outcome = store.claim(some, owner="A", lease_until=T0 + 12.345, archive_key="archives/a.tar.zst")
    assert outcome.claimed == some
    assert (outcome.completed, outcome.busy, outcome.taken_over) == ({}, [], {})
    table = scan_claims(client, TABLE)
    assert set(table) == set(some)
    for item in table.values():
        assert item["State"] == IN_PROGRESS
        assert item["Owner"] == "A"
        assert item["LeaseUntil"] == pytest.approx(T0 + 12.345, abs=1e-6)
        assert item["ArchiveKey"] == "archives/a.tar.zst"
        assert item["ExpiresAt"] == int(T0) + TTL  # whole seconds, as TTL wants
        assert "EarlierArchiveKeys" not in item
    assert store.calls == 1


def test_live_lease_of_another_owner_is_busy(store: ClaimStore, client: Any, clock: Clock) -> None:
    [x] = ids(1)
    claim(store, [x], "A", lease=T0 + 60)
    clock.now = T0 + 59.999
    outcome = claim(store, [x], "B")
    assert outcome.busy == [x]
    assert outcome.claimed == []
    assert scan_claims(client, TABLE)[x]["Owner"] == "A"


def test_expired_lease_is_taken_over_with_the_previous_archive_key(store: ClaimStore, client: Any,
                                                                   clock: Clock) -> None:
    [x, fresh] = ids(2)
    claim(store, [x], "A", lease=T0 + 60)
    clock.now = T0 + 61
    outcome = claim(store, [x, fresh], "B", lease=T0 + 120)
    assert outcome.claimed == [x, fresh]
    assert outcome.taken_over == {x: "archives/A.tar.zst"}
    assert outcome.earlier_archives == {x: ["archives/A.tar.zst"]}
    item = scan_claims(client, TABLE)[x]
    assert (item["Owner"], item["ArchiveKey"], item["State"]) == ("B", "archives/B.tar.zst", IN_PROGRESS)
    assert item["LeaseUntil"] == pytest.approx(T0 + 120)
    assert item["ExpiresAt"] == int(T0 + 61) + TTL
    assert item["EarlierArchiveKeys"] == ["archives/A.tar.zst"]


def test_a_chain_of_takeovers_remembers_every_undecided_archive(store: ClaimStore, client: Any,
                                                                clock: Clock) -> None:
    [x] = ids(1)
    claim(store, [x], "A", lease=T0 + 10)
    clock.now = T0 + 11
    claim(store, [x], "B", lease=T0 + 20)  # B dies before deciding whether A's archive holds x
    clock.now = T0 + 21
    outcome = claim(store, [x], "C", lease=T0 + 30)
    assert outcome.taken_over == {x: "archives/B.tar.zst"}
    assert outcome.earlier_archives == {x: ["archives/B.tar.zst", "archives/A.tar.zst"]}


def test_completed_is_a_duplicate_with_its_archive_key(store: ClaimStore, client: Any, clock: Clock) -> None:
    [x, y] = ids(2)
    claim(store, [x], "A")
    store.commit([x], owner="A", archive_key="archives/A.tar.zst")
    before = scan_claims(client, TABLE)[x]
    clock.now = T0 + 10_000  # long after A's lease: a completed claim is never taken over
    outcome = claim(store, [x, y], "B")
    assert outcome.completed == {x: "archives/A.tar.zst"}
    assert outcome.claimed == [y]
    assert scan_claims(client, TABLE)[x] == before


def test_commit_records_the_archive_and_a_fresh_expiry(store: ClaimStore, client: Any, clock: Clock) -> None:
    some = ids(3)
    claim(store, some, "A")
    clock.now = T0 + 42.9
    store.commit(some, owner="A", archive_key="archives/A.tar.zst")
    for item in scan_claims(client, TABLE).values():
        assert item["State"] == COMPLETED
        assert item["ArchiveKey"] == "archives/A.tar.zst"
        assert item["ExpiresAt"] == int(T0 + 42.9) + TTL  # commit time + ttl (contract 7)
        assert "LeaseUntil" not in item


def test_claiming_again_by_the_same_owner_returns_it_as_claimed(store: ClaimStore) -> None:
    some = ids(2)
    claim(store, some, "A")
    outcome = claim(store, some, "A")
    assert outcome.claimed == some
    assert outcome.busy == []


def test_commit_after_our_lease_was_taken_over_records_where_the_object_is(store: ClaimStore, client: Any,
                                                                           clock: Clock) -> None:
    """A overran its lease; B took over. A's archive is durably stored and holds x.

    commit is unconditional: the record says x is in A's archive, B's release no longer
    matches (the claim is completed, not B's in-progress one) and a later delivery sees a
    duplicate. Had B archived x as well, B's commit would overwrite the record with B's
    archive, which holds x too: the record is always an archive that holds the object.
    """
    [x] = ids(1)
    claim(store, [x], "A", lease=T0 + 10)
    clock.now = T0 + 11
    assert claim(store, [x], "B").taken_over == {x: "archives/A.tar.zst"}
    store.commit([x], owner="A", archive_key="archives/A.tar.zst")
    item = scan_claims(client, TABLE)[x]
    assert (item["State"], item["Owner"], item["ArchiveKey"]) == (COMPLETED, "A", "archives/A.tar.zst")
    assert store.release([x], owner="B") == []
    assert claim(store, [x], "C").completed == {x: "archives/A.tar.zst"}
    store.commit([x], owner="B", archive_key="archives/B.tar.zst")
    assert scan_claims(client, TABLE)[x]["ArchiveKey"] == "archives/B.tar.zst"


def test_release_deletes_only_our_in_progress_claims(store: ClaimStore, client: Any) -> None:
    ours, theirs, done = ids(2, "ours"), ids(2, "theirs"), ids(2, "done")
    claim(store, ours + done, "A")
    store.commit(done, owner="A", archive_key="archives/A.tar.zst")
    claim(store, theirs, "B")
    absent = ids(1, "absent")
    released = store.release(ours + theirs + done + absent, owner="A")
    assert released == ours
    table = scan_claims(client, TABLE)
    assert set(table) == set(theirs + done)
    assert all(table[i]["Owner"] == "B" for i in theirs)
    assert all(table[i]["State"] == COMPLETED for i in done)


def test_release_after_a_takeover_leaves_the_new_holder_alone(store: ClaimStore, client: Any,
                                                              clock: Clock) -> None:
    [x] = ids(1)
    claim(store, [x], "A", lease=T0 + 10)
    clock.now = T0 + 11
    claim(store, [x], "B")
    assert store.release([x], owner="A") == []
    item = scan_claims(client, TABLE)[x]
    assert (item["Owner"], item["State"]) == ("B", IN_PROGRESS)
    assert store.release([x], owner="B") == [x]
    assert scan_claims(client, TABLE) == {}


# -- batching ---------------------------------------------------------------------------


def test_more_than_a_transaction_holds_is_batched(store: ClaimStore, client: Any) -> None:
    many = ids(250)
    outcome = claim(store, many, "A")
    assert outcome.claimed == many
    assert store.calls == 3  # 100 + 100 + 50
    store.calls = 0
    store.commit(many, owner="A", archive_key="archives/A.tar.zst")
    assert store.calls == 10  # 25 per BatchWriteItem
    assert {i["State"] for i in scan_claims(client, TABLE).values()} == {COMPLETED}
    more = ids(230, "more")
    claim(store, more, "A")
    store.calls = 0
    assert store.release(more, owner="A") == more
    assert store.calls == 3
    assert len(scan_claims(client, TABLE)) == 250


def test_mixed_batches_settle_every_id_once(store: ClaimStore, client: Any, clock: Clock) -> None:
    many = ids(300)
    done, expired, live = many[10:60:2], many[100:200:3], many[150:290:5]
    live = [i for i in live if i not in expired]
    claim(store, done, "old")
    store.commit(done, owner="old", archive_key="archives/old.tar.zst")
    claim(store, expired, "dead", lease=T0 + 5)
    claim(store, live, "alive", lease=T0 + 500)
    clock.now = T0 + 6
    store.calls = 0
    outcome = claim(store, many, "A")
    assert outcome.completed == dict.fromkeys(done, "archives/old.tar.zst")
    assert sorted(outcome.busy) == sorted(live)
    assert outcome.taken_over == dict.fromkeys(expired, "archives/dead.tar.zst")
    fresh = [i for i in many if i not in set(done) | set(live)]
    assert sorted(outcome.claimed) == sorted(fresh)
    # three rounds of 100 fresh ids, each cancelled once and answering for all its failing
    # items; the rest (about 220 to claim or take over) fill three more rounds
    assert store.calls == 6
    table = scan_claims(client, TABLE)
    assert all(table[i]["Owner"] == "A" for i in fresh)


def test_duplicate_ids_in_one_call_count_once(store: ClaimStore, client: Any) -> None:
    [x, y] = ids(2)
    outcome = claim(store, [x, y, x, x, y], "A")
    assert outcome.claimed == [x, y]
    store.commit([x, x, y], owner="A", archive_key="archives/A.tar.zst")
    assert len(scan_claims(client, TABLE)) == 2
    [z] = ids(1, "z")
    claim(store, [z], "A")
    assert store.release([z, z], owner="A") == [z]


def test_empty_calls_send_nothing(store: ClaimStore) -> None:
    assert claim(store, [], "A").claimed == []
    store.commit([], owner="A", archive_key="k")
    assert store.release([], owner="A") == []
    assert store.calls == 0


# -- the race ---------------------------------------------------------------------------


@pytest.fixture
def atomic_moto(monkeypatch: pytest.MonkeyPatch) -> None:
    """One request at a time inside moto, as DynamoDB's per-request atomicity would have it."""
    lock = threading.Lock()
    original = BotocoreStubber.__call__

    def serialised(self: BotocoreStubber, *args: Any, **kwargs: Any) -> Any:
        with lock:
            return original(self, *args, **kwargs)

    monkeypatch.setattr(BotocoreStubber, "__call__", serialised)


def race(client: Any, wanted: dict[str, list[str]], clock: Clock) -> dict[str, Any]:
    """Each owner claims its ids from its own thread and store, all starting together."""
    outcomes: dict[str, Any] = {}
    barrier = threading.Barrier(len(wanted))

    def run(owner: str) -> None:
        store = ClaimStore(client, TABLE, ttl_seconds=TTL, clock=clock)
        barrier.wait()
        outcomes[owner] = claim(store, wanted[owner], owner, lease=T0 + 600)

    threads = [threading.Thread(target=run, args=(owner,)) for owner in wanted]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert set(outcomes) == set(wanted)
    return outcomes


def assert_each_id_claimed_once(client: Any, wanted: dict[str, list[str]], outcomes: dict[str, Any]) -> None:
    winners: dict[str, list[str]] = {}
    for owner, outcome in outcomes.items():
        assert sorted(outcome.claimed + outcome.busy) == sorted(wanted[owner])
        assert outcome.completed == {}
        for claimed in outcome.claimed:
            winners.setdefault(claimed, []).append(owner)
    assert {i: len(owners) for i, owners in winners.items() if len(owners) > 1} == {}
    assert set(winners) == {i for mine in wanted.values() for i in mine}
    table = scan_claims(client, TABLE)
    assert {i: table[i]["Owner"] for i in winners} == {i: owners[0] for i, owners in winners.items()}


@pytest.mark.parametrize("layout", ["shuffled", "opposite", "three owners"])
def test_owners_racing_claim_each_id_exactly_once(atomic_moto: None, client: Any, clock: Clock,
                                                  layout: str) -> None:
    rng = random.Random(layout)
    if layout == "opposite":
        # Own ids first, then two shared blocks of a transaction each, in opposite orders:
        # with requests alternating, both second rounds succeed and both third rounds find
        # every item taken (a cancelled round that answers for all of its items).
        every = ids(400)
        shared_1, shared_2 = every[100:200], every[200:300]
        wanted = {"A": every[:100] + shared_1 + shared_2, "B": every[300:] + shared_2 + shared_1}
    else:
        every = ids(240)
        wanted = {"A": every[:160], "B": every[80:]}
        if layout == "three owners":
            wanted["C"] = every[::2]
        for mine in wanted.values():
            rng.shuffle(mine)
    outcomes = race(client, wanted, clock)
    assert_each_id_claimed_once(client, wanted, outcomes)
    assert all(outcome.taken_over == {} for outcome in outcomes.values())


def test_owners_racing_for_expired_claims_take_each_over_once(atomic_moto: None, client: Any,
                                                              clock: Clock) -> None:
    every = ids(300)
    claim(store_for(client, clock), every[::3], "dead", lease=T0 + 1)
    clock.now = T0 + 2
    wanted = {"A": every[:200], "B": every[100:]}
    for mine in wanted.values():
        random.Random(7).shuffle(mine)
    outcomes = race(client, wanted, clock)
    assert_each_id_claimed_once(client, wanted, outcomes)
    taken = [object_id for outcome in outcomes.values() for object_id in outcome.taken_over]
    assert sorted(taken) == sorted(every[::3])  # each expired claim taken over by one owner
    for outcome in outcomes.values():
        assert set(outcome.taken_over) <= set(outcome.claimed)
        assert set(outcome.taken_over.values()) <= {"archives/dead.tar.zst"}


# -- retries and error mapping ------------------------------------------------------------


@pytest.fixture
def stubbed() -> Iterator[tuple[ClaimStore, Stubber, Sleeps]]:
    dynamodb = boto3.client("dynamodb", region_name="eu-west-2")
    sleeps = Sleeps()
    store = ClaimStore(dynamodb, TABLE, ttl_seconds=TTL, clock=Clock(), sleep=sleeps,
                       backoff=Backoff(attempts=4, base=0.05, cap=1.0))
    with Stubber(dynamodb) as stubber:
        yield store, stubber, sleeps
        stubber.assert_no_pending_responses()


def cancelled(stubber: Stubber, *codes: str) -> None:
    reasons = [{"Code": code} for code in codes]
    stubber.add_client_error("transact_write_items", "TransactionCanceledException", "cancelled", 400,
                             modeled_fields={"CancellationReasons": reasons})


def test_throttled_transaction_is_retried_with_backoff(stubbed: tuple[ClaimStore, Stubber, Sleeps]) -> None:
    store, stubber, sleeps = stubbed
    stubber.add_client_error("transact_write_items", "ProvisionedThroughputExceededException", "slow down", 400)
    stubber.add_client_error("transact_write_items", "InternalServerError", "oops", 500)
    stubber.add_response("transact_write_items", {}, {"TransactItems": ANY})
    outcome = claim(store, ["a", "b"], "A")
    assert outcome.claimed == ["a", "b"]
    assert store.calls == 3
    assert len(sleeps) == 2
    assert 0.025 <= sleeps[0] <= 0.05 and 0.05 <= sleeps[1] <= 0.1  # exponential, jittered


def test_throttled_items_in_a_cancelled_transaction_are_retried(
        stubbed: tuple[ClaimStore, Stubber, Sleeps]) -> None:
    store, stubber, sleeps = stubbed
    cancelled(stubber, "None", "ThrottlingError")
    stubber.add_response("transact_write_items", {})
    assert claim(store, ["a", "b"], "A").claimed == ["a", "b"]
    assert store.calls == 2 and len(sleeps) == 1


def test_throttling_that_does_not_stop_raises_claim_store_error(
        stubbed: tuple[ClaimStore, Stubber, Sleeps]) -> None:
    store, stubber, sleeps = stubbed
    for _ in range(4):
        stubber.add_client_error("transact_write_items", "ThrottlingException", "slow down", 400)
    # the failed claim releases what it claimed: nothing here, so no further call
    with pytest.raises(ClaimStoreError) as raised:
        claim(store, ["a"], "A")
    assert isinstance(raised.value, RetryableError)
    assert isinstance(raised.value.__cause__, ClientError)
    assert store.calls == 4 and len(sleeps) == 3
    assert all(s <= 1.0 for s in sleeps)


def test_other_client_errors_are_not_retried(stubbed: tuple[ClaimStore, Stubber, Sleeps]) -> None:
    store, stubber, sleeps = stubbed
    stubber.add_client_error("transact_write_items", "ResourceNotFoundException", "no table", 400)
    with pytest.raises(ClaimStoreError, match="ResourceNotFoundException") as raised:
        claim(store, ["a"], "A")
    assert isinstance(raised.value.__cause__, ClientError)
    assert store.calls == 1 and sleeps == []


def test_a_non_transient_cancellation_reason_raises(stubbed: tuple[ClaimStore, Stubber, Sleeps]) -> None:
    store, stubber, _ = stubbed
    cancelled(stubber, "None", "ValidationError")
    with pytest.raises(ClaimStoreError, match="ValidationError"):
        claim(store, ["a", "b"], "A")


def test_persistent_transaction_conflicts_fall_back_to_conditional_puts(
        stubbed: tuple[ClaimStore, Stubber, Sleeps]) -> None:
    store, stubber, _ = stubbed
    cancelled(stubber, "TransactionConflict", "None", "TransactionConflict")
    cancelled(stubber, "TransactionConflict", "None", "TransactionConflict")
    # after the second conflicting round those items go one by one; "b" stays in a transaction
    stubber.add_response("put_item", {}, {"TableName": TABLE, "Item": ANY, "ConditionExpression": ANY,
                                          "ReturnValuesOnConditionCheckFailure": "ALL_OLD"})
    stubber.add_client_error("put_item", "ConditionalCheckFailedException", "taken", 400, modeled_fields={
        "Item": {"ObjectID": {"S": "c"}, "State": {"S": COMPLETED}, "ArchiveKey": {"S": "archives/x"}}})
    stubber.add_response("transact_write_items", {})
    outcome = claim(store, ["a", "b", "c"], "A")
    assert sorted(outcome.claimed) == ["a", "b"]
    assert outcome.completed == {"c": "archives/x"}


def test_a_lost_answer_is_recognised_as_our_own_claim(client: Any, clock: Clock) -> None:
    """The write succeeded but its answer never came back: the retry finds our claim."""

    class LosesFirstAnswer:
        def __init__(self) -> None:
            self.lost = False

        def __getattr__(self, name: str) -> Any:
            return getattr(client, name)

        def transact_write_items(self, **kwargs: Any) -> Any:
            response = client.transact_write_items(**kwargs)
            if not self.lost:
                self.lost = True
                raise ReadTimeoutError(endpoint_url="http://dynamodb")
            return response

    store = ClaimStore(LosesFirstAnswer(), TABLE, ttl_seconds=TTL, clock=clock, sleep=Sleeps())  # type: ignore[arg-type]
    [x, y] = ids(2)
    outcome = claim(store, [x, y], "A")
    assert outcome.claimed == [x, y]
    assert store.calls == 2  # the lost one, then one cancelled by conditions that show our own claims
    assert outcome.taken_over == {}


def test_connection_errors_are_retried_then_raised(clock: Clock) -> None:
    class Unreachable:
        def batch_write_item(self, **kwargs: Any) -> Any:
            raise EndpointConnectionError(endpoint_url="http://dynamodb")

    sleeps = Sleeps()
    store = ClaimStore(Unreachable(), TABLE, ttl_seconds=TTL, clock=clock, sleep=sleeps,  # type: ignore[arg-type]
                       backoff=Backoff(attempts=3))
    with pytest.raises(ClaimStoreError, match="could not reach DynamoDB") as raised:
        store.commit(["a"], owner="A", archive_key="k")
    assert isinstance(raised.value.__cause__, EndpointConnectionError)
    assert store.calls == 3 and len(sleeps) == 2


def test_unprocessed_commits_are_retried(stubbed: tuple[ClaimStore, Stubber, Sleeps]) -> None:
    store, stubber, sleeps = stubbed
    some = [f"id{i}" for i in range(30)]
    put = {"PutRequest": {"Item": {"ObjectID": {"S": "id3"}, "State": {"S": COMPLETED}}}}
    stubber.add_response("batch_write_item", {"UnprocessedItems": {TABLE: [put]}},
                         {"RequestItems": {TABLE: ANY}})
    # the unprocessed one goes out again, with the five that did not fit the first batch
    stubber.add_response("batch_write_item", {"UnprocessedItems": {}}, {"RequestItems": {TABLE: ANY}})
    store.commit(some, owner="A", archive_key="k")
    assert store.calls == 2 and len(sleeps) == 1


def test_commits_that_stay_unprocessed_raise(stubbed: tuple[ClaimStore, Stubber, Sleeps]) -> None:
    store, stubber, _ = stubbed
    put = {"PutRequest": {"Item": {"ObjectID": {"S": "a"}}}}
    for _ in range(4):
        stubber.add_response("batch_write_item", {"UnprocessedItems": {TABLE: [put]}})
    with pytest.raises(ClaimStoreError, match="unprocessed"):
        store.commit(["a"], owner="A", archive_key="k")


def test_a_failed_claim_releases_its_fresh_claims(client: Any, clock: Clock) -> None:
    class FailsSecondTransaction:
        def __init__(self) -> None:
            self.transactions = 0

        def __getattr__(self, name: str) -> Any:
            return getattr(client, name)

        def transact_write_items(self, **kwargs: Any) -> Any:
            self.transactions += 1
            if self.transactions == 2:
                raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}},
                                  "TransactWriteItems")
            return client.transact_write_items(**kwargs)

    store = ClaimStore(FailsSecondTransaction(), TABLE, ttl_seconds=TTL, clock=clock,  # type: ignore[arg-type]
                       sleep=Sleeps())
    with pytest.raises(ClaimStoreError, match="AccessDenied"):
        claim(store, ids(150), "A")
    assert scan_claims(client, TABLE) == {}
