"""ClaimStore against a real moto_server process: the race and the takeover over HTTP.

Each owner has its own client, store and thread, as separate invocations would. Unlike
the unit tests nothing is serialised here: requests reach the server concurrently. moto
itself gives no isolation between concurrent requests (see tests/unit/test_claims.py),
so these tests check the claim logic over the real wire format rather than DynamoDB's
atomicity; tables are small and fresh to keep moto's transactions fast.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.credentials import Credentials

from aggregator.base.events import ObjectRef
from aggregator.base.names import object_id
from aggregator.claims.dynamodb import DynamoDBJsonClient
from aggregator.claims.store import COMPLETED, IN_PROGRESS, ClaimOutcome, ClaimStore
from tests.support.servers import MotoServer
from tests.support.tables import create_claims_table, scan_claims

pytestmark = [pytest.mark.servers, pytest.mark.timeout(180)]

TTL = 3600


def claims_client(server: MotoServer) -> DynamoDBJsonClient:
    """The client the Lambda's claim store uses (tables are made and read with boto3's)."""
    return DynamoDBJsonClient(endpoint_url=server.endpoint_url, region="eu-west-2",
                              credentials=Credentials("testing", "testing"))


def dynamodb(server: MotoServer) -> Any:
    return boto3.client("dynamodb", endpoint_url=server.endpoint_url, region_name="eu-west-2",
                        config=Config(retries={"mode": "standard", "total_max_attempts": 3}))


@pytest.fixture
def table(moto_server: MotoServer) -> str:
    name = f"claims-{uuid.uuid4().hex[:8]}"
    create_claims_table(dynamodb(moto_server), name)
    return name


def ids(n: int, prefix: str = "obj") -> list[str]:
    return [object_id(ObjectRef("bucket", f"{prefix}/{i}", 1, None, f"v{i}", None)) for i in range(n)]


def race(server: MotoServer, table: str, wanted: dict[str, list[str]], *,
         lease_until: float) -> dict[str, ClaimOutcome]:
    outcomes: dict[str, ClaimOutcome] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(wanted))

    def run(owner: str) -> None:
        store = ClaimStore(claims_client(server), table, ttl_seconds=TTL)
        barrier.wait()
        try:
            outcomes[owner] = store.claim(wanted[owner], owner=owner, lease_until=lease_until,
                                          archive_key=f"archives/{owner}.tar.zst")
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(owner,)) for owner in wanted]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=150)
    assert errors == []
    return outcomes


def winners(outcomes: dict[str, ClaimOutcome]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for owner, outcome in outcomes.items():
        for claimed in outcome.claimed:
            found.setdefault(claimed, []).append(owner)
    return found


def test_two_invocations_racing_claim_each_object_exactly_once(moto_server: MotoServer, table: str) -> None:
    every = ids(300)
    shared_1, shared_2 = every[100:200], every[200:]
    wanted = {"A": every[:100] + shared_1 + shared_2, "B": shared_2 + shared_1}
    outcomes = race(moto_server, table, wanted, lease_until=time.time() + 300)
    by_id = winners(outcomes)
    assert {i: owners for i, owners in by_id.items() if len(owners) > 1} == {}
    assert set(by_id) == set(every)
    for owner, outcome in outcomes.items():
        assert sorted(outcome.claimed + outcome.busy) == sorted(wanted[owner])
    table_now = scan_claims(dynamodb(moto_server), table)
    assert {i: table_now[i]["Owner"] for i in by_id} == {i: owners[0] for i, owners in by_id.items()}
    assert {item["State"] for item in table_now.values()} == {IN_PROGRESS}


def test_a_dead_invocations_claims_are_taken_over_once_then_completed(moto_server: MotoServer, table: str) -> None:
    every = ids(150)
    client = claims_client(moto_server)
    dead = ClaimStore(client, table, ttl_seconds=TTL)
    # The dead invocation's deadline is already behind us (one second, as the contract says).
    assert dead.claim(every[:100], owner="dead", lease_until=time.time() - 1,
                      archive_key="archives/dead.tar.zst").claimed == every[:100]
    wanted = {"A": every[:120], "B": every[50:]}
    outcomes = race(moto_server, table, wanted, lease_until=time.time() + 300)
    by_id = winners(outcomes)
    assert {i: owners for i, owners in by_id.items() if len(owners) > 1} == {}
    assert set(by_id) == set(every)
    taken = {i: key for outcome in outcomes.values() for i, key in outcome.taken_over.items()}
    assert taken == dict.fromkeys(every[:100], "archives/dead.tar.zst")

    # The dead invocation did publish its archive: the new holders commit there.
    for owner, outcome in outcomes.items():
        store = ClaimStore(client, table, ttl_seconds=TTL)
        store.commit(list(outcome.taken_over), owner=owner, archive_key="archives/dead.tar.zst")
        fresh = [i for i in outcome.claimed if i not in outcome.taken_over]
        store.commit(fresh, owner=owner, archive_key=f"archives/{owner}.tar.zst")
    assert dead.release(every, owner="dead") == []
    table_now = scan_claims(dynamodb(moto_server), table)
    assert {item["State"] for item in table_now.values()} == {COMPLETED}
    assert {i for i, item in table_now.items() if item["ArchiveKey"] == "archives/dead.tar.zst"} == set(every[:100])
    later = ClaimStore(client, table, ttl_seconds=TTL).claim(every, owner="C", lease_until=time.time() + 60,
                                                             archive_key="archives/C.tar.zst")
    assert later.claimed == [] and later.busy == []
    assert later.completed == {i: table_now[i]["ArchiveKey"] for i in every}
