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
  so nothing collides.

Every rule only replaces characters by their ``%XX`` escape, and ``unescape`` undoes every
escape, so it recovers the key exactly: that is why the mapping is injective.

Within one archive :class:`MemberNames` adds a suffix ``%v2``, ``%v3``... (never produced
by escaping) to a name already taken: a second version of the same key, a key whose name is
the folder of an earlier key (``a/b`` then ``a``: the file becomes ``a%v2``), and a folder
whose name an earlier key holds as a file (``a`` then ``a/b``: the folder becomes ``a%v2``,
and every later key below ``a/`` follows it). The manifest records each member's key.
"""

from __future__ import annotations

import hashlib
import re
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
    return escaped


def _escape_match(match: re.Match[str]) -> str:
    return "".join(f"%{b:02X}" for b in match.group().encode())


def unescape_segment(segment: str) -> str:
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
    needs_escape = _NEEDS_ESCAPE_ASCII if name.isascii() else _NEEDS_ESCAPE
    if (needs_escape.search(name) is None and "//" not in edged and "./" not in edged and " /" not in edged
            and _DEVICE_SEGMENT.search(edged) is None):
        return name
    return escaped_member_name(bucket, key)


def escaped_member_name(bucket: str, key: str) -> str:
    """:func:`member_name` segment by segment, without the shortcut."""
    return "/".join(escape_segment(segment) for segment in (bucket, *key.split("/")))


def unescape_member(name: str) -> tuple[str, str]:
    """Inverse of :func:`member_name` (without a version suffix): ``(bucket, key)``."""
    bucket, *segments = name.split("/")
    return unescape_segment(bucket), "/".join(unescape_segment(s) for s in segments)


class MemberNames:
    """Hands out unique member names within one archive, none of them both a file and a folder.

    GNU tar and bsdtar cannot extract a file ``a`` and a file ``a/b`` from one archive (one
    of them finds the other in its way), so a name that is already taken, as a file or as a
    folder, gets the first free ``%v2``, ``%v3``... suffix. A folder keeps the name it got
    for the rest of the archive, so all the keys below ``a/`` stay together.
    """

    __slots__ = ("_aliases", "_files", "_folders")

    def __init__(self) -> None:
        self._files: set[str] = set()
        self._folders: set[str] = set()
        self._aliases: dict[str, str] = {}  # a folder's plain name -> the name it got

    def assign(self, bucket: str, key: str) -> str:
        head, _, leaf = member_name(bucket, key).rpartition("/")  # a name always has a folder
        folder = self._aliases.get(head)
        if folder is None:
            folder = self._new_folder(head)
        name = f"{folder}/{leaf}"
        if name in self._files or name in self._folders:
            name = self._free(name)
        self._files.add(name)
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
            folder = wanted if wanted not in self._files else self._free(wanted)
            self._aliases[path] = folder
            self._folders.add(folder)
        return folder

    def _free(self, name: str) -> str:
        n = 2
        while f"{name}%v{n}" in self._files or f"{name}%v{n}" in self._folders:
            n += 1
        return f"{name}%v{n}"


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
