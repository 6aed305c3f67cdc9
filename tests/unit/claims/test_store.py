"""ClaimStore: every transition of the claim protocol, concurrency, races and retries.

The table lives in in-process moto (``mock_aws``). moto's DynamoDB checks a condition and
writes without isolation between concurrent requests, unlike the real service, whose
conditional writes are atomic per item. The race tests therefore serialise moto's request
handling, which is what DynamoDB guarantees per request. Error injection uses a small
fake client.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from moto import mock_aws
from moto.core.botocore_stubber import BotocoreStubber

from aggregator.base.errors import ClaimStoreError
from aggregator.base.events import ObjectRef
from aggregator.base.names import object_id
from aggregator.claims.store import Backoff, ClaimStore, Holder
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


def test_absent_to_held_writes_every_attribute_in_one_put_each(store: ClaimStore, client: Any) -> None:
    some = ids(3)
    outcome = store.claim(some, owner="A", lease_until=T0 + 12.345, archive_key="archives/a.tar.zst")
    assert outcome.claimed == some
    assert (outcome.busy, outcome.expired) == ({}, {})
    table = scan_claims(client, TABLE)
    assert set(table) == set(some)
    for item in table.values():
        assert item["Owner"] == "A"
        assert item["LeaseUntil"] == pytest.approx(T0 + 12.345, abs=1e-6)
        assert item["ArchiveKey"] == "archives/a.tar.zst"
        assert item["ExpiresAt"] == math.ceil(T0) + TTL  # the write time, rounded up to whole seconds
        assert "State" not in item  # no state: whether it is archived is MinIO's to say
    assert store.calls == 3  # one PutItem per object, nothing else


def test_live_lease_of_another_owner_is_busy_with_its_holder(store: ClaimStore, client: Any, clock: Clock) -> None:
    [x] = ids(1)
    claim(store, [x], "A", lease=T0 + 60)
    clock.now = T0 + 59.999
    outcome = claim(store, [x], "B")
    assert list(outcome.busy) == [x]
    assert outcome.busy[x] is not None and outcome.busy[x].owner == "A"
    assert outcome.claimed == [] and outcome.expired == {}
    assert scan_claims(client, TABLE)[x]["Owner"] == "A"


def test_an_ended_lease_is_reported_expired_not_taken(store: ClaimStore, client: Any, clock: Clock) -> None:
    [x, fresh] = ids(2)
    claim(store, [x], "A", lease=T0 + 60)
    clock.now = T0 + 61
    outcome = claim(store, [x, fresh], "B", lease=T0 + 120)
    assert outcome.claimed == [fresh]
    assert outcome.expired == {x: Holder(owner="A", archive_key="archives/A.tar.zst", lease_until=T0 + 60,
                                         lease_text=f"{T0 + 60:.3f}")}
    assert scan_claims(client, TABLE)[x]["Owner"] == "A"  # nothing written until recovery decides


def test_take_over_is_pinned_to_the_holder_examined(store: ClaimStore, client: Any, clock: Clock) -> None:
    [x] = ids(1)
    claim(store, [x], "A", lease=T0 + 60)
    clock.now = T0 + 61
    holder = claim(store, [x], "B", lease=T0 + 120).expired[x]
    outcome = store.take_over({x: holder}, owner="B", lease_until=T0 + 120, archive_key="archives/B.tar.zst")
    assert outcome.claimed == [x]
    item = scan_claims(client, TABLE)[x]
    assert (item["Owner"], item["ArchiveKey"]) == ("B", "archives/B.tar.zst")
    assert item["ExpiresAt"] == math.ceil(T0 + 61) + TTL  # the takeover's write time


def test_a_second_taker_of_the_same_holder_loses(store: ClaimStore, client: Any, clock: Clock) -> None:
    [x] = ids(1)
    claim(store, [x], "A", lease=T0 + 60)
    clock.now = T0 + 61
    holder = claim(store, [x], "B").expired[x]
    assert store.take_over({x: holder}, owner="B", lease_until=T0 + 120, archive_key="b").claimed == [x]
    late = store.take_over({x: holder}, owner="C", lease_until=T0 + 120, archive_key="c")
    assert late.claimed == [] and list(late.busy) == [x]  # B's lease is live now
    assert scan_claims(client, TABLE)[x]["Owner"] == "B"


def test_a_taker_whose_holder_died_too_sees_the_newer_holder(store: ClaimStore, client: Any, clock: Clock) -> None:
    [x] = ids(1)
    claim(store, [x], "A", lease=T0 + 10)
    clock.now = T0 + 11
    a = claim(store, [x], "B").expired[x]
    store.take_over({x: a}, owner="B", lease_until=T0 + 20, archive_key="b")  # B dies
    clock.now = T0 + 21
    late = store.take_over({x: a}, owner="C", lease_until=T0 + 30, archive_key="c")
    assert late.claimed == [] and late.expired[x].owner == "B"  # recovery must look at b now


def test_take_over_of_a_released_claim_claims_it_as_new(store: ClaimStore, client: Any, clock: Clock) -> None:
    [x] = ids(1)
    claim(store, [x], "A", lease=T0 + 10)
    clock.now = T0 + 11
    holder = claim(store, [x], "B").expired[x]
    store.release([x], owner="A")
    assert store.take_over({x: holder}, owner="B", lease_until=T0 + 60, archive_key="b").claimed == [x]


def test_claiming_again_by_the_same_owner_returns_it_as_claimed(store: ClaimStore) -> None:
    [x] = ids(1)
    claim(store, [x], "A")
    assert claim(store, [x], "A").claimed == [x]


def test_release_deletes_only_our_claims(store: ClaimStore, client: Any) -> None:
    mine, theirs = ids(2, "mine"), ids(1, "theirs")
    claim(store, mine, "A")
    claim(store, theirs, "B")
    assert sorted(store.release(mine + theirs, owner="A")) == sorted(mine)
    assert set(scan_claims(client, TABLE)) == set(theirs)


def test_many_objects_are_claimed_concurrently_one_request_each(store: ClaimStore, client: Any) -> None:
    some = ids(250)
    outcome = claim(store, some, "A")
    assert outcome.claimed == some  # in the order asked
    assert store.calls == 250
    assert len(scan_claims(client, TABLE)) == 250


def test_duplicate_ids_in_one_call_count_once(store: ClaimStore, client: Any) -> None:
    [x] = ids(1)
    assert claim(store, [x, x, x], "A").claimed == [x]
    assert store.calls == 1


def test_empty_calls_send_nothing(store: ClaimStore) -> None:
    assert claim(store, [], "A").claimed == []
    assert store.release([], owner="A") == []
    assert store.calls == 0


def test_empty_owner_or_archive_key_is_refused(store: ClaimStore) -> None:
    with pytest.raises(ValueError):
        store.claim(ids(1), owner="", lease_until=T0, archive_key="k")
    with pytest.raises(ValueError):
        store.claim(ids(1), owner="A", lease_until=T0, archive_key="")


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
        assert sorted(outcome.claimed + list(outcome.busy)) == sorted(wanted[owner])
        assert outcome.expired == {}
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
    every = ids(60)
    if layout == "three owners":
        wanted = {owner: rng.sample(every, 40) for owner in "ABC"}
    elif layout == "opposite":
        wanted = {"A": every, "B": every[::-1]}
    else:
        wanted = {"A": rng.sample(every, len(every)), "B": rng.sample(every, len(every))}
    outcomes = race(client, wanted, clock)
    assert_each_id_claimed_once(client, wanted, outcomes)


def test_owners_racing_to_take_over_the_same_holder_win_once_each(atomic_moto: None, client: Any,
                                                                   clock: Clock) -> None:
    every = ids(40)
    claim(ClaimStore(client, TABLE, ttl_seconds=TTL, clock=clock), every, "dead", lease=T0 + 1)
    clock.now = T0 + 2
    holders = claim(ClaimStore(client, TABLE, ttl_seconds=TTL, clock=clock), every, "probe").expired
    outcomes: dict[str, Any] = {}
    barrier = threading.Barrier(2)

    def run(owner: str) -> None:
        store = ClaimStore(client, TABLE, ttl_seconds=TTL, clock=clock)
        barrier.wait()
        outcomes[owner] = store.take_over(holders, owner=owner, lease_until=T0 + 600, archive_key=owner)

    threads = [threading.Thread(target=run, args=(owner,)) for owner in "AB"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    won = outcomes["A"].claimed + outcomes["B"].claimed
    assert sorted(won) == sorted(every) and len(set(won)) == len(won)


# -- errors and retries -----------------------------------------------------------------


class Flaky:
    """The moto client, with the first ``failures`` calls of ``operation`` failing first."""

    def __init__(self, client: Any, *, operation: str, error: Exception, failures: int,
                 after_write: bool = False) -> None:
        self._client = client
        self._operation = operation
        self._error = error
        self.failures = failures
        self._after_write = after_write
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._client, name)
        if name != self._operation:
            return real

        def call(**kwargs: Any) -> Any:
            with self._lock:
                fail = self.failures > 0
                self.failures -= 1
            if fail and not self._after_write:
                raise self._error
            answer = real(**kwargs)
            if fail:
                raise self._error  # the write happened; its answer is lost
            return answer

        return call


def throttled() -> ClientError:
    return ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"},
                        "ResponseMetadata": {"HTTPStatusCode": 400}}, "PutItem")


def test_throttling_is_retried_with_backoff(client: Any, clock: Clock) -> None:
    sleeps = Sleeps()
    store = ClaimStore(Flaky(client, operation="put_item", error=throttled(), failures=2), TABLE,  # type: ignore[arg-type]
                       ttl_seconds=TTL, clock=clock, sleep=sleeps, concurrency=1)
    assert claim(store, ids(1), "A").claimed == ids(1)
    assert store.calls == 3 and len(sleeps) == 2


def test_a_claim_that_fails_part_way_releases_what_it_claimed(client: Any, clock: Clock) -> None:
    some = ids(3)

    class RefusesTheLast:
        def __getattr__(self, name: str) -> Any:
            return getattr(client, name)

        def put_item(self, **kwargs: Any) -> Any:
            if kwargs["Item"]["ObjectID"]["S"] == some[2]:
                raise throttled()
            return client.put_item(**kwargs)

    store = ClaimStore(RefusesTheLast(), TABLE, ttl_seconds=TTL, clock=clock, sleep=Sleeps(),  # type: ignore[arg-type]
                       backoff=Backoff(attempts=3))
    with pytest.raises(ClaimStoreError, match="ThrottlingException"):
        claim(store, some, "A")
    assert scan_claims(client, TABLE) == {}  # released: nothing was published


def test_other_client_errors_are_not_retried(client: Any, clock: Clock) -> None:
    denied = ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"},
                          "ResponseMetadata": {"HTTPStatusCode": 400}}, "PutItem")
    sleeps = Sleeps()
    store = ClaimStore(Flaky(client, operation="put_item", error=denied, failures=1), TABLE,  # type: ignore[arg-type]
                       ttl_seconds=TTL, clock=clock, sleep=sleeps, concurrency=1)
    with pytest.raises(ClaimStoreError, match="AccessDenied"):
        claim(store, ids(1), "A")
    assert store.calls == 1 and sleeps == []


def test_a_lost_answer_is_recognised_as_our_own_claim(client: Any, clock: Clock) -> None:
    """The write succeeded but its answer never came back: the retry finds our claim."""
    lost = Flaky(client, operation="put_item", error=ReadTimeoutError(endpoint_url="http://dynamodb"),
                 failures=1, after_write=True)
    store = ClaimStore(lost, TABLE, ttl_seconds=TTL, clock=clock, sleep=Sleeps(), concurrency=1)  # type: ignore[arg-type]
    [x, y] = ids(2)
    outcome = claim(store, [x, y], "A")
    assert outcome.claimed == [x, y] and outcome.expired == {} and outcome.busy == {}
    assert store.calls == 3  # x lost, x again (finds its own item), y


def test_connection_errors_are_retried_then_raised(clock: Clock) -> None:
    class Unreachable:
        def put_item(self, **kwargs: Any) -> Any:
            raise EndpointConnectionError(endpoint_url="http://dynamodb")

        def delete_item(self, **kwargs: Any) -> Any:
            raise EndpointConnectionError(endpoint_url="http://dynamodb")

    sleeps = Sleeps()
    store = ClaimStore(Unreachable(), TABLE, ttl_seconds=TTL, clock=clock, sleep=sleeps,  # type: ignore[arg-type]
                       backoff=Backoff(attempts=3), concurrency=1)
    with pytest.raises(ClaimStoreError, match="could not reach DynamoDB") as raised:
        claim(store, ["a"], "A")
    assert isinstance(raised.value.__cause__, EndpointConnectionError)
    assert store.calls == 3 and len(sleeps) == 2
