"""Admission before any GET: the disk the archive and its staged bodies need, and the time."""

from __future__ import annotations

from aggregator.base.events import ObjectRef
from aggregator.fetch import STREAM_THRESHOLD
from aggregator.pipeline.assemble import (
    LARGE_FETCH_BYTES_PER_SECOND,
    UPLOAD_BYTES_PER_SECOND,
    admit,
    expected_seconds,
)

PLENTY = 1 << 40


def ref(key: str, size: int) -> ObjectRef:
    return ObjectRef("landing", key, size, "e", None, "01")


LARGE = STREAM_THRESHOLD + 1


def test_admission_counts_the_two_largest_staged_bodies_on_top_of_the_archive() -> None:
    # One large body is received while the one before is archived: two staged files at once.
    refs = [ref("a", LARGE), ref("b", 1000), ref("c", LARGE), ref("d", 3 * LARGE), ref("e", 1000)]
    # a, b and c (2 x LARGE + 1000 in the archive) plus both staged copies: 4 x LARGE + 1000.
    # d would need 5 x LARGE + 1000 + 3 x LARGE + LARGE; e, small, still fits after it.
    admission = admit(refs, capacity=4 * LARGE + 2000)
    assert [r.key for r in admission.admitted] == ["a", "b", "c", "e"]
    assert [r.key for r in admission.no_room] == ["d"] and admission.no_time == []
    assert [r.key for r in admit(refs[:3], capacity=4 * LARGE + 999).admitted] == ["a", "b"]
    # Small objects are never staged: only their own size counts.
    assert [r.key for r in admit([ref("s", 1000)], capacity=1000).admitted] == ["s"]


def test_admission_counts_the_time_a_large_body_needs() -> None:
    assert expected_seconds(ref("s", 1000)) == 1000 / UPLOAD_BYTES_PER_SECOND
    assert expected_seconds(ref("l", LARGE)) == LARGE / UPLOAD_BYTES_PER_SECOND + LARGE / LARGE_FETCH_BYTES_PER_SECOND
    one = expected_seconds(ref("l", LARGE))
    refs = [ref("l1", LARGE), ref("l2", LARGE), ref("s", 1000)]
    admission = admit(refs, capacity=PLENTY, seconds=one * 1.5)
    assert [r.key for r in admission.admitted] == ["l1", "s"]  # a later small one still fits
    assert [r.key for r in admission.no_time] == ["l2"] and admission.no_room == []
    assert admit(refs, capacity=PLENTY).admitted == refs  # no time limit given


def test_one_object_too_slow_for_any_batch_is_still_tried_last() -> None:
    # Rejected for time on every delivery, it would only ever reach the DLQ; tried last and
    # outside the others' budget, it costs nobody else their place (and fails alone if cut).
    one = expected_seconds(ref("l", LARGE))
    refs = [ref("huge1", 4 * LARGE), ref("l1", LARGE), ref("huge2", 4 * LARGE), ref("s", 1000)]
    admission = admit(refs, capacity=PLENTY, seconds=one * 1.5)
    assert [r.key for r in admission.admitted] == ["l1", "s", "huge1"]
    assert [r.key for r in admission.no_time] == ["huge2"]  # one long shot per batch
    assert [r.key for r in admit(refs[:1], capacity=PLENTY, seconds=one).admitted] == ["huge1"]
    assert admit(refs[:1], capacity=4 * LARGE, seconds=one).no_room == refs[:1]  # the disk still rules

