"""The fetch engine against a fake transport: no sockets, callbacks from a fake event loop."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from aggregator.base.errors import FetchError
from aggregator.base.events import ObjectRef
from aggregator.base.objects import Failed, Fetched, FetchResult, Missing, Streamed
from aggregator.fetch.engine import Engine, FetchCancelled
from aggregator.fetch.retry import RetryPolicy
from aggregator.fetch.source import SourceConfig
from tests.unit.fetch.fake_s3 import MODIFIED, FakeConnection, FakeS3, FakeTransport, Fault

CHUNK = 64 * 1024
FAST = RetryPolicy(attempts=5, resumes=3, base=0.001, throttled_base=0.002, cap=0.01)


def source(*, read_timeout: float = 10.0) -> SourceConfig:
    return SourceConfig("http://127.0.0.1:9", "eu-west-2", "AKID", "SECRET", None, read_timeout=read_timeout)


def ref_for(s3: FakeS3, key: str, *, bucket: str = "b", version: bool = False) -> ObjectRef:
    obj = s3.objects[(bucket, key)][-1 if not version else 0]
    return ObjectRef(bucket, key, len(obj.body), obj.etag, obj.version_id if version else None, "01")


@contextmanager
def engine(s3: FakeS3, refs: list[ObjectRef], *, workers: int = 4, queue_depth: int = 8,
           threshold: int = 8 << 20, read_timeout: float = 10.0, cancel: threading.Event | None = None,
           fail_connects: int = 0, stale_after: int | None = None, policy: RetryPolicy = FAST,
           virtual: bool = False, buffer_bytes: int = 64 << 20) -> Iterator[Engine]:
    transport = FakeTransport(s3, window=CHUNK, fail_connects=fail_connects, stale_after=stale_after)
    config = source(read_timeout=read_timeout)
    if virtual:
        config = SourceConfig("https://s3.example", "eu-west-2", "AKID", "SECRET", None, addressing_style="virtual")
    eng = Engine(refs, source=config, transport=transport, workers=workers,
                 queue_depth=queue_depth, stream_threshold=threshold, cancel=cancel, policy=policy, chunk_size=CHUNK,
                 buffer_bytes=buffer_bytes)
    try:
        eng.start()
        yield eng
    finally:
        eng.close()
        transport.close()


def fetch_all(s3: FakeS3, refs: list[ObjectRef], **kwargs: object) -> list[FetchResult]:
    with engine(s3, refs, **kwargs) as eng:  # type: ignore[arg-type]
        results = []
        for result in eng.results():
            if isinstance(result, Streamed):
                body = b"".join(result.chunks)
                results.append(Fetched(result.ref, result.head, body))
            else:
                results.append(result)
        return results


def by_key(results: list[FetchResult]) -> dict[str, FetchResult]:
    return {r.ref.key: r for r in results}


def test_every_ref_yields_one_result_with_its_bytes_and_head() -> None:
    s3 = FakeS3()
    bodies = {f"k/{i}": bytes([i % 251]) * (i * 37 % 9000) for i in range(200)}
    for key, body in bodies.items():
        s3.put("b", key, body)
    refs = [ref_for(s3, key) for key in bodies]
    results = fetch_all(s3, refs, workers=8)
    assert len(results) == len(refs)
    for key, result in by_key(results).items():
        assert isinstance(result, Fetched)
        assert result.body == bodies[key]
        assert result.head.size == len(bodies[key])
        assert result.head.last_modified == MODIFIED
        assert result.head.etag == s3.objects[("b", key)][-1].etag
    assert s3.connects == 8  # one keep-alive connection per worker


def test_duplicate_refs_each_get_a_result() -> None:
    s3 = FakeS3()
    s3.put("b", "k", b"data")
    refs = [ref_for(s3, "k")] * 3
    assert [type(r) for r in fetch_all(s3, refs)] == [Fetched] * 3


def test_a_versioned_ref_gets_its_own_version_by_version_id() -> None:
    s3 = FakeS3()
    s3.put("b", "k", b"old", version_id="v1", etag="e1")
    s3.put("b", "k", b"new", version_id="v2", etag="e2")
    [result] = fetch_all(s3, [ref_for(s3, "k", version=True)])
    assert isinstance(result, Fetched) and result.body == b"old" and result.head.version_id == "v1"
    [seen] = s3.requests
    assert seen.path == "/b/k?versionId=v1"
    assert "If-Match" not in seen.headers


def test_an_unversioned_ref_is_pinned_with_if_match() -> None:
    s3 = FakeS3()
    s3.put("b", "k", b"old", etag="e1")
    old = ref_for(s3, "k")
    s3.put("b", "k", b"new", etag="e2")  # overwritten since the event
    [result] = fetch_all(s3, [old])
    assert isinstance(result, Missing)
    assert s3.requests[0].headers["If-Match"] == '"e1"'


@pytest.mark.parametrize("key", ["with space+plus%25", "ü/日本//x/../y", "k" * 1024])
def test_keys_arrive_at_the_server_intact(key: str) -> None:
    s3 = FakeS3()
    s3.put("b", key, b"body")
    [result] = fetch_all(s3, [ref_for(s3, key)])
    assert isinstance(result, Fetched) and result.ref.key == key


def test_gone_objects_are_missing_without_retries() -> None:
    s3 = FakeS3()
    s3.put("b", "deleted", b"x")
    deleted = ref_for(s3, "deleted")
    s3.delete("b", "deleted")
    s3.put("b", "versioned", b"x", version_id="v1")
    no_such_version = ObjectRef("b", "versioned", 1, None, "v9", None)
    bad_version = ObjectRef("b", "versioned", 1, None, "bad-id", None)
    results = fetch_all(s3, [deleted, no_such_version, bad_version])
    assert all(isinstance(r, Missing) for r in results)
    assert len(s3.requests) == 3


def test_forbidden_fails_at_once() -> None:
    s3 = FakeS3()
    s3.put("b", "k", b"x", faults=[Fault(status=403, code="AccessDenied")])
    [result] = fetch_all(s3, [ref_for(s3, "k")])
    assert isinstance(result, Failed) and isinstance(result.error, FetchError)
    assert "403" in str(result.error)
    assert len(s3.requests) == 1


def test_throttling_and_server_errors_are_retried() -> None:
    s3 = FakeS3()
    s3.put("b", "k", b"payload", faults=[Fault(status=503, code="SlowDown"), Fault(status=429),
                                         Fault(status=500, code="InternalError")])
    [result] = fetch_all(s3, [ref_for(s3, "k")])
    assert isinstance(result, Fetched) and result.body == b"payload"
    assert len(s3.requests) == 4


def test_retries_are_bounded() -> None:
    s3 = FakeS3()
    s3.put("b", "k", b"x", faults=[Fault(status=500)] * 10)
    [result] = fetch_all(s3, [ref_for(s3, "k")])
    assert isinstance(result, Failed)
    assert "failed 5 times" in str(result.error)
    assert len(s3.requests) == FAST.attempts


def test_reset_before_the_body_ends_is_retried() -> None:
    s3 = FakeS3(chunk=1000)
    s3.put("b", "k", b"z" * 5000, faults=[Fault(reset_after=2000)])
    [result] = fetch_all(s3, [ref_for(s3, "k")])
    assert isinstance(result, Fetched) and result.body == b"z" * 5000
    assert len(s3.requests) == 2


def test_a_truncated_body_is_never_delivered() -> None:
    s3 = FakeS3(chunk=1000)
    s3.put("b", "once", b"a" * 5000, faults=[Fault(truncate_to=3000)])
    s3.put("b", "always", b"b" * 5000, faults=[Fault(truncate_to=3000)] * 10)
    results = by_key(fetch_all(s3, [ref_for(s3, "once"), ref_for(s3, "always")]))
    assert isinstance(results["once"], Fetched) and results["once"].body == b"a" * 5000
    assert isinstance(results["always"], Failed) and "truncated" in str(results["always"].error)


def test_a_stalled_response_times_out_and_is_retried() -> None:
    s3 = FakeS3()
    s3.put("b", "k", b"x" * 100, faults=[Fault(stall=True)])
    [result] = fetch_all(s3, [ref_for(s3, "k")], read_timeout=0.3)
    assert isinstance(result, Fetched)
    assert len(s3.requests) == 2


def test_failed_connects_are_retried() -> None:
    s3 = FakeS3()
    s3.put("b", "k", b"x")
    [result] = fetch_all(s3, [ref_for(s3, "k")], workers=1, fail_connects=2)
    assert isinstance(result, Fetched)
    assert s3.connects == 3


def test_one_failure_does_not_touch_the_others() -> None:
    s3 = FakeS3()
    for i in range(50):
        s3.put("b", f"k{i}", f"body{i}".encode(), faults=[Fault(status=403)] if i == 7 else [])
    results = by_key(fetch_all(s3, [ref_for(s3, f"k{i}") for i in range(50)]))
    assert isinstance(results["k7"], Failed)
    assert all(isinstance(results[f"k{i}"], Fetched) and results[f"k{i}"].body == f"body{i}".encode()
               for i in range(50) if i != 7)


def test_large_objects_are_streamed_in_chunks_under_flow_control() -> None:
    s3 = FakeS3(chunk=16 * 1024)
    big = bytes(range(256)) * 4096  # 1 MiB
    s3.put("b", "big", big)
    s3.put("b", "small", b"s" * 1000)
    with engine(s3, [ref_for(s3, "big"), ref_for(s3, "small")], threshold=100_000) as eng:
        seen = {}
        for result in eng.results():
            if isinstance(result, Streamed):
                assert result.head.size == len(big)
                time.sleep(0.1)  # nothing is read: the body must wait in the "socket"
                stream = s3.requests and eng._slots  # noqa: F841 - keep the engine alive
                pieces = list(result.chunks)
                assert all(len(p) <= CHUNK for p in pieces)
                seen["big"] = b"".join(pieces)
            else:
                assert isinstance(result, Fetched)
                seen[result.ref.key] = result.body
    assert seen == {"big": big, "small": b"s" * 1000}


def test_a_broken_stream_resumes_with_range_on_the_same_version() -> None:
    s3 = FakeS3(chunk=16 * 1024)
    big = bytes(range(256)) * 4096
    # reset_after counts the bytes of each response: 200,000, then 300,000 more, then 100,000 more.
    s3.put("b", "big", big, version_id="v1", etag="e1",
           faults=[Fault(reset_after=200_000), Fault(reset_after=300_000), Fault(reset_after=100_000)])
    s3.put("b", "big", b"newer", version_id="v2", etag="e2")
    [result] = fetch_all(s3, [ref_for(s3, "big", version=True)], threshold=100_000)
    assert isinstance(result, Fetched) and result.body == big
    ranges = [r.headers.get("Range") for r in s3.requests]
    assert ranges == [None, "bytes=200000-", "bytes=500000-", "bytes=600000-"]
    assert all(r.path == "/b/big?versionId=v1" for r in s3.requests)
    assert all(r.headers.get("If-Match") == '"e1"' for r in s3.requests[1:])


def test_a_stream_that_keeps_breaking_raises_fetch_error() -> None:
    s3 = FakeS3(chunk=16 * 1024)
    s3.put("b", "big", b"q" * 500_000, faults=[Fault(reset_after=1000)] + [Fault(status=500)] * 10)
    with engine(s3, [ref_for(s3, "big")], threshold=100_000) as eng:
        result = next(eng.results())
        assert isinstance(result, Streamed)
        with pytest.raises(FetchError, match="broke off"):
            b"".join(result.chunks)


def test_an_object_replaced_mid_stream_raises_fetch_error() -> None:
    s3 = FakeS3(chunk=16 * 1024)
    s3.put("b", "big", b"q" * 500_000, etag="e1", faults=[Fault(reset_after=100_000)])
    pinned = ref_for(s3, "big")
    with engine(s3, [pinned], threshold=100_000) as eng:
        result = next(eng.results())
        assert isinstance(result, Streamed)
        s3.objects[("b", "big")][-1].etag = "e2"  # overwritten: If-Match on e1 now fails
        with pytest.raises(FetchError, match="412"):
            b"".join(result.chunks)


def test_an_abandoned_stream_frees_its_worker() -> None:
    s3 = FakeS3(chunk=16 * 1024)
    s3.put("b", "big", b"q" * 1_000_000)
    for i in range(5):
        s3.put("b", f"s{i}", b"x")
    refs = [ref_for(s3, "big")] + [ref_for(s3, f"s{i}") for i in range(5)]
    with engine(s3, refs, workers=1, threshold=100_000) as eng:
        results = list(eng.results())  # never reads the stream
    assert sorted(type(r).__name__ for r in results) == ["Fetched"] * 5 + ["Streamed"]
    [stream] = [r for r in results if isinstance(r, Streamed)]
    with pytest.raises(FetchError, match="abandoned"):
        b"".join(stream.chunks)


def test_back_pressure_bounds_requests_ahead_of_the_consumer() -> None:
    s3 = FakeS3()
    for i in range(100):
        s3.put("b", f"k{i}", b"x")
    with engine(s3, [ref_for(s3, f"k{i}") for i in range(100)], workers=2, queue_depth=3) as eng:
        time.sleep(0.2)
        assert len(s3.requests) == 2 + 3  # workers + queue_depth, then it waits
        results = eng.results()
        next(results)
        time.sleep(0.1)
        assert len(s3.requests) == 6
        assert sum(1 for _ in results) == 99


def test_cancel_stops_the_workers_and_the_iterator() -> None:
    s3 = FakeS3()
    for i in range(100):
        s3.put("b", f"k{i}", b"x", faults=[Fault(stall=True)] if i >= 10 else [])
    cancel = threading.Event()
    with engine(s3, [ref_for(s3, f"k{i}") for i in range(100)], workers=4, cancel=cancel) as eng:
        results = eng.results()
        got = [next(results) for _ in range(10)]
        assert all(isinstance(r, Fetched) for r in got)
        cancel.set()
        with pytest.raises(FetchCancelled):
            next(results)
        requests = len(s3.requests)
        time.sleep(0.2)
        assert len(s3.requests) == requests  # nothing new after the cancel
    assert isinstance(FetchCancelled("x"), FetchError)


def test_cancel_interrupts_a_stream_being_read() -> None:
    s3 = FakeS3(chunk=16 * 1024)
    s3.put("b", "big", b"q" * 500_000, faults=[Fault(reset_after=100_000)] + [Fault(stall=True)] * 3)
    cancel = threading.Event()
    with engine(s3, [ref_for(s3, "big")], threshold=1000, cancel=cancel) as eng:
        result = next(eng.results())
        assert isinstance(result, Streamed)
        threading.Timer(0.2, cancel.set).start()
        with pytest.raises(FetchCancelled):
            b"".join(result.chunks)


def test_no_thread_outlives_the_engine() -> None:
    before = set(threading.enumerate())
    s3 = FakeS3()
    s3.put("b", "k", b"x", faults=[Fault(status=500)])
    cancel = threading.Event()
    fetch_all(s3, [ref_for(s3, "k")])
    with engine(s3, [ref_for(s3, "k")] * 20, cancel=cancel) as eng:
        next(eng.results())
        cancel.set()
    with pytest.raises(RuntimeError), engine(s3, [ref_for(s3, "k")] * 20) as eng:
        next(eng.results())
        raise RuntimeError("the consumer failed")
    assert set(threading.enumerate()) == before


def test_no_refs_no_results() -> None:
    assert fetch_all(FakeS3(), []) == []


def test_retry_delays_grow_with_full_jitter() -> None:
    import random

    policy = RetryPolicy(base=0.1, throttled_base=0.5, cap=1.0)
    rng = random.Random(7)
    for failures in range(1, 8):
        ceiling = min(1.0, 0.1 * 2 ** (failures - 1))
        delays = [policy.delay(failures, rng=rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # jitter spans the range
    assert max(policy.delay(1, throttled=True, rng=rng) for _ in range(100)) > 0.1


def test_empty_and_mid_sized_objects_arrive_whole() -> None:
    s3 = FakeS3(chunk=16 * 1024)
    s3.put("b", "empty", b"")
    mid = os.urandom(3 << 20)  # above the flow-control window, below the stream threshold
    s3.put("b", "mid", mid)
    results = by_key(fetch_all(s3, [ref_for(s3, "empty"), ref_for(s3, "mid")]))
    assert isinstance(results["empty"], Fetched) and results["empty"].body == b""
    assert results["empty"].head.size == 0
    assert isinstance(results["mid"], Fetched) and results["mid"].body == mid


def test_the_stream_threshold_is_inclusive() -> None:
    s3 = FakeS3()
    s3.put("b", "at", b"a" * 1000)
    s3.put("b", "over", b"o" * 1001)
    with engine(s3, [ref_for(s3, "at"), ref_for(s3, "over")], threshold=1000) as eng:
        kinds = {}
        for result in eng.results():
            kinds[result.ref.key] = type(result).__name__
            if isinstance(result, Streamed):
                assert b"".join(result.chunks) == b"o" * 1001
    assert kinds == {"at": "Fetched", "over": "Streamed"}


def test_virtual_addressing_connects_to_the_bucket_host() -> None:
    s3 = FakeS3()
    s3.put("b", "k", b"x")
    s3.put("other", "k", b"y")
    with engine(s3, [ref_for(s3, "k"), ref_for(s3, "k", bucket="other")], workers=1, virtual=True) as eng:
        results = list(eng.results())
    assert all(isinstance(r, Missing) for r in results)  # the fake serves path style only
    assert [(r.host, r.headers["Host"], r.path) for r in s3.requests] == [
        ("b.s3.example", "b.s3.example", "/k"), ("other.s3.example", "other.s3.example", "/k")]


def test_a_stale_kept_alive_connection_is_not_a_failed_attempt() -> None:
    s3 = FakeS3()
    for i in range(20):
        s3.put("b", f"k{i}", f"v{i}".encode())
    once = RetryPolicy(attempts=1, resumes=0, base=0.001, throttled_base=0.001, cap=0.001)
    results = fetch_all(s3, [ref_for(s3, f"k{i}") for i in range(20)], workers=2, stale_after=1, policy=once)
    assert all(isinstance(r, Fetched) for r in results) and len(results) == 20
    assert s3.connects > 2


def test_waiting_bodies_are_bounded_in_bytes() -> None:
    s3 = FakeS3()
    for i in range(50):
        s3.put("b", f"k{i}", b"z" * 4000)
    with engine(s3, [ref_for(s3, f"k{i}") for i in range(50)], workers=2, queue_depth=40, threshold=5000,
                buffer_bytes=10_000) as eng:
        time.sleep(0.2)
        assert len(s3.requests) <= 3 + 2  # 12,000 bytes waiting stop the slots; two were in flight
        assert sum(1 for _ in eng.results()) == 50


def _open_streams(eng: Engine) -> int:
    return sum(1 for slot in eng._slots if slot.job is not None and slot.job.stream is not None
               and not slot.job.stream.finished)


@pytest.mark.parametrize("sizes_in_events", ["true", "understated"])
def test_at_most_two_large_objects_are_open_at_once(sizes_in_events: str) -> None:
    # Eight workers, six large objects among small ones: with true sizes in the events the
    # writer finds at most MAX_OPEN_STREAMS streams open; with understated ones the limit
    # cannot act before the heads arrive, but the count stays right and nothing is lost.
    from aggregator.fetch.engine import MAX_OPEN_STREAMS

    s3 = FakeS3(chunk=16 * 1024)
    bodies = {f"big{i}": bytes([i]) * 300_000 for i in range(6)} | {f"s{i}": b"s" * 100 for i in range(10)}
    for key, body in bodies.items():
        s3.put("b", key, body)
    refs = [ref_for(s3, key) for key in bodies]
    if sizes_in_events == "understated":
        refs = [ObjectRef(r.bucket, r.key, 10, r.etag, r.version_id, r.sequencer) for r in refs]
    seen: dict[str, bytes] = {}
    most_open = 0
    with engine(s3, refs, workers=8, threshold=100_000) as eng:
        for result in eng.results():
            time.sleep(0.02)  # let every slot that can start do so
            most_open = max(most_open, _open_streams(eng))
            if isinstance(result, Streamed):
                seen[result.ref.key] = b"".join(result.chunks)
            else:
                assert isinstance(result, Fetched)
                seen[result.ref.key] = result.body
        assert eng._large_open == 0 and not eng._large_waiting
    assert seen == bodies
    if sizes_in_events == "true":
        assert most_open == MAX_OPEN_STREAMS


def test_streams_abandoned_while_reconnecting_free_their_large_slots() -> None:
    # Two large bodies break while nobody reads them; their slots reconnect slowly, and the
    # writer abandons both meanwhile. The reconnects must not send, and the two large slots
    # must pass to the next large objects, not stay taken until the deadline.
    class SlowReconnects(FakeTransport):
        def connect(self, host: str, on_done: Any) -> None:
            self.connects_seen = getattr(self, "connects_seen", 0) + 1
            if self.connects_seen <= 2:
                super().connect(host, on_done)
                return
            self.server.connects += 1
            conn = FakeConnection(self, host)
            self.connections.append(conn)
            threading.Timer(0.3, lambda: self.post(lambda: on_done(conn, None))).start()

    s3 = FakeS3(chunk=16 * 1024)
    for key in ("A", "A2"):
        s3.put("b", key, b"x" * 400_000, faults=[Fault(reset_after=CHUNK // 2)])
    for key in ("B", "C"):
        s3.put("b", key, b"y" * 400_000)
    refs = [ref_for(s3, key) for key in ("A", "A2", "B", "C")]
    cancel = threading.Event()
    transport = SlowReconnects(s3, window=CHUNK)
    eng = Engine(refs, source=source(), transport=transport, workers=4, queue_depth=8, stream_threshold=100_000,
                 cancel=cancel, policy=FAST, chunk_size=CHUNK)
    timer = threading.Timer(5.0, cancel.set)
    timer.start()
    got: dict[str, bytes | None] = {}
    try:
        eng.start()
        for result in eng.results():
            assert isinstance(result, Streamed)
            if result.ref.key in ("A", "A2"):
                time.sleep(0.1)  # refused by the writer: left unread, abandoned on the next step
                got[result.ref.key] = None
            else:
                got[result.ref.key] = b"".join(result.chunks)
    finally:
        timer.cancel()
        eng.close()
        transport.close()
    assert not cancel.is_set()
    assert got == {"A": None, "A2": None, "B": b"y" * 400_000, "C": b"y" * 400_000}
    assert eng._large_open == 0
