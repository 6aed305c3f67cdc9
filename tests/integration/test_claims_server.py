"""ClaimStore against a real moto_server process: the race and the takeover over HTTP.

Each owner has its own client, store and thread, as separate invocations would, so
requests reach the server concurrently. moto alone gives no isolation between them;
``local/moto_server.py`` serialises DynamoDB writes, so a conditional write is atomic
here as it is in DynamoDB, and these tests check the claim logic over the real wire
format. Tables are small and fresh.
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
from aggregator.claims.store import ClaimResult, ClaimStore
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
         lease_until: float) -> dict[str, ClaimResult]:
    outcomes: dict[str, ClaimResult] = {}
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


def winners(outcomes: dict[str, ClaimResult]) -> dict[str, list[str]]:
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
        assert sorted(outcome.claimed + list(outcome.busy)) == sorted(wanted[owner])
    table_now = scan_claims(dynamodb(moto_server), table)
    assert {i: table_now[i]["Owner"] for i in by_id} == {i: owners[0] for i, owners in by_id.items()}


def test_a_dead_invocations_claims_are_taken_over_once(moto_server: MotoServer, table: str) -> None:
    every = ids(150)
    client = claims_client(moto_server)
    dead = ClaimStore(client, table, ttl_seconds=TTL)
    # The dead invocation's lease is already behind us.
    assert dead.claim(every[:100], owner="dead", lease_until=time.time() - 1,
                      archive_key="archives/dead.tar.zst").claimed == every[:100]
    wanted = {"A": every[:120], "B": every[50:]}
    outcomes = race(moto_server, table, wanted, lease_until=time.time() + 300)
    expired = {i: h for outcome in outcomes.values() for i, h in outcome.expired.items()}
    assert set(expired) == set(every[:100])
    assert {h.archive_key for h in expired.values()} == {"archives/dead.tar.zst"}

    # Its archive does not exist (recovery's verdict): both take over, racing again.
    takers: dict[str, ClaimResult] = {}
    barrier = threading.Barrier(2)

    def take(owner: str) -> None:
        mine = {i: h for i, h in outcomes[owner].expired.items()}
        barrier.wait()
        takers[owner] = ClaimStore(claims_client(moto_server), table, ttl_seconds=TTL).take_over(
            mine, owner=owner, lease_until=time.time() + 300, archive_key=f"archives/{owner}.tar.zst")

    threads = [threading.Thread(target=take, args=(owner,)) for owner in "AB"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=150)
    won = [i for owner in "AB" for i in outcomes[owner].claimed + takers[owner].claimed]
    assert sorted(won) == sorted(every) and len(won) == len(set(won))
    assert dead.release(every, owner="dead") == []  # none of them is the dead one's any more
    table_now = scan_claims(dynamodb(moto_server), table)
    assert {item["Owner"] for item in table_now.values()} <= {"A", "B"}
