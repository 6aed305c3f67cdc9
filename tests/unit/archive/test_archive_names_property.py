"""Property: any key becomes a member name that is safe to extract, and no two collide.

The names come from aggregator.base.names; this checks them as the archive uses them,
through MemberNames and through the tar headers and tarfile's reader.
"""

from __future__ import annotations

import io
import tarfile
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.archive.tarstream import TarStream
from aggregator.base.names import MemberNames, is_shortened, member_name, unescape_member

# Characters that make names dangerous or ambiguous, mixed with arbitrary Unicode.
_TRICKY = st.sampled_from(["/", ".", "..", "%", "%2E", "%v2", "%%", "\x00", "\x1f", "\x7f", "\x85", "\\", " ", "\n"])
_CHARS = st.characters(exclude_categories=["Cs"])  # S3 keys are UTF-8: no lone surrogates
keys = st.lists(st.one_of(_TRICKY, _CHARS), min_size=1, max_size=60).map("".join).filter(
    lambda key: len(key.encode()) <= 1024
)
buckets = st.from_regex(r"[a-z0-9][a-z0-9.-]{2,20}", fullmatch=True).filter(lambda b: b not in (".", ".."))


def assert_safe(name: str) -> None:
    assert name and not name.startswith("/")
    for segment in name.split("/"):
        assert segment not in ("", ".", ".."), name
    assert not any(unicodedata.category(ch) == "Cc" for ch in name), name


@settings(max_examples=500, deadline=None)
@given(bucket=buckets, key=keys)
def test_every_key_gives_a_safe_reversible_name(bucket: str, key: str) -> None:
    name = member_name(bucket, key)
    assert_safe(name)
    if is_shortened(name):  # a segment over 245 bytes once escaped: only the manifest has the key
        assert all(len(segment.encode()) <= 245 for segment in name.split("/"))
    else:
        assert unescape_member(name) == (bucket, key)


@settings(max_examples=150, deadline=None)
@given(pairs=st.lists(st.tuples(buckets, keys), min_size=1, max_size=30))
def test_names_are_injective_and_unique_per_archive(pairs: list[tuple[str, str]]) -> None:
    plain = {member_name(bucket, key): (bucket, key) for bucket, key in set(pairs)}
    assert len(plain) == len(set(pairs)), "two different keys share a member name"
    names = MemberNames()
    assigned = [names.assign(bucket, key) for bucket, key in pairs]  # duplicates included
    assert len(set(assigned)) == len(assigned)
    for name in assigned:
        assert_safe(name)


@settings(max_examples=200, deadline=None)
@given(pairs=st.lists(st.tuples(buckets, keys), min_size=1, max_size=10))
def test_names_survive_the_tar_headers(pairs: list[tuple[str, str]]) -> None:
    names = MemberNames()
    assigned = [names.assign(bucket, key) for bucket, key in pairs]
    out = io.BytesIO()
    tar = TarStream(out)
    for i, name in enumerate(assigned):
        tar.add_bytes(name, b"%d" % i, mtime=0)
    tar.close()
    with tarfile.open(fileobj=io.BytesIO(out.getvalue()), mode="r:") as archive:
        read = archive.getmembers()
        assert [info.name for info in read] == assigned
        for i, info in enumerate(read):
            extracted = archive.extractfile(info)
            assert extracted is not None and extracted.read() == b"%d" % i
            # What the "data" filter would refuse: absolute paths, paths leaving the target.
            assert tarfile.data_filter(info, "/tmp/target") is not None
