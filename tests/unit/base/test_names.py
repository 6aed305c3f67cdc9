"""Claim ids, tar member names and archive keys (docs/contract.md §5 and §7)."""

from __future__ import annotations

import hashlib
import ntpath
import os
import posixpath
import re
import tarfile
import time
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import PurePosixPath

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from aggregator.base.events import ObjectRef
from aggregator.base.names import (
    MemberNames,
    archive_key,
    escape_segment,
    escaped_member_name,
    is_shortened,
    member_name,
    new_archive_id,
    object_id,
    unescape_member,
    unescape_segment,
)


def ref(key: str = "k", *, bucket: str = "src", version_id: str | None = "v1", etag: str | None = "e1",
        sequencer: str | None = "0055AED6DCD90281E5") -> ObjectRef:
    return ObjectRef(bucket=bucket, key=key, size=1, etag=etag, version_id=version_id, sequencer=sequencer)


# --- object_id --------------------------------------------------------------------------

OBJECT_ID = re.compile(r"(?P<shard>[0-9a-f]{4})#(?P<rest>(?P<bucket>[^/]+)/(?P<key>.*)#(?P<identity>[ve]:.*))", re.S)


def test_object_id_is_stable_across_runs() -> None:
    """Written once, looked up by later invocations for 15 days: a fixed value, not hash()."""
    versioned = ref("incoming/2024/05/06/reading-0001.json", bucket="example-ingest-bucket",
                    version_id="096fKKXTRTtl3on89fVO.nfljtsv6qko")
    unversioned = ref("photos/résumé 日本.jpg", bucket="example-ingest-bucket", version_id=None,
                      etag="d41d8cd98f00b204e9800998ecf8427e")
    assert object_id(versioned) == (
        "4502#example-ingest-bucket/incoming/2024/05/06/reading-0001.json#v:096fKKXTRTtl3on89fVO.nfljtsv6qko"
    )
    assert object_id(unversioned) == (
        "ae04#example-ingest-bucket/photos/résumé 日本.jpg#e:d41d8cd98f00b204e9800998ecf8427e@0055AED6DCD90281E5"
    )


@pytest.mark.parametrize(
    "r",
    [ref(), ref("a/b c/d#e.txt"), ref("日本/📷", version_id=None), ref("/..//x", bucket="b.with.dots"),
     ref("k", version_id=None, sequencer=None), ref("k" * 1024)],
)
def test_object_id_format(r: ObjectRef) -> None:
    oid = object_id(r)
    match = OBJECT_ID.fullmatch(oid)
    assert match, oid
    assert match["bucket"] == r.bucket
    assert match["rest"] == f"{r.bucket}/{r.key}#{r.identity}"
    assert oid.endswith(f"#{r.identity}")  # the rest ends with the version identity
    assert match["shard"] == hashlib.sha256(match["rest"].encode("utf-8")).hexdigest()[:4]


def test_object_id_distinguishes_versions_and_keys() -> None:
    ids = {
        object_id(ref()),
        object_id(ref(version_id="v2")),
        object_id(ref("K")),
        object_id(ref(bucket="src2")),
        object_id(ref(version_id=None)),
        object_id(ref(version_id=None, sequencer="0055AED6DCD90281F0")),
        object_id(ref(version_id=None, etag="e2")),
    }
    assert len(ids) == 7


def test_object_id_ignores_what_is_not_identity() -> None:
    """A redelivered event is the same object whatever its size field says."""
    a = ObjectRef(bucket="b", key="k", size=1, etag="e", version_id="v", sequencer="01")
    b = ObjectRef(bucket="b", key="k", size=None, etag="other", version_id="v", sequencer="02")
    assert object_id(a) == object_id(b)


def test_shards_spread() -> None:
    shards = {object_id(ref(f"hot/prefix/{i:05d}"))[:4] for i in range(2000)}
    assert len(shards) > 1900  # 65,536 possible: collisions are rare


