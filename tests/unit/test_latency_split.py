"""The arithmetic of local.latency: each object's wait cut into parts that add up."""

from __future__ import annotations

import pytest

from local import latency


def stamps(uploaded: float = 100.0, sent: float = 100.02, invoked: float = 101.1, handler_start: float = 101.1,
           end: float = 101.8) -> latency.Stamps:
    return latency.Stamps(uploaded=uploaded, sent=sent, invoked=invoked, handler_start=handler_start, end=end)


def test_the_parts_add_up_to_the_total() -> None:
    stamp = stamps(invoked=101.1, handler_start=102.3)  # a cold start: init between invoke and handler
    parts = stamp.parts()
    assert list(parts) == list(latency.PARTS)
    assert parts["S3 -> queue"] == pytest.approx(0.02)
    assert parts["queue -> start"] == pytest.approx(1.08)
    assert parts["cold start"] == pytest.approx(1.2)
    assert parts["invocation"] == pytest.approx(-0.5)  # out of order on purpose: see problems()
    assert sum(parts.values()) == pytest.approx(stamp.total)
    assert stamp.total == pytest.approx(1.8)


def test_out_of_order_instants_are_reported_not_hidden() -> None:
    good, bad = stamps(), stamps(invoked=101.1, handler_start=102.3)
    assert latency.problems([good]) == []
    [problem] = latency.problems([good, bad])
    assert problem.startswith("object 1: invocation -0.5")


def test_breakdown_gives_p50_p99_max_of_every_part_and_the_total() -> None:
    # 100 objects whose queue -> start wait is 0.01 .. 1.00 s; everything else fixed.
    rows = [stamps(sent=100.0, invoked=100.0 + n / 100, handler_start=100.0 + n / 100, end=100.5 + n / 100)
            for n in range(1, 101)]
    result = latency.breakdown(rows)
    assert list(result) == [*latency.PARTS, latency.TOTAL]
    wait = result["queue -> start"]
    assert (wait.p50, wait.p99, wait.max, wait.count) == (pytest.approx(0.505), pytest.approx(0.9901),
                                                          pytest.approx(1.0), 100)
    assert result["invocation"].p99 == pytest.approx(0.5)
    assert result["S3 -> queue"].max == 0
    assert result[latency.TOTAL].max == pytest.approx(1.5)
    for row in result.values():
        assert row.p50 <= row.p99 <= row.max


def test_one_object_and_none() -> None:
    assert latency.percentile([0.7], 99) == 0.7
    assert latency.breakdown([]) == {}
    assert latency.table_lines({}) == ["  (no object to measure)"]
    with pytest.raises(ValueError):
        latency.percentile([], 50)


def test_the_table_has_a_row_per_part_and_the_total() -> None:
    lines = latency.table_lines(latency.breakdown([stamps(), stamps(end=103.0)]))
    assert lines[0].split() == ["p50", "p99", "max"]
    assert [line.split()[0] for line in lines[1:]] == ["S3", "queue", "cold", "invocation", "total"]
