"""Names derived from an object: its claim id, its tar member name, its archive's key.

Member names are safe to extract on Linux, macOS and Windows, and injective. Each
``/``-separated segment of ``{bucket}/{key}`` is escaped like this (``docs/contract.md`` §5,
"Member names"):

* ``%``, control characters (Unicode ``Cc``), format characters (``Cf``: bidi controls,
  zero-width characters, soft hyphen...), line and paragraph separators, the backslash and
  the characters Windows refuses in a name (``<>:"|?*``; ``:`` also makes ``C:`` a drive)
  become ``%XX`` per UTF-8 byte (uppercase hex), so ``%`` followed by two hex digits only
  ever stands for an escaped byte;
* a segment ending in ``.`` or a space (Windows strips those) gets that last character
  escaped, and a segment Windows reserves (``CON``, ``PRN``, ``AUX``, ``NUL``, ``COM0``-``9``,
  ``LPT0``-``9``, ``CONIN$``, ``CONOUT$``, in any case and with any extension, like
  ``nul.txt``) gets its first character escaped;
* a segment that is empty, ``.`` or ``..`` becomes ``%``, ``%2E`` or ``%2E%2E``. A lone
  ``%`` cannot come out of the first rule, and ``unescape`` reads ``%2E`` as ``.`` anyway,
  so nothing collides;
* an escaped segment longer than 245 UTF-8 bytes (a file name holds 255 on Linux, macOS and
  Windows; the rest is room for a ``%vN`` suffix) keeps its first bytes, cut between
  characters and escapes, followed by ``%h``, the SHA-256 (hex) of the whole original
  segment and the segment's extension (up to 16 plain characters, like ``.json``): 245
  bytes at most.

Every other rule only replaces characters by their ``%XX`` escape, and ``unescape`` undoes
every escape, so it recovers the key exactly: that is why the mapping is injective. A
shortened segment cannot be undone (the manifest has its key), but ``%h`` never comes out of
escaping and the hash names the whole segment, so it stays injective (short of a SHA-256
collision, and even then :class:`MemberNames` keeps names distinct within an archive).

Within one archive :class:`MemberNames` adds a suffix ``%v2``, ``%v3``... (never produced
by escaping) to a name already taken: a second version of the same key, a key whose name is
the folder of an earlier key (``a/b`` then ``a``: the file becomes ``a%v2``), and a folder
whose name an earlier key holds as a file (``a`` then ``a/b``: the folder becomes ``a%v2``,
and every later key below ``a/`` follows it). Names are compared as the case-insensitive
file systems of macOS and Windows compare them (decomposed, upper-cased, case folded), so
``Report.csv`` then ``report.csv`` gives ``report.csv%v2``. The manifest records each
member's key.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from datetime import UTC, datetime

from aggregator.base.events import ObjectRef

# Cc, Cf, Zl and Zp as of Unicode 14 (Python 3.11's unicodedata); a test checks this class
# against unicodedata, so a newer Python that adds format characters fails loudly.
_INVISIBLE = (
    "\x00-\x1f\x7f-\x9f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e"
    "\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U00013438\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0001\U000e0020-\U000e007f"
)
_NEEDS_ESCAPE = re.compile(f'[%\\\\<>:"|?*{_INVISIBLE}]')
_SPECIAL_SEGMENTS = {"": "%", ".": "%2E", "..": "%2E%2E"}
_UNSPECIAL = {escaped: plain for plain, escaped in _SPECIAL_SEGMENTS.items()}
_ESCAPED_BYTE = re.compile(rb"%([0-9A-F]{2})")
# Windows reserves these device names whatever follows a dot, and with trailing spaces.
_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{device}{n}" for device in ("COM", "LPT") for n in "0123456789\u00b9\u00b2\u00b3"]
)
# A file name holds 255 bytes on Linux and macOS, 255 UTF-16 units on Windows (never more
# than its UTF-8 bytes). A longer escaped segment is shortened to _SEGMENT_MAX bytes, leaving
# room for MemberNames' suffix ("%v" and up to eight digits).
_NAME_MAX = 255
_SEGMENT_MAX = _NAME_MAX - 10
_SHORTENED = "%h"  # escaping never writes "%" before a lowercase letter; "%v" is the suffix's
_EXTENSION_MAX = 16  # a shortened segment keeps an extension up to this long (".json", ".tar.gz": ".gz")
# The same class for ASCII names (most keys), which a small class scans three times faster.
_NEEDS_ESCAPE_ASCII = re.compile(r'[%\\<>:"|?*\x00-\x1f\x7f]')
# A Windows device name as a segment of ``/{name}/``, for the shortcut in member_name.
_DEVICE_SEGMENT = re.compile(
    r"/(?i:con(?:in\$|out\$)?|com[0-9\u00b9\u00b2\u00b3]|prn|aux|nul|lpt[0-9\u00b9\u00b2\u00b3]) *[./]"
)


def is_reserved_on_windows(segment: str) -> bool:
    """Whether Windows takes ``segment`` for a device (``CON``, ``nul.txt``, ``com1 .log``)."""
    return segment.partition(".")[0].rstrip(" ").upper() in _RESERVED


def object_id(ref: ObjectRef) -> str:
    """The claim's partition key: ``{4 hex}#{bucket}/{key}#{identity}``.

    The prefix is a stable hash of the rest, spreading hot keys over partitions.
    """
    rest = f"{ref.bucket}/{ref.key}#{ref.identity}"
    shard = hashlib.sha256(rest.encode("utf-8", "surrogatepass")).hexdigest()[:4]
    return f"{shard}#{rest}"


def escape_segment(segment: str) -> str:
    escaped = _NEEDS_ESCAPE.sub(_escape_match, segment)
    if escaped in _SPECIAL_SEGMENTS:
        return _SPECIAL_SEGMENTS[escaped]
    if escaped[-1] in ". ":
        escaped = f"{escaped[:-1]}%{ord(escaped[-1]):02X}"
    if is_reserved_on_windows(escaped):
        escaped = f"%{ord(escaped[0]):02X}{escaped[1:]}"  # every reserved name starts with ASCII
    if len(escaped) > _SEGMENT_MAX // 4 and _utf8_size(escaped) > _SEGMENT_MAX:
        return _shorten(segment, escaped)
    return escaped


def _shorten(segment: str, escaped: str) -> str:
    """``escaped``'s first bytes, ``%h``, the SHA-256 of ``segment`` and ``escaped``'s extension
    (when short and plain, so the file keeps its type): at most _SEGMENT_MAX bytes.

    Runs after the other rules: the result ends like ``escaped`` or in a hex digit (no
    trailing dot or space), and its stem (before the first dot) either is the escaped
    segment's, already not a device name, or holds ``%h``.
    """
    digest = hashlib.sha256(segment.encode("utf-8", "surrogatepass")).hexdigest()
    dot = escaped.rfind(".")
    extension = escaped[dot:] if dot > 0 else ""
    if len(extension) > _EXTENSION_MAX or "%" in extension or not extension.isascii():
        extension = ""
    budget = _SEGMENT_MAX - len(_SHORTENED) - len(digest) - len(extension)
    used = cut = 0
    for char in escaped:
        used += _utf8_size(char)
        if used > budget:
            break
        cut += 1
    prefix = escaped[:cut]
    # Every "%" in an escaped segment starts a three-character escape: never cut one in two.
    if prefix.endswith("%"):
        prefix = prefix[:-1]
    elif prefix[-2:-1] == "%":
        prefix = prefix[:-2]
    return f"{prefix}{_SHORTENED}{digest}{extension}"


def _utf8_size(text: str) -> int:
    # Lone surrogates (not a valid key, refused when the tar header is written) count as 3.
    return len(text.encode("utf-8", "surrogatepass"))


def is_shortened(segment: str) -> bool:
    """Whether a member name segment was shortened (its key is only in the manifest)."""
    return _SHORTENED in segment


def _escape_match(match: re.Match[str]) -> str:
    return "".join(f"%{b:02X}" for b in match.group().encode())


def unescape_segment(segment: str) -> str:
    """Inverse of :func:`escape_segment`; raises ValueError for a shortened segment."""
    if _SHORTENED in segment:
        raise ValueError(f"segment {segment[:40]!r}... was shortened: its key is in the manifest")
    if segment in _UNSPECIAL:
        return _UNSPECIAL[segment]
    # Escapes stand for UTF-8 bytes, so undo them on bytes, then decode once.
    raw = _ESCAPED_BYTE.sub(lambda m: bytes([int(m.group(1), 16)]), segment.encode("utf-8"))
    return raw.decode("utf-8")


def member_name(bucket: str, key: str) -> str:
    """The tar member name of ``key`` in ``bucket``: safe to extract, injective."""
    name = f"{bucket}/{key}"
    # Most names need no escape at all: a few scans of the whole name cost a fraction of
    # escaping its segments one by one (which returns them unchanged then). ``/{name}/``
    # shows an empty, ``.`` or ``..`` segment and a trailing dot or space as ``//``, ``./``
    # or `` /``.
    edged = f"/{name}/"
    ascii = name.isascii()
    needs_escape = _NEEDS_ESCAPE_ASCII if ascii else _NEEDS_ESCAPE
    if (needs_escape.search(name) is None and "//" not in edged and "./" not in edged and " /" not in edged
            and _DEVICE_SEGMENT.search(edged) is None
            and _segments_fit(name, ascii=ascii)):
        return name
    return escaped_member_name(bucket, key)


def _segments_fit(name: str, *, ascii: bool) -> bool:
    """Whether no segment of ``name`` is over _SEGMENT_MAX bytes (most names: clearly none)."""
    if len(name) <= (_SEGMENT_MAX if ascii else _SEGMENT_MAX // 4):  # four bytes a character at most
        return True
    if ascii:
        return all(len(s) <= _SEGMENT_MAX for s in name.split("/"))
    return all(len(s) <= _SEGMENT_MAX // 4 or _utf8_size(s) <= _SEGMENT_MAX for s in name.split("/"))


def escaped_member_name(bucket: str, key: str) -> str:
    """:func:`member_name` segment by segment, without the shortcut."""
    return "/".join(escape_segment(segment) for segment in (bucket, *key.split("/")))


def unescape_member(name: str) -> tuple[str, str]:
    """Inverse of :func:`member_name` (without a version suffix): ``(bucket, key)``.

    Raises ValueError when a segment was shortened (:func:`is_shortened`).
    """
    bucket, *segments = name.split("/")
    return unescape_segment(bucket), "/".join(unescape_segment(s) for s in segments)


class MemberNames:
    """Hands out unique member names within one archive, none of them both a file and a folder.

    GNU tar and bsdtar cannot extract a file ``a`` and a file ``a/b`` from one archive (one
    of them finds the other in its way), so a name that is already taken, as a file or as a
    folder, gets the first free ``%v2``, ``%v3``... suffix. A folder keeps the name it got
    for the rest of the archive, so all the keys below ``a/`` stay together.

    "Taken" is judged as macOS and Windows judge it by default (names are equal when their
    case folded, decomposed forms are): ``Report.csv`` then ``report.csv`` would be one file
    there, so the second becomes ``report.csv%v2``. Folders ``Data`` and ``data`` may share
    one folder there: harmless, since the files inside are compared the same way.
    """

    __slots__ = ("_aliases", "_files", "_folders")

    def __init__(self) -> None:
        self._files: set[str] = set()  # folded names (see _fold)
        self._folders: set[str] = set()  # folded names
        self._aliases: dict[str, str] = {}  # a folder's plain name -> the name it got

    def assign(self, bucket: str, key: str) -> str:
        head, _, leaf = member_name(bucket, key).rpartition("/")  # a name always has a folder
        folder = self._aliases.get(head)
        if folder is None:
            folder = self._new_folder(head)
        name = f"{folder}/{leaf}"
        folded = _fold(name)
        if folded in self._files or folded in self._folders:
            name = self._free(name)
            folded = _fold(name)
        self._files.add(folded)
        return name

    def _new_folder(self, plain: str) -> str:
        """The name folder ``plain`` gets, and each of its new ancestors (walked without recursion:
        a key can have a thousand segments)."""
        new: list[str] = []
        known = plain
        while known and known not in self._aliases:
            new.append(known)
            known = known.rpartition("/")[0]
        folder = self._aliases[known] if known else ""
        for path in reversed(new):
            wanted = f"{folder}/{path.rpartition('/')[2]}" if folder else path
            folder = wanted if _fold(wanted) not in self._files else self._free(wanted)
            self._aliases[path] = folder
            self._folders.add(_fold(folder))
        return folder

    def _free(self, name: str) -> str:
        n = 2
        while _fold(f"{name}%v{n}") in self._files or _fold(f"{name}%v{n}") in self._folders:
            n += 1
        return f"{name}%v{n}"


def _fold(name: str) -> str:
    """``name`` as a case-insensitive file system sees it: equal folds may be one file there.

    Decomposed (APFS also ignores normalisation), upper-cased (NTFS compares upper case: ``ı``
    and ``i`` are one name there) and case folded (``ß`` and ``ss``): never finer than
    either system, so a collision is never missed; a few names get a suffix they did not need.
    """
    if name.isascii():
        return name.lower()
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).upper().casefold())


def new_archive_id(now: datetime) -> str:
    """Sortable by time, unique by a random suffix."""
    import uuid

    return f"{_utc(now):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex}"


def archive_key(prefix: str, created_at: datetime, archive_id: str, extension: str) -> str:
    """``{prefix}/{YYYY}/{MM}/{DD}/{HH}/{archive_id}{extension}``, in UTC; ``created_at`` must be aware."""
    utc = _utc(created_at)
    path = f"{utc:%Y/%m/%d/%H}/{archive_id}{extension}"
    return f"{prefix}/{path}" if prefix else path


def _utc(moment: datetime) -> datetime:
    # astimezone() would take a naive datetime as the machine's local time: a utcnow() value
    # would then be shifted by the zone's offset. Refuse the ambiguity instead.
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a timezone-aware datetime is required (got a naive one)")
    return moment.astimezone(UTC)