# --- member names: fixed cases ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "member"),
    [
        ("a/b.txt", "src/a/b.txt"),
        ("résumé 日本.txt", "src/résumé 日本.txt"),
        ("../../etc/passwd", "src/%2E%2E/%2E%2E/etc/passwd"),
        ("/etc/passwd", "src/%/etc/passwd"),
        ("a//b", "src/a/%/b"),
        ("./x", "src/%2E/x"),
        ("x/.", "src/x/%2E"),
        ("dir/", "src/dir/%"),
        ("/", "src/%/%"),
        ("...", "src/..%2E"),
        (".hidden/..x", "src/.hidden/..x"),
        ("50%", "src/50%25"),
        ("%2E%2E", "src/%252E%252E"),
        ("%", "src/%25"),
        ("line\nbreak\ttab\x00nul\x7fdel", "src/line%0Abreak%09tab%00nul%7Fdel"),
        ("c1\x85\x9f", "src/c1%C2%85%C2%9F"),
        ("a+b c", "src/a+b c"),
        ("back\\slash", "src/back%5Cslash"),
        ("..\\..\\evil.txt", "src/..%5C..%5Cevil.txt"),
        ("C:\\Windows\\x", "src/C%3A%5CWindows%5Cx"),
        ("C:", "src/C%3A"),
        ("a:stream", "src/a%3Astream"),
        ('<>"|?*', "src/%3C%3E%22%7C%3F%2A"),
        ("CON", "src/%43ON"),
        ("dir/nul.txt", "src/dir/%6Eul.txt"),
        ("Lpt9.tar.gz/x", "src/%4Cpt9.tar.gz/x"),
        ("com1 .log", "src/%63om1 .log"),
        ("CONOUT$", "src/%43ONOUT$"),
        ("COM\u00b9", "src/%43OM\u00b9"),
        ("CONSOLE", "src/CONSOLE"),
        ("COM10", "src/COM10"),
        ("nul_x", "src/nul_x"),
        ("trailing.", "src/trailing%2E"),
        ("trailing ", "src/trailing%20"),
        ("dir. /x", "src/dir.%20/x"),
        (". ", "src/.%20"),
        ("evil\u202egnp.exe", "src/evil%E2%80%AEgnp.exe"),
        ("zero\u200bwidth\ufeff", "src/zero%E2%80%8Bwidth%EF%BB%BF"),
        ("soft\u00adhyphen", "src/soft%C2%ADhyphen"),
        ("line\u2028sep", "src/line%E2%80%A8sep"),
    ],
)
def test_member_name_examples(key: str, member: str) -> None:
    assert member_name("src", key) == member
    assert unescape_member(member) == ("src", key)


# --- member names: segments longer than a file name --------------------------------------------


def test_a_long_segment_is_shortened_to_a_prefix_a_hash_and_its_extension() -> None:
    segment = "x" * 300 + ".json"
    name = member_name("src", f"logs/{segment}")
    digest = hashlib.sha256(segment.encode()).hexdigest()
    bucket, folder, leaf = name.split("/")
    assert (bucket, folder) == ("src", "logs")
    assert leaf == "x" * (245 - 2 - 64 - 5) + "%h" + digest + ".json"
    assert len(leaf.encode()) == 245 and is_shortened(leaf) and not is_shortened("logs")
    assert escaped_member_name("src", f"logs/{segment}") == name
    with pytest.raises(ValueError, match="shortened"):
        unescape_member(name)


