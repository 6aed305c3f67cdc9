"""The claim store's DynamoDB client against moto's server: it answers like boto3's.

Every operation the claim store uses is sent both ways on the same table and the answers
compared (``ResponseMetadata`` aside), including the errors whose members the claim store
reads (``Item`` of a failed condition, ``CancellationReasons``). The transport failures go
through a loopback fault proxy and must surface as the botocore errors the claim store
retries.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    ReadTimeoutError,
)

from aggregator import clients
from aggregator.claims.dynamodb import DynamoDBJsonClient
from tests.support.fault_proxy import Fault, FaultProxy, json_error
from tests.support.servers import MotoServer, free_port
from tests.support.tables import create_claims_table

pytestmark = [pytest.mark.servers, pytest.mark.timeout(120)]

REGION = "eu-west-2"


@pytest.fixture(scope="module")
def boto(moto_server: MotoServer) -> Any:
    return boto3.client("dynamodb", endpoint_url=moto_server.endpoint_url, region_name=REGION,
                        config=Config(retries={"total_max_attempts": 1}))


def lean(url: str, *, credentials: Any = None, read_timeout: float = 5.0) -> DynamoDBJsonClient:
    return DynamoDBJsonClient(endpoint_url=url, region=REGION, read_timeout=read_timeout, connect_timeout=1.0,
                              credentials=credentials or Credentials("testing", "testing", "a-session-token"))


@pytest.fixture
def table(boto: Any) -> str:
    name = f"lean-{uuid.uuid4().hex[:8]}"
    create_claims_table(boto, name)
    return name


@pytest.fixture
def client(moto_server: MotoServer) -> Iterator[DynamoDBJsonClient]:
    client = lean(moto_server.endpoint_url)
    yield client
    client.close()


def without_metadata(answer: dict[str, Any]) -> dict[str, Any]:
    """The answer without what the claim store never reads (and botocore keeps or drops by model)."""
    return {k: v for k, v in answer.items() if k not in ("ResponseMetadata", "Message", "message")}


def item(oid: str, owner: str = "a") -> dict[str, Any]:
    return {"ObjectID": {"S": oid}, "State": {"S": "IN_PROGRESS"}, "Owner": {"S": owner},
            "LeaseUntil": {"N": "1790000000.125"}, "EarlierArchiveKeys": {"L": [{"S": "k/é 1"}]}}


def both(boto: Any, lean_client: DynamoDBJsonClient, method: str, **params: Any) -> tuple[Any, Any]:
    """Call ``method`` with each client; the answers, or the ClientErrors' responses."""
    answers = []
    for c in (boto, lean_client):
        try:
            answers.append(("ok", without_metadata(getattr(c, method)(**params))))
        except ClientError as e:
            answers.append(("error", without_metadata(e.response), e.operation_name))
    return answers[0], answers[1]


def test_writes_and_reads_answer_like_boto3(boto: Any, client: DynamoDBJsonClient, table: str) -> None:
    ids = [f"ab12#bucket/ключ {i}#v:{i}" for i in range(30)]
    answer = client.batch_write_item(RequestItems={table: [{"PutRequest": {"Item": item(i)}} for i in ids]})
    assert answer["UnprocessedItems"] == {}
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    get = {"RequestItems": {table: {"Keys": [{"ObjectID": {"S": i}} for i in ids], "ConsistentRead": True}}}
    ours, theirs = both(boto, client, "batch_get_item", **get)
    assert ours == theirs
    assert sorted(i["ObjectID"]["S"] for i in ours[1]["Responses"][table]) == sorted(ids)
    assert ours[1]["Responses"][table][0]["EarlierArchiveKeys"] == {"L": [{"S": "k/é 1"}]}


