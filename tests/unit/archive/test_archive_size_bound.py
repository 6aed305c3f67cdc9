"""Property: ``stored_size_bound`` is never below what an archive really stores.

The spool trusts it to send a batch to disk at once; a bound that ran short would only
cost memory (the spool still spills), but it would make the memory figures lie.
"""

from __future__ import annotations

import io
import os
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.archive import ArchiveWriter, stored_size_bound
from tests.unit.archive.conftest import CODECS, fetched

_HOSTILE = st.sampled_from(["%", "\x00", "\x1b", "\n", '"', "\\", "é", "\U0001f600", "/", ".."])
_KEYS = st.lists(st.one_of(_HOSTILE, st.characters(exclude_categories=["Cs"])), min_size=1, max_size=300).map(
    "".join).filter(lambda key: len(key.encode()) <= 1024)


@settings(max_examples=60, deadline=None)
@given(members=st.lists(st.tuples(_KEYS, st.integers(0, 5000)), min_size=0, max_size=12),
       codec=st.sampled_from(CODECS))
def test_the_bound_holds_for_incompressible_members_and_hostile_names(members: list[tuple[str, int]],
                                                                     codec: str) -> None:
    sink = io.BytesIO()
    items = [fetched(f"{i}/{key}", os.urandom(size)) for i, (key, size) in enumerate(members)]
    with ArchiveWriter(sink, codec=codec, archive_id="a", created_at=datetime(2026, 1, 1, tzinfo=UTC)) as writer:
        for item in items:
            writer.add(item)
        summary = writer.finish()
    bound = stored_size_bound((item.head.size, len(item.ref.bucket) + len(item.ref.key.encode())) for item in items)
    assert summary.size <= bound


def test_the_bound_is_not_wildly_loose_for_plain_logs() -> None:
    # 1,000 x 8 KiB under ordinary names: within a few percent of the data itself.
    bound = stored_size_bound([(8192, 60)] * 1000)
    assert 8192 * 1000 < bound < 8192 * 1000 * 1.6