@pytest.mark.parametrize("size", [244, 245])
def test_a_segment_up_to_245_bytes_is_kept_whole(size: int) -> None:
    assert member_name("src", "k" * size) == f"src/{'k' * size}"
    assert member_name("src", "é" * (size // 2)) == f"src/{'é' * (size // 2)}"
    assert is_shortened(member_name("src", "k" * (size + 2)))


def test_escapes_count_and_are_never_cut_in_two() -> None:
    """82 control characters are 246 bytes escaped: shortened, and the prefix ends on a whole escape."""
    leaf = member_name("src", "\x01" * 82).split("/")[1]
    prefix = leaf.partition("%h")[0]
    assert re.fullmatch("(%01)+", prefix), prefix
    assert member_name("src", "\x01" * 81) == "src/" + "%01" * 81
    for shift in range(1, 4):  # whatever the cut position, no escape is split
        prefix = member_name("src", "a" * shift + "%" * 100).split("/")[1].partition("%h")[0]
        assert re.fullmatch("a+(%25)+", prefix), prefix


def test_multibyte_characters_are_never_cut_in_two() -> None:
    for key in ("é" * 200, "日" * 100, "📷" * 100, "a" + "📷" * 100, "ab" + "日" * 100):
        leaf = member_name("src", key).split("/")[1]
        leaf.encode("utf-8")
        assert is_shortened(leaf) and len(leaf.encode()) <= 245


@pytest.mark.parametrize("segment", ["CON" + "x" * 300, "con." + "x" * 300, "nul " + "y" * 300, "x" * 300 + ".",
                                     "x" * 300 + " ", "." * 300, " " * 300, "a" * 300 + ". ", "a" * 300 + "." + "%" * 5,
                                     "a" * 300 + ".very-long-extension-here", "\u202e" * 100 + ".exe"])
def test_shortened_segments_stay_safe(segment: str) -> None:
    name = member_name("src", segment)
    assert_safe(name)
    assert is_shortened(name)


def test_shortened_segments_of_different_keys_differ() -> None:
    """Same prefix, different tails: the hash of the whole segment tells them apart."""
    a, b = "p" * 400 + "1", "p" * 400 + "2"
    assert member_name("src", a) != member_name("src", b)
    assert member_name("src", a).partition("%h")[0] == member_name("src", b).partition("%h")[0]
    # A key spelled like a shortened name is escaped, so it cannot take that name.
    shortened = member_name("src", a).split("/")[1]
    assert member_name("src", shortened) != member_name("src", a)


def test_many_versions_of_a_shortened_key_stay_within_a_file_name() -> None:
    names = MemberNames()
    assigned = [names.assign("src", "d" * 300 + "/" + "f" * 300) for _ in range(12)]
    assert len(set(assigned)) == 12
    for name in assigned:
        assert all(len(segment.encode()) <= 255 for segment in name.split("/")), name


def test_segment_escaping_is_exact() -> None:
    assert escape_segment("") == "%"
    assert escape_segment(".") == "%2E"
    assert escape_segment("..") == "%2E%2E"
    assert unescape_segment("%") == ""
    assert unescape_segment("%2E") == "."
    assert unescape_segment("%2E%2E") == ".."
    assert unescape_segment("%25") == "%"


# --- member names: properties ------------------------------------------------------------

# Keys built to hit the hard cases: separators, dots, percent signs, controls, unicode.
_PARTS = st.sampled_from(
    ["/", "/", "/", ".", "..", "%", "%2E", "%25", "%v2", "+", " ", "\x00", "\n", "\x1f", "\x7f", "\x85", "\u2028",
     "é", "日本", "📷", "\\", "#", "a", "b", "C:", ":", "CON", "nul", "com1", "Lpt\u00b9",
     ".txt", " ", ". ", "\u202e", "\u200b", "\ufeff", "\u00ad", "\U000e0041", "*", "?", "<", '"', "|"]
)
# S3 takes 1,024 bytes of key: one segment can be longer than a file name, before or after escaping.
long_keys = st.tuples(st.sampled_from(["", "a/", "/", "x" * 300 + "/"]), _PARTS, st.integers(60, 400),
                      st.sampled_from(["", ".json", ".tar.gz", "/tail", "."])).map(
    lambda t: (t[0] + t[1] * t[2] + t[3]).encode()[:1024].decode("utf-8", "ignore"))
keys = st.one_of(
    long_keys,
    st.lists(_PARTS, max_size=12).map("".join),
    st.text(st.characters(codec="utf-8"), max_size=60),
    st.lists(st.sampled_from(["", ".", "..", "x", "%", " "]), max_size=6).map("/".join),
    st.lists(st.sampled_from(["CON", "aux.txt", "x.", "y ", "C:", "..\\..", "nul .log", "\u2066"]), max_size=6)
    .map("/".join),
)
buckets = st.sampled_from(["src", "my.bucket", "a-b-c", "x" * 63, "con", "aux", "lpt1"])


_WINDOWS_FORBIDDEN = set('<>:"|?*\\')
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
    f"{device}{n}" for device in ("COM", "LPT") for n in "0123456789\u00b9\u00b2\u00b3"
}


def _invisible(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp")


def assert_posix_safe(name: str) -> None:
    """Extracts inside the target on Linux and macOS: relative, no dot or empty segment."""
    assert not posixpath.isabs(name), name
    for segment in name.split("/"):
        assert segment not in ("", ".", ".."), name
    assert posixpath.normpath(name) == name, name  # nothing to collapse, nothing climbs out
    assert "\x00" not in name
    name.encode("utf-8")  # pax headers are UTF-8


def assert_windows_safe(name: str) -> None:
    """Extracts inside the target on Windows, under the file name it was given."""
    assert ntpath.splitdrive(name)[0] == "", name
    assert not ntpath.isabs(name), name
    assert not _WINDOWS_FORBIDDEN & set(name), name  # backslash: a separator; ':' a drive or stream
    for segment in name.split("/"):
        assert segment not in ("", ".", ".."), name
        assert not segment.endswith((".", " ")), name  # Windows would strip them: another name
        assert segment.partition(".")[0].rstrip(" ").upper() not in _WINDOWS_DEVICES, name
    normalised = ntpath.normpath(name)
    assert not normalised.startswith(".."), name
    assert ntpath.join("C:\\target", name).startswith("C:\\target\\")


def assert_safe(name: str) -> None:
    assert_posix_safe(name)
    assert_windows_safe(name)
    assert not any(_invisible(c) for c in name), name  # no control, bidi or zero-width character


def assert_reversible(name: str, bucket: str, key: str) -> None:
    """Undoing the escapes gives the key back, unless a segment had to be shortened."""
    for segment in name.split("/"):
        assert len(segment.encode("utf-8")) <= 245, name  # 255 for a file name, 10 for a %vN suffix
    if any(is_shortened(segment) for segment in name.split("/")):
        with pytest.raises(ValueError, match="shortened"):
            unescape_member(name)
    else:
        assert unescape_member(name) == (bucket, key)


@hsettings(deadline=None, max_examples=500)
@given(buckets, keys)
def test_member_name_is_safe_and_reversible(bucket: str, key: str) -> None:
    name = member_name(bucket, key)
    assert_safe(name)
    assert unescape_segment(name.split("/")[0]) == bucket
    assert "%v" not in name  # reserved for MemberNames' version suffix
    assert_reversible(name, bucket, key)


@hsettings(deadline=None, max_examples=1000)
@given(buckets, keys)
def test_the_shortcut_for_names_without_escapes_agrees_with_escaping(bucket: str, key: str) -> None:
    assert member_name(bucket, key) == escaped_member_name(bucket, key)


@pytest.mark.parametrize("key", ["a/b.c/d", "a..b/.c/d.", "x/.../y", "./x", "x/.", "../x", "x/..", "/x", "x/", "x//y",
                                 "x/%/y", "x/\x7f", "x/\x85"])
def test_the_shortcut_is_not_taken_for_names_that_need_escaping_or_look_alike(key: str) -> None:
    assert member_name("src", key) == escaped_member_name("src", key)


@hsettings(deadline=None, max_examples=500)
@given(buckets, keys, buckets, keys)
def test_member_name_is_injective(bucket_a: str, key_a: str, bucket_b: str, key_b: str) -> None:
    if (bucket_a, key_a) != (bucket_b, key_b):
        assert member_name(bucket_a, key_a) != member_name(bucket_b, key_b)


@hsettings(deadline=None, max_examples=200)
@given(st.lists(keys, max_size=30))
def test_member_names_of_many_keys_are_distinct(many: list[str]) -> None:
    distinct = set(many)
    assert len({member_name("src", k) for k in distinct}) == len(distinct)


@hsettings(deadline=None, max_examples=300)
@given(buckets, keys)
def test_tarfile_extraction_filter_accepts_every_member_name(bucket: str, key: str) -> None:
    """Python's own "data" extraction filter refuses anything leaving the destination."""
    destination = "/srv/extract"
    member = tarfile.TarInfo(member_name(bucket, key))
    member.size = 0
    filtered = tarfile.data_filter(member, destination)
    target = PurePosixPath(destination, filtered.name)
    assert PurePosixPath(destination) in target.parents


# --- MemberNames ---------------------------------------------------------------------------


def test_second_version_gets_a_suffix() -> None:
    names = MemberNames()
    assert names.assign("src", "a.txt") == "src/a.txt"
    assert names.assign("src", "a.txt") == "src/a.txt%v2"
    assert names.assign("src", "a.txt") == "src/a.txt%v3"
    assert names.assign("src", "b.txt") == "src/b.txt"
    assert names.assign("other", "a.txt") == "other/a.txt"


def test_a_key_spelled_like_a_suffix_does_not_collide() -> None:
    names = MemberNames()
    assigned = [names.assign("src", "k"), names.assign("src", "k"), names.assign("src", "k%v2")]
    assert assigned == ["src/k", "src/k%v2", "src/k%25v2"]


def test_suffix_keeps_unsafe_keys_safe() -> None:
    names = MemberNames()
    for key in ("..", "..", "/", "/", "a/", "a/"):
        assert_safe(names.assign("src", key))


def test_archives_start_afresh() -> None:
    assert MemberNames().assign("src", "k") == MemberNames().assign("src", "k") == "src/k"


@hsettings(deadline=None, max_examples=300)
@given(st.lists(st.tuples(buckets, keys), max_size=40))
def test_member_names_are_unique_within_an_archive(objects: list[tuple[str, str]]) -> None:
    names = MemberNames()
    assigned = [names.assign(bucket, key) for bucket, key in objects]
    assert len(set(assigned)) == len(assigned)
    for name in assigned:
        assert_safe(name)


def test_a_file_and_a_folder_of_the_same_name_get_distinct_names() -> None:
    names = MemberNames()
    assert [names.assign("src", k) for k in ("a", "a/b", "a/c/d", "a", "a/b")] == [
        "src/a", "src/a%v2/b", "src/a%v2/c/d", "src/a%v3", "src/a%v2/b%v2"]
    names = MemberNames()
    assert [names.assign("src", k) for k in ("a/b", "a", "a/b/c", "a/b")] == [
        "src/a/b", "src/a%v2", "src/a/b%v2/c", "src/a/b%v3"]


def test_names_equal_but_for_case_get_distinct_names() -> None:
    """macOS and Windows ignore case by default: 'Report.csv' and 'report.csv' would be one file."""
    names = MemberNames()
    assert [names.assign("src", k) for k in ("data/Report.csv", "data/report.csv", "DATA/REPORT.CSV", "Data/x",
                                              "data/y", "data/X")] == [
        "src/data/Report.csv", "src/data/report.csv%v2", "src/DATA/REPORT.CSV%v3", "src/Data/x", "src/data/y",
        "src/data/X%v2"]


def test_a_file_and_a_folder_equal_but_for_case_get_distinct_names() -> None:
    names = MemberNames()
    assert [names.assign("src", k) for k in ("a", "A/b", "B/c", "b")] == ["src/a", "src/A%v2/b", "src/B/c", "src/b%v2"]


@pytest.mark.parametrize(("first", "second"), [("straße", "STRASSE"), ("caf\u00e9", "cafe\u0301"), ("ı", "i"),
                                               ("Ω", "ω"), ("ǅ", "ǆ")])
def test_names_equal_to_a_case_insensitive_file_system_get_distinct_names(first: str, second: str) -> None:
    """Unicode folding (ß and ss), normalisation (APFS: é and e + combining accent), NTFS's upper case (ı and i)."""
    names = MemberNames()
    assert names.assign("src", first) == f"src/{first}"
    assert names.assign("src", second) == f"src/{second}%v2"


def test_names_differing_beyond_case_are_kept() -> None:
    names = MemberNames()
    assert [names.assign("src", k) for k in ("a", "b", "ä", "a.txt", "A-")] == [
        "src/a", "src/b", "src/ä", "src/a.txt", "src/A-"]


def _fold(name: str) -> str:
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).upper().casefold())


