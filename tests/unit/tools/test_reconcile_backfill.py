"""The pure parts of reconcile and backfill: claim ids, item sizes, the notification's shape,
the rate limit, the report reader."""

from __future__ import annotations

import itertools
import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aggregator.base.events import ObjectRef, parse_body
from aggregator.base.names import object_id
from aggregator.tools.backfill import RateLimiter, notification, read_report
from aggregator.tools.common import UsageError
from aggregator.tools.reconcile import ReadUnits, Version, claim_id, item_size, parse_unversioned_id

NOW = datetime(2026, 12, 6, 18, 0, tzinfo=UTC)


@pytest.mark.parametrize("key", ["plain", "with space+plus/é#hash#e:tricky@x", "a/b/c"])
def test_an_unversioned_claim_id_gives_back_bucket_key_and_etag(key: str) -> None:
    oid = object_id(ObjectRef(bucket="b", key=key, size=1, etag="abc-2", version_id=None, sequencer="00FF"))
    assert parse_unversioned_id(oid) == ("b", key, "abc-2")
    versioned = object_id(ObjectRef(bucket="b", key=key, size=1, etag="abc", version_id="v1", sequencer=None))
    assert parse_unversioned_id(versioned) is None


def test_a_versioned_claim_id_is_the_functions_own() -> None:
    version = Version("b", "k", "v1", "etag", 3, NOW)
    assert claim_id(version) == object_id(ObjectRef(bucket="b", key="k", size=99, etag="other", version_id="v1",
                                                    sequencer="seq"))


def test_item_sizes_follow_dynamodbs_rules() -> None:
    item = {"ObjectID": {"S": "abcd#b/k"}, "LeaseUntil": {"N": "1765000000.125"}, "Flag": {"BOOL": True},
            "EarlierArchiveKeys": {"L": [{"S": "x"}, {"S": "yz"}]}}
    assert item_size(item) == (8 + 8) + (10 + 8) + (4 + 1) + (18 + 3 + 2 + 3)


def test_read_units_prefer_the_servers_figure_and_say_when_the_rule_differs() -> None:
    units = ReadUnits()
    units.add(11.0, 5.5)
    assert units.total == 11 and "DynamoDB's rule" in units.describe() and "gives 5.5" in units.describe()
    silent = ReadUnits()
    silent.add(None, 5.5)
    assert silent.total == 5.5 and "reported none" in silent.describe()


@pytest.mark.parametrize("version_id", ["3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY", None])
def test_a_backfill_notification_parses_as_the_function_parses_s3s(version_id: str | None) -> None:
    line = {"bucket": "landing", "key": "in/sensor readings (1) é+plus.json", "version_id": version_id,
            "etag": "9b2cf535f27731c974343645a3985328", "size": 42, "state": "never_claimed", "archive": None}
    body = notification(line, region="eu-west-2", now=NOW)
    record = json.loads(body)["Records"][0]
    assert record["s3"]["object"]["key"] == "in/sensor+readings+%281%29+%C3%A9%2Bplus.json"
    parsed = parse_body(body)
    assert parsed.objects == (ObjectRef(bucket="landing", key=line["key"], size=42, etag=line["etag"],
                                        version_id=version_id, sequencer=None),)
    assert parse_body(notification(line, region="eu-west-2", now=NOW)) == parsed  # same identity every run


def test_the_rate_limit_spaces_sends() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(20, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        limiter.wait_for(10)
    assert now[0] == pytest.approx(102.0) and len(slept) == 4  # 40 messages before the 5th batch: 2 s at 20/s


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds


@pytest.mark.parametrize("rate", [0.5, 1, 3, 10, 15, 15.9, 25, 99])
def test_no_window_holds_more_than_the_rate_even_after_slow_sends(rate: float) -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate, clock=clock, sleep=clock.sleep)
    sizes = itertools.cycle(limiter.sizes)
    rng = random.Random(rate)
    sends: list[tuple[float, int]] = []
    for _ in range(80):
        n = next(sizes)
        limiter.wait_for(n)
        sends.append((clock.now, n))
        clock.now += rng.choice([0.0, 0.0, 0.01, 0.2, 3.0])  # the call itself; sometimes retried for long
    window, capacity = (1.0, int(rate)) if rate >= 1 else (1 / rate, 1)
    assert max(limiter.sizes) <= 10 and sum(limiter.sizes) == capacity
    busiest = max(sum(n for t, n in sends if start <= t < start + window) for start, _ in sends)
    assert busiest <= capacity


def test_the_rate_is_used_in_full_in_evenly_spaced_calls() -> None:
    clock = FakeClock()
    limiter = RateLimiter(15, clock=clock, sleep=clock.sleep)
    assert limiter.sizes == (8, 7)
    times = []
    for n in [8, 7] * 3:
        limiter.wait_for(n)
        times.append(clock.now)
    assert times == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])  # 45 messages in 3 s, never 16 in one


def test_a_rate_below_one_sends_one_message_per_period() -> None:
    clock = FakeClock()
    limiter = RateLimiter(0.25, clock=clock, sleep=clock.sleep)
    assert limiter.sizes == (1,)
    for _ in range(3):
        limiter.wait_for(1)
    assert clock.now == pytest.approx(8.0)
    with pytest.raises(ValueError):
        limiter.wait_for(2)


def test_the_report_reader_keeps_never_claimed_and_names_a_bad_line(tmp_path: Path) -> None:
    report = tmp_path / "r.jsonl"
    lines = [{"bucket": "b", "key": "k1", "version_id": "v", "etag": "e", "state": "never_claimed", "archive": None},
             {"bucket": "b", "key": "k2", "version_id": "v", "etag": "e", "state": "archived", "archive": "a"}]
    report.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    assert [line["key"] for line in read_report(str(report))] == ["k1"]
    report.write_text(json.dumps(lines[0]) + "\n{not json\n")
    with pytest.raises(UsageError, match=r"r.jsonl:2: not a JSON line"):
        list(read_report(str(report)))
    report.write_bytes(b"\xff\xfe")
    with pytest.raises(UsageError, match="not UTF-8"):
        list(read_report(str(report)))
    with pytest.raises(UsageError, match="cannot read"):
        list(read_report(str(tmp_path / "absent")))


def test_a_retried_batch_waits_for_its_room_in_the_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ClientError

    from aggregator.tools import backfill

    clock = FakeClock()
    monkeypatch.setattr(backfill.time, "sleep", clock.sleep)
    limiter = RateLimiter(10, clock=clock, sleep=clock.sleep)
    landed: list[tuple[float, int]] = []

    class ThrottledOnce:
        calls = 0

        def send_message_batch(self, *, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, object]:
            self.calls += 1
            if self.calls == 1:
                raise ClientError({"Error": {"Code": "ThrottlingException"}}, "SendMessageBatch")
            landed.append((clock.now, len(Entries)))
            return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}

    sqs = ThrottledOnce()
    chunk = [({"bucket": "b", "key": f"k{i}"}, "{}") for i in range(10)]
    limiter.wait_for(10)
    assert backfill._send(sqs, "q", chunk, limiter=limiter) == []
    limiter.wait_for(10)
    assert backfill._send(sqs, "q", chunk, limiter=limiter) == []
    busiest = max(sum(n for t, n in landed if start <= t < start + 1.0) for start, _ in landed)
    assert busiest <= 10, landed
