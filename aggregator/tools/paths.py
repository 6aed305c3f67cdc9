"""Whether ``{bucket}/{key}`` can be a file path as it is, on POSIX or on Windows.

A key is only data: S3 takes any UTF-8 up to 1,024 bytes. As a path it can climb out
(``..``), be absolute (``/x``, ``C:x``, ``\\\\server``), name a device (``NUL``, ``COM1.txt``),
or name something the file system silently changes (``a.`` and ``a `` on Windows). The
rules here refuse all of those per segment; a refused key is extracted under another,
plain name and listed in ``RENAMED.jsonl``.

``posix``: no empty, ``.`` or ``..`` segment, no NUL or control character, at most 255
bytes per segment. ``windows`` adds: none of ``<>:"\\|?*``, no trailing dot or space, no
reserved device name (with or without an extension), at most 255 UTF-16 units.
"""

from __future__ import annotations

import os
import re
from typing import Final, Literal

Rules = Literal["posix", "windows"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_WINDOWS_FORBIDDEN = re.compile(r'[<>:"/\\|?*]')
_RESERVED: Final = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{device}{n}" for device in ("COM", "LPT") for n in [*"123456789", "¹", "²", "³"]}
)
_MAX_SEGMENT = 255
_PLAIN = re.compile(r"[^A-Za-z0-9._-]+")


def this_os() -> Rules:
    return "windows" if os.name == "nt" else "posix"


def safe_segments(bucket: str, key: str, rules: Rules) -> list[str] | None:
    """The path segments of ``{bucket}/{key}`` when every one is safe under ``rules``, else None."""
    segments = [bucket, *key.split("/")]
    return segments if all(segment_ok(s, rules) for s in segments) else None


def segment_ok(segment: str, rules: Rules) -> bool:
    if segment in ("", ".", "..") or _CONTROL.search(segment):
        return False
    try:
        encoded = segment.encode("utf-8")
    except UnicodeEncodeError:
        return False
    if len(encoded) > _MAX_SEGMENT:
        return False
    if rules == "posix":
        return "/" not in segment
    if _WINDOWS_FORBIDDEN.search(segment) or segment[-1] in ". ":
        return False
    if len(segment.encode("utf-16-le")) // 2 > _MAX_SEGMENT:
        return False
    # "NUL.txt" and "nul .tar.gz" are the device too: the stem before the first dot, trimmed.
    stem = segment.split(".", 1)[0].rstrip(" ").upper()
    return stem not in _RESERVED


def plain_name(index: int, key: str) -> str:
    """A name safe everywhere for a renamed key: its number, then its last segment's plain letters."""
    tail = key.rsplit("/", 1)[-1]
    tail = _PLAIN.sub("_", tail).strip("._ ")[:80]
    return f"{index:06d}_{tail}" if tail else f"{index:06d}"