@hsettings(deadline=None, max_examples=300)
@given(st.lists(st.tuples(st.sampled_from(["src", "SRC"]),
                          st.lists(st.sampled_from(["a", "A", "ß", "ss", "SS", "é", "e\u0301", "É", "x"]), min_size=1,
                                   max_size=4).map("/".join)), max_size=30))
def test_no_two_names_and_no_name_and_folder_are_equal_ignoring_case(objects: list[tuple[str, str]]) -> None:
    names = MemberNames()
    assigned = [names.assign(bucket, key) for bucket, key in objects]
    folded = [_fold(name) for name in assigned]
    assert len(set(folded)) == len(folded), assigned
    folders = {_fold(folder) for name in assigned for folder in _folders(name)}
    assert not folders & set(folded), assigned


def test_a_bucket_and_a_key_of_the_same_name_do_not_clash() -> None:
    names = MemberNames()
    assert names.assign("src", "") == "src/%"
    assert names.assign("src", "x") == "src/x"


def _folders(name: str) -> set[str]:
    segments = name.split("/")
    return {"/".join(segments[:i]) for i in range(1, len(segments))}


@hsettings(deadline=None, max_examples=300)
@given(st.lists(st.tuples(buckets, st.one_of(keys, st.lists(st.sampled_from(["a", "b", "a%v2"]), min_size=1,
                                                                          max_size=4).map("/".join))),
                max_size=40))