def test_a_failed_condition_carries_the_old_item_like_boto3(boto: Any, client: DynamoDBJsonClient,
                                                              table: str) -> None:
    client.put_item(TableName=table, Item=item("x", owner="holder"))
    put = {"TableName": table, "Item": item("x", owner="me"), "ConditionExpression": "attribute_not_exists(ObjectID)",
           "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}
    expected, got = both(boto, client, "put_item", **put)
    assert got == expected
    assert got[0] == "error" and got[2] == "PutItem"
    assert got[1]["Error"]["Code"] == "ConditionalCheckFailedException"
    assert got[1]["Item"]["Owner"] == {"S": "holder"}


def test_a_cancelled_transaction_carries_its_reasons_like_boto3(boto: Any, client: DynamoDBJsonClient,
                                                                 table: str) -> None:
    client.put_item(TableName=table, Item=item("taken"))
    transaction = {"TransactItems": [
        {"Put": {"TableName": table, "Item": item(oid, owner="me"),
                 "ConditionExpression": "attribute_not_exists(ObjectID)",
                 "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}} for oid in ("free", "taken")]}
    expected, got = both(boto, client, "transact_write_items", **transaction)
    assert got == expected
    assert got[1]["Error"]["Code"] == "TransactionCanceledException"
    assert [r["Code"] for r in got[1]["CancellationReasons"]] == ["None", "ConditionalCheckFailed"]
    assert got[1]["CancellationReasons"][1]["Item"]["Owner"] == {"S": "a"}
    # Released by a conditional delete, as the claim store does.
    client.delete_item(TableName=table, Key={"ObjectID": {"S": "taken"}}, ConditionExpression="#o = :o",
                       ExpressionAttributeNames={"#o": "Owner"}, ExpressionAttributeValues={":o": {"S": "a"}})
    assert "Item" not in boto.get_item(TableName=table, Key={"ObjectID": {"S": "taken"}})


def test_an_unknown_table_is_a_client_error_like_boto3(boto: Any, client: DynamoDBJsonClient) -> None:
    expected, got = both(boto, client, "delete_item", TableName="no-such-table", Key={"ObjectID": {"S": "x"}})
    assert got[0] == "error" and got[1]["Error"]["Code"] == expected[1]["Error"]["Code"] == "ResourceNotFoundException"


def test_requests_are_signed_with_the_current_credentials(moto_server: MotoServer, table: str) -> None:
    class Rotating:
        def __init__(self) -> None:
            self.calls = 0

        def get_frozen_credentials(self) -> Any:
            self.calls += 1
            rotated = Credentials(f"AKIDROTATED{self.calls}", "secret", f"token-{self.calls}")
            return rotated.get_frozen_credentials()

    rotating = Rotating()
    with FaultProxy(moto_server.endpoint_url) as proxy:
        seen: list[tuple[str | None, str | None]] = []
        proxy.add(lambda r: seen.append((r.header("Authorization"), r.header("X-Amz-Security-Token"))) and False,
                  Fault("delay"))
        client = lean(proxy.url, credentials=rotating)
        for _ in range(2):
            client.batch_get_item(RequestItems={table: {"Keys": [{"ObjectID": {"S": "none"}}]}})
    assert rotating.calls == 2
    assert [(a.split("Credential=")[1].split("/")[0], t) for a, t in seen if a] == [
        ("AKIDROTATED1", "token-1"), ("AKIDROTATED2", "token-2")]


def test_a_closed_port_is_a_connection_error() -> None:
    with pytest.raises(EndpointConnectionError):
        lean(f"http://127.0.0.1:{free_port()}").batch_get_item(RequestItems={})


@pytest.mark.parametrize(("fault", "error"), [
    (Fault("delay", seconds=3.0), ReadTimeoutError),
    (Fault("drop"), ConnectionClosedError),
    (Fault("respond", status=200, headers=(("x-amz-crc32", "1"),), body=b"{}"), HTTPClientError),
    (Fault("respond", status=200, headers=(("x-amz-crc32", "not-a-number"),), body=b"{}"), HTTPClientError),
    (Fault("respond", status=200, body=b"<html>a captive portal</html>"), HTTPClientError),
])
def test_transport_failures_are_the_errors_the_claim_store_retries(moto_server: MotoServer, table: str,
                                                                    fault: Fault, error: type[Exception]) -> None:
    with FaultProxy(moto_server.endpoint_url) as proxy:
        proxy.add(lambda r: True, fault)
        with pytest.raises(error):
            lean(proxy.url, read_timeout=1.0).batch_get_item(RequestItems={table: {"Keys": [{"ObjectID": {"S": "a"}}]}})


def test_a_throttled_request_is_a_client_error_with_its_code_and_status(moto_server: MotoServer, table: str) -> None:
    with FaultProxy(moto_server.endpoint_url) as proxy:
        proxy.add(lambda r: True, json_error(400, "ProvisionedThroughputExceededException"), times=1)
        proxy.add(lambda r: True, Fault("respond", status=503, body=b"Service Unavailable"), times=1)
        client = lean(proxy.url)
        with pytest.raises(ClientError) as throttled:
            client.batch_get_item(RequestItems={table: {"Keys": [{"ObjectID": {"S": "a"}}]}})
        with pytest.raises(ClientError) as unavailable:
            client.batch_get_item(RequestItems={table: {"Keys": [{"ObjectID": {"S": "a"}}]}})
        assert client.batch_get_item(RequestItems={table: {"Keys": [{"ObjectID": {"S": "a"}}]}})["Responses"] == {
            table: []}
    assert throttled.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
    assert throttled.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert unavailable.value.response["Error"]["Code"] == "503"
    assert unavailable.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503


def test_no_credentials_is_said_before_anything_is_sent() -> None:
    client = DynamoDBJsonClient(endpoint_url=f"http://127.0.0.1:{free_port()}", region=REGION, credentials=None)
    with pytest.raises(NoCredentialsError):
        client.batch_get_item(RequestItems={})


def test_the_factory_resolves_endpoint_region_and_credentials_like_the_sdk(
        moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch, boto: Any, table: str) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", moto_server.endpoint_url)
    monkeypatch.setenv("AWS_REGION", REGION)
    client = clients.claims_client(clients.aws_session(region=REGION), max_pool=4)
    assert (client.endpoint_url, client.region) == (moto_server.endpoint_url, REGION)
    client.put_item(TableName=table, Item=item("from-the-factory"))
    assert boto.get_item(TableName=table, Key={"ObjectID": {"S": "from-the-factory"}})["Item"]["Owner"] == {"S": "a"}


def test_the_factory_goes_through_https_proxy_like_boto3(moto_server: MotoServer, boto: Any, table: str,
                                                          tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.integration.test_proxy_fetch import Pproxy

    for name in ("https_proxy", "http_proxy", "no_proxy", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    origin = moto_server.endpoint_url.split("//", 1)[1]
    with Pproxy(tmp_path / "pproxy.log") as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", moto_server.endpoint_url)
        session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                        region_name=REGION)
        lean_client = clients.claims_client(session)
        try:
            assert lean_client.proxied
            lean_client.put_item(TableName=table, Item=item("via-proxy"))
            got = boto.batch_get_item(RequestItems={table: {"Keys": [{"ObjectID": {"S": "via-proxy"}}]}})
            assert len(got["Responses"][table]) == 1
            assert proxy.carried(origin) >= 1, "the claims client did not go through HTTP_PROXY"
        finally:
            lean_client.close()
