from __future__ import annotations

import pytest

from aggregator.tools.paths import plain_name, safe_segments, segment_ok


@pytest.mark.parametrize("segment", ["a", "file.txt", "ünïcode δ", "a b", "x" * 255, "CONSOLE", "com10", "a\\b"])
def test_plain_segments_are_safe_on_posix(segment: str) -> None:
    assert segment_ok(segment, "posix")


@pytest.mark.parametrize("segment", ["", ".", "..", "a\x00b", "tab\tname", "x" * 256, "é" * 128])
def test_climbing_empty_control_and_overlong_segments_are_refused_everywhere(segment: str) -> None:
    assert not segment_ok(segment, "posix")
    assert not segment_ok(segment, "windows")


@pytest.mark.parametrize("segment", ["CON", "con", "NUL.txt", "nul .tar.gz", "COM1", "lpt9.log", "COM¹", "AUX",
                                     "trailing.", "trailing ", "a:b", "C:", "a\\b", "what?", "star*", 'q"uote',
                                     "<tag>", "pipe|"])
def test_windows_refuses_devices_trailing_dots_and_reserved_characters(segment: str) -> None:
    assert not segment_ok(segment, "windows")
    assert segment_ok(segment, "posix") or segment in ("a\\b",)


def test_safe_segments_checks_the_bucket_and_every_key_segment() -> None:
    assert safe_segments("bucket", "a/b/c.txt", "windows") == ["bucket", "a", "b", "c.txt"]
    assert safe_segments("bucket", "a/../b", "posix") is None
    assert safe_segments("bucket", "/abs", "posix") is None
    assert safe_segments("bucket", "a//b", "posix") is None
    assert safe_segments("bucket", "dir/", "posix") is None


def test_plain_names_are_numbered_and_safe_everywhere() -> None:
    for index, key in enumerate(["../../etc/passwd", "CON", "a/b/ünï code?.txt", "...", "/"]):
        name = plain_name(index, key)
        assert name.startswith(f"{index:06d}")
        assert segment_ok(name, "windows") and segment_ok(name, "posix")