def test_no_member_name_is_the_folder_of_another(objects: list[tuple[str, str]]) -> None:
    """What GNU tar and bsdtar need to extract every member: no file stands where a folder must."""
    names = MemberNames()
    assigned = [names.assign(bucket, key) for bucket, key in objects]
    assert len(set(assigned)) == len(assigned)
    folders = set().union(*map(_folders, assigned)) if assigned else set()
    assert not folders & set(assigned)
    for name in assigned:
        assert_safe(name)


def test_the_invisible_character_class_matches_unicodedata() -> None:
    """The escaped character class is written out; this notices a Unicode version that adds to it."""
    from aggregator.base.names import _NEEDS_ESCAPE

    invisible = "".join(chr(c) for c in range(0x110000) if _invisible(chr(c)))
    assert all(_NEEDS_ESCAPE.fullmatch(c) for c in invisible)
    escaped = {chr(c) for c in range(0x110000) if _NEEDS_ESCAPE.fullmatch(chr(c))}
    assert escaped - set(invisible) == set('%<>:"|?*\\')


def test_the_ascii_class_is_the_full_class_on_ascii() -> None:
    from aggregator.base.names import _NEEDS_ESCAPE, _NEEDS_ESCAPE_ASCII

    for c in map(chr, range(128)):
        assert bool(_NEEDS_ESCAPE.fullmatch(c)) is bool(_NEEDS_ESCAPE_ASCII.fullmatch(c)), repr(c)


