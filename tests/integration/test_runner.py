"""The local event-source runner against a real moto server, with a stand-in function.

The stand-in (written to a temp folder, imported by the sandbox like any handler) does
what each message body asks: succeed, report itself as a batch item failure, raise,
hang past the deadline (after starting a grandchild process), or answer with a failure
id that is not in the batch. Asking with ``"until": N`` makes it behave from the Nth
receive on, which is how redelivery is observed. Every invocation is logged to a file
(event, context values, sandbox PID) for the assertions.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aggregator.base.events import parse_body
from local import latency
from local.processes import is_running
from local.resources import aws_client
from local.runner import EventSourceRunner, MappingConfig, RunSummary, StopPolicy, interpret_response
from local.sandbox import FunctionConfig, Invocation
from tests.support.servers import MotoServer

pytestmark = pytest.mark.servers

REGION = "eu-west-2"
STANDIN = textwrap.dedent('''
    import json, os, subprocess, sys, time

    def _log(entry):
        with open(os.environ["STANDIN_LOG"], "a") as f:
            f.write(json.dumps(entry) + "\\n")

    def handler(event, context):
        records = event["Records"]
        _log({"request_id": context.aws_request_id, "function_name": context.function_name,
              "arn": context.invoked_function_arn, "memory": context.memory_limit_in_mb,
              "remaining_ms": context.get_remaining_time_in_millis(), "pid": os.getpid(), "records": records})
        failures = []
        for record in records:
            ask = json.loads(record["body"])
            if "Records" in ask or "Event" in ask:  # an S3 notification (or S3's test event): archived, say
                continue
            if int(record["attributes"]["ApproximateReceiveCount"]) >= ask.get("until", 10**6):
                continue
            if ask["do"] == "fail":
                failures.append({"itemIdentifier": record["messageId"]})
            elif ask["do"] == "raise":
                raise RuntimeError("asked to raise")
            elif ask["do"] == "bad_response":
                return {"batchItemFailures": [{"itemIdentifier": "not-in-this-batch"}]}
            elif ask["do"] == "sleep":
                time.sleep(ask["s"])
            elif ask["do"] == "hang":
                child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
                _log({"grandchild": child.pid})
                time.sleep(600)
        print(json.dumps({"_aws": {"Timestamp": 0, "CloudWatchMetrics": [
            {"Namespace": "Test", "Dimensions": [[]], "Metrics": [{"Name": "Handled", "Unit": "Count"}]}]},
            "Handled": len(records)}))
        return {"batchItemFailures": failures}
''')


@dataclass(frozen=True)
class Queues:
    sqs: Any
    url: str
    arn: str
    dlq_url: str

    def send(self, *asks: dict[str, Any], attributes: dict[str, Any] | None = None) -> list[str]:
        return [self.sqs.send_message(QueueUrl=self.url, MessageBody=json.dumps(ask),
                                      MessageAttributes=attributes or {})["MessageId"] for ask in asks]

    def depth(self, url: str | None = None) -> int:
        attributes = self.sqs.get_queue_attributes(QueueUrl=url or self.url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return sum(int(v) for v in attributes.values())

    def dlq_bodies(self) -> list[dict[str, Any]]:
        messages = self.sqs.receive_message(QueueUrl=self.dlq_url, MaxNumberOfMessages=10).get("Messages", [])
        return [json.loads(m["Body"]) for m in messages]


@pytest.fixture
def make_queues(moto_server: MotoServer) -> Callable[..., Queues]:
    sqs = aws_client("sqs", endpoint_url=moto_server.endpoint_url, region=REGION)

    def make(*, visibility: int = 30, max_receive: int = 5) -> Queues:
        name = f"runner-{uuid.uuid4().hex[:10]}"
        dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        url = sqs.create_queue(QueueName=name, Attributes={
            "VisibilityTimeout": str(visibility),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive}),
        })["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        return Queues(sqs=sqs, url=url, arn=arn, dlq_url=dlq_url)

    return make


@dataclass
class Run:
    summary: RunSummary
    calls: list[dict[str, Any]]  # one per invocation the stand-in saw
    grandchildren: list[int]


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    (tmp_path / "standin.py").write_text(STANDIN)
    log = tmp_path / "calls.jsonl"

    def go(queues: Queues, *, batch_size: int = 10, window: float = 0, timeout: float = 20, concurrency: int = 1,
           idle: float = 1.5) -> Run:
        log.unlink(missing_ok=True)
        mapping = MappingConfig(queue_url=queues.url, queue_arn=queues.arn, region=REGION, batch_size=batch_size,
                                batching_window_s=window, poll_wait_s=1)
        function = FunctionConfig(handler="standin.handler", name="standin", timeout_s=timeout, memory_mb=512,
                                  region=REGION, env={"STANDIN_LOG": str(log)}, task_root=tmp_path,
                                  init_timeout_s=30)
        summary = EventSourceRunner(queues.sqs, mapping, function, concurrency=concurrency,
                                    stop=StopPolicy(idle_s=idle, max_s=120),
                                    log_path=tmp_path / "function.log").run()
        entries = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return Run(summary=summary, calls=[e for e in entries if "records" in e],
                   grandchildren=[e["grandchild"] for e in entries if "grandchild" in e])

    yield go


def test_event_and_context_have_lambdas_shape(make_queues: Callable[..., Queues], run: Callable[..., Run]) -> None:
    queues = make_queues()
    ids = queues.send({"do": "ok"}, {"do": "ok"}, attributes={
        "source": {"DataType": "String", "StringValue": "tests"},
        "raw": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
    })
    result = run(queues, timeout=7)

    assert result.summary.stop_reason == "queue empty"
    records = [record for call in result.calls for record in call["records"]]
    assert sorted(r["messageId"] for r in records) == sorted(ids)
    for record in records:
        assert set(record) >= {"messageId", "receiptHandle", "body", "attributes", "messageAttributes",
                               "md5OfBody", "eventSource", "eventSourceARN", "awsRegion"}
        assert record["eventSource"] == "aws:sqs"
        assert record["eventSourceARN"] == queues.arn
        assert record["awsRegion"] == REGION
        assert record["md5OfBody"] == hashlib.md5(record["body"].encode()).hexdigest()
        assert record["attributes"]["ApproximateReceiveCount"] == "1"
        assert {"SentTimestamp", "ApproximateFirstReceiveTimestamp"} <= set(record["attributes"])
        assert all(isinstance(v, str) for v in record["attributes"].values())
        assert record["messageAttributes"]["source"]["stringValue"] == "tests"
        assert record["messageAttributes"]["raw"]["binaryValue"] == "AAE="  # base64, as Lambda sends it
        assert record["messageAttributes"]["raw"]["dataType"] == "Binary"
    for call in result.calls:
        assert call["function_name"] == "standin"
        assert call["arn"] == f"arn:aws:lambda:{REGION}:123456789012:function:standin"
        assert call["memory"] == "512"  # a string, as the Python runtime hands it over
        assert 0 < call["remaining_ms"] <= 7000
        assert uuid.UUID(call["request_id"])
    assert result.summary.metrics["Handled"] == 2  # EMF lines from the function are summed
    assert result.summary.non_json_lines == 0
    assert queues.depth() == 0


def test_batches_fill_past_ten_messages_within_the_window(make_queues: Callable[..., Queues],
                                                          run: Callable[..., Run]) -> None:
    queues = make_queues()
    queues.send(*[{"do": "ok", "n": n} for n in range(25)])

    result = run(queues, batch_size=25, window=3)

    # ReceiveMessage returns at most 10; one invocation of 25 means the poller kept receiving.
    assert [len(call["records"]) for call in result.calls] == [25]
    assert result.summary.messages_acked == 25
    assert queues.depth() == 0


def test_batches_never_exceed_the_batch_size(make_queues: Callable[..., Queues], run: Callable[..., Run]) -> None:
    queues = make_queues()
    queues.send(*[{"do": "ok", "n": n} for n in range(23)])

    result = run(queues, batch_size=4, window=0)

    sizes = [len(call["records"]) for call in result.calls]
    assert sum(sizes) == 23
    assert max(sizes) <= 4
    assert queues.depth() == 0


def test_only_acknowledged_messages_are_deleted_and_failures_come_back(make_queues: Callable[..., Queues],
                                                                       run: Callable[..., Run]) -> None:
    queues = make_queues(visibility=2)
    ok_ids = queues.send({"do": "ok"}, {"do": "ok"}, {"do": "ok"})
    [flaky] = queues.send({"do": "fail", "until": 2})  # a batch item failure on the first receive only

    result = run(queues, batch_size=10, window=1)

    first = next(r for r in result.summary.records if flaky in {m.message_id for m in r.messages})
    assert set(first.acked) == {i for i in ok_ids if i in {m.message_id for m in first.messages}}
    assert first.failed == (flaky,)
    retries = [m for r in result.summary.records for m in r.messages if m.message_id == flaky]
    assert [m.receive_count for m in retries] == [1, 2]  # redelivered after the visibility timeout
    assert sum(len(r.acked) for r in result.summary.records) == 4
    assert queues.depth() == 0
    assert queues.depth(queues.dlq_url) == 0


def test_an_invocation_that_raises_deletes_nothing(make_queues: Callable[..., Queues],
                                                   run: Callable[..., Run]) -> None:
    queues = make_queues(visibility=2)
    queues.send({"do": "ok"}, {"do": "raise", "until": 2})

    result = run(queues, batch_size=10, window=1)

    first = result.summary.records[0]
    assert first.invocation.outcome == "error"
    assert first.invocation.error is not None and first.invocation.error["errorType"] == "RuntimeError"
    assert first.acked == () and len(first.failed) == 2  # the good message stays too
    assert result.summary.records[-1].invocation.outcome == "ok"
    assert not result.summary.records[-1].invocation.cold_start  # an exception leaves the sandbox warm
    assert result.summary.messages_acked == 2
    assert queues.depth() == 0


def test_failures_reach_the_dlq_after_max_receive_count(make_queues: Callable[..., Queues],
                                                        run: Callable[..., Run]) -> None:
    queues = make_queues(visibility=1, max_receive=3)
    [doomed] = queues.send({"do": "fail", "tag": "doomed"})
    queues.send({"do": "ok"})

    result = run(queues, batch_size=10, window=0)

    receives = [m.receive_count for r in result.summary.records for m in r.messages if m.message_id == doomed]
    assert receives == [1, 2, 3]  # then SQS's redrive moves it instead of a fourth delivery
    assert queues.depth() == 0
    assert queues.dlq_bodies() == [{"do": "fail", "tag": "doomed"}]


def test_an_invalid_failure_report_fails_the_whole_batch(make_queues: Callable[..., Queues],
                                                         run: Callable[..., Run]) -> None:
    queues = make_queues(visibility=2)
    queues.send({"do": "ok"}, {"do": "bad_response", "until": 2})

    result = run(queues, batch_size=10, window=1)

    first = result.summary.records[0]
    assert first.invocation.outcome == "ok"
    assert first.response_problem is not None and first.acked == ()
    assert result.summary.messages_acked == 2
    assert queues.depth() == 0


def test_the_sandbox_is_killed_at_the_deadline(make_queues: Callable[..., Queues], run: Callable[..., Run]) -> None:
    queues = make_queues(visibility=4)
    [slow] = queues.send({"do": "hang", "until": 2})

    result = run(queues, timeout=2)

    outcomes = [r.invocation.outcome for r in result.summary.records]
    assert outcomes == ["timeout", "ok"]
    first, second = result.calls
    assert first["remaining_ms"] <= 2000
    # The whole environment went: the sandbox and the process it started. The retry got
    # a new sandbox (a cold start), and the message, left in the queue, came back.
    assert not is_running(first["pid"])
    assert result.grandchildren and not any(is_running(pid) for pid in result.grandchildren)
    assert second["pid"] != first["pid"]
    assert result.summary.records[1].invocation.cold_start
    assert [m.receive_count for r in result.summary.records for m in r.messages] == [1, 2]
    assert result.summary.records[1].acked == (slow,)
    assert queues.depth() == 0


def test_pollers_invoke_concurrently(make_queues: Callable[..., Queues], run: Callable[..., Run]) -> None:
    queues = make_queues()
    queues.send(*[{"do": "ok", "n": n} for n in range(40)])

    result = run(queues, batch_size=5, window=0, concurrency=3)

    assert result.summary.messages_acked == 40
    assert len({r.poller for r in result.summary.records}) > 1
    assert len({call["pid"] for call in result.calls}) > 1  # one sandbox per poller
    assert queues.depth() == 0


def test_the_next_batch_is_gathered_while_the_sandbox_runs_one(make_queues: Callable[..., Queues],
                                                              run: Callable[..., Run]) -> None:
    queues = make_queues()
    queues.send({"do": "sleep", "s": 1}, {"do": "sleep", "s": 1})

    result = run(queues, batch_size=1, window=0, concurrency=1)

    first, second = sorted(result.summary.records, key=lambda record: record.invoked)
    assert result.summary.messages_acked == 2 and len(result.calls) == 2
    assert second.invoked >= first.ended  # one sandbox: one invocation at a time
    (waiting,) = second.messages
    # ...but the poller received the second message while the first invocation ran, so
    # it did not wait for that invocation to end before its own batching began.
    assert waiting.received is not None and waiting.received < first.ended


def test_each_objects_wait_splits_into_parts_that_add_up(moto_server: MotoServer, make_queues: Callable[..., Queues],
                                                         run: Callable[..., Run]) -> None:
    """Upload -> S3 notification -> queue -> runner -> function, every instant from a real run."""
    queues = make_queues()
    s3 = aws_client("s3", endpoint_url=moto_server.endpoint_url, region=REGION)
    bucket = f"latency-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [
        {"QueueArn": queues.arn, "Events": ["s3:ObjectCreated:*"]}]})
    versions = {f"k/{n:02d} +x.log": s3.put_object(Bucket=bucket, Key=f"k/{n:02d} +x.log", Body=b"x" * n)["VersionId"]
                for n in range(15)}

    result = run(queues, batch_size=10, window=1)

    stamps: dict[str, latency.Stamps] = {}
    sequencers = []
    for record in result.summary.records:
        assert record.invoked <= record.handler_start <= record.ended <= record.finished
        for message in record.messages:
            assert message.sent is not None and message.first_received is not None and message.received is not None
            assert message.sent <= message.first_received <= message.received + 0.001 <= record.invoked + 0.001
            for ref in parse_body(message.body).objects:
                # S3's shape, from our moto server: a UTC eventTime, the version, a sequencer.
                assert ref.event_time is not None and ref.event_time.utcoffset() is not None
                assert ref.version_id == versions[ref.key]
                assert ref.sequencer is not None
                sequencers.append(int(ref.sequencer, 16))
                stamps[ref.key] = latency.Stamps(uploaded=ref.event_time.timestamp(), sent=message.sent,
                                                 invoked=record.invoked, handler_start=record.handler_start,
                                                 end=record.ended)
    assert set(stamps) == set(versions)
    assert len(set(sequencers)) == len(sequencers)
    # SentTimestamp and eventTime have millisecond resolution; the runner's stamps are finer.
    assert latency.problems(stamps.values(), tolerance_s=0.001) == []
    for stamp in stamps.values():
        assert sum(stamp.parts().values()) == pytest.approx(stamp.total, abs=1e-9)
    breakdown = latency.breakdown(stamps.values())
    assert breakdown[latency.TOTAL].count == 15
    assert queues.depth() == 0


@pytest.mark.parametrize(("result", "acked", "failed", "problem"), [
    (None, {"a", "b"}, set(), False),
    ({}, {"a", "b"}, set(), False),
    ({"batchItemFailures": []}, {"a", "b"}, set(), False),
    ({"batchItemFailures": None}, {"a", "b"}, set(), False),
    ({"batchItemFailures": [{"itemIdentifier": "b"}]}, {"a"}, {"b"}, False),
    ({"batchItemFailures": [{"itemIdentifier": ""}]}, set(), {"a", "b"}, True),
    ({"batchItemFailures": [{"itemIdentifier": None}]}, set(), {"a", "b"}, True),
    ({"batchItemFailures": [{"id": "b"}]}, set(), {"a", "b"}, True),
    ({"batchItemFailures": [{"itemIdentifier": "zz"}]}, set(), {"a", "b"}, True),
    ("ok", set(), {"a", "b"}, True),
])
def test_batch_responses_are_read_as_lambda_reads_them(result: Any, acked: set[str], failed: set[str],
                                                       problem: bool) -> None:
    invocation = Invocation(request_id="r", outcome="ok", started=0, duration_s=0, cold_start=False, result=result)
    got_acked, got_failed, got_problem = interpret_response(["a", "b"], invocation, report_failures=True)
    assert (got_acked, got_failed, got_problem is not None) == (acked, failed, problem)