@pytest.mark.parametrize("segment", ["CON", "con", "Nul.txt", "aux.tar.gz", "COM1", "lpt9.x", "com\u00b2", "PRN  .txt",
                                     "CONIN$", "conout$.log"])
def test_windows_device_names_are_mapped(segment: str) -> None:
    name = member_name("src", segment)
    assert name != f"src/{segment}"
    assert_safe(name)
    assert unescape_member(name) == ("src", segment)


# --- archive ids and keys --------------------------------------------------------------


MOMENT = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def test_archive_key_layout() -> None:
    assert archive_key("archives", MOMENT, "ID", ".tar.zst") == "archives/2024/05/06/07/ID.tar.zst"
    assert archive_key("a/b", MOMENT, "ID", ".tar") == "a/b/2024/05/06/07/ID.tar"


def test_archive_key_with_empty_prefix() -> None:
    assert archive_key("", MOMENT, "ID", ".tar.gz") == "2024/05/06/07/ID.tar.gz"


@pytest.mark.parametrize(
    ("moment", "hour_path"),
    [
        (datetime(2024, 1, 1, 3, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))), "2023/12/31/21"),
        (datetime(2023, 12, 31, 20, 30, tzinfo=timezone(timedelta(hours=-4))), "2024/01/01/00"),
        (datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC), "2024/02/29/23"),
    ],
)
def test_archive_key_is_in_utc_whatever_the_datetime_zone(moment: datetime, hour_path: str) -> None:
    assert archive_key("p", moment, "ID", ".tar") == f"p/{hour_path}/ID.tar"


def test_naive_datetimes_are_refused() -> None:
    """A naive value would be read as the machine's local time: refused rather than guessed."""
    with pytest.raises(ValueError, match="timezone-aware"):
        archive_key("p", datetime(2024, 5, 6, 7), "ID", ".tar")
    with pytest.raises(ValueError, match="timezone-aware"):
        new_archive_id(datetime(2024, 5, 6, 7))


@pytest.fixture(params=["XST-05:30", "YST+10", "EST+05EDT,M3.2.0,M11.1.0", "UTC0"])
def local_zone(request: pytest.FixtureRequest) -> Iterator[str]:
    """The process's local time zone set through TZ, and restored afterwards."""
    previous = os.environ.get("TZ")
    os.environ["TZ"] = request.param
    time.tzset()
    try:
        yield request.param
    finally:
        if previous is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = previous
        time.tzset()


def test_archive_key_ignores_the_machine_time_zone(local_zone: str) -> None:
    if local_zone == "XST-05:30":
        assert time.timezone == -(5 * 3600 + 30 * 60)  # the zone really is in effect
    stamp = 1_714_979_289  # 2024-05-06T07:08:09Z
    as_utc = datetime.fromtimestamp(stamp, tz=UTC)
    as_local = datetime.fromtimestamp(stamp).astimezone()  # aware, in the local zone
    expected = "archives/2024/05/06/07/ID.tar.zst"
    assert archive_key("archives", as_utc, "ID", ".tar.zst") == expected
    assert archive_key("archives", as_local, "ID", ".tar.zst") == expected
    assert new_archive_id(as_local).startswith("20240506T070809Z-")


def test_local_zone_fixture_restores_tz() -> None:
    """Runs after the parametrised test above: the zone it set must be gone."""
    assert os.environ.get("TZ") not in ("XST-05:30", "YST+10", "EST+05EDT,M3.2.0,M11.1.0")


def test_new_archive_id_format() -> None:
    archive_id = new_archive_id(MOMENT)
    assert re.fullmatch(r"20240506T070809Z-[0-9a-f]{32}", archive_id)


def test_new_archive_ids_are_unique() -> None:
    assert len({new_archive_id(MOMENT) for _ in range(1000)}) == 1000


def test_new_archive_ids_sort_by_time() -> None:
    moments = [MOMENT + timedelta(seconds=s) for s in (0, 1, 59, 3600, 86400 * 40)]
    ids = [new_archive_id(m) for m in moments]
    assert ids == sorted(ids)


def test_archive_id_and_key_agree() -> None:
    """The manifest's archive_id is the one in the key."""
    archive_id = new_archive_id(MOMENT)
    key = archive_key("archives", MOMENT, archive_id, ".tar.zst")
    assert key.rsplit("/", 1)[1] == f"{archive_id}.tar.zst"
