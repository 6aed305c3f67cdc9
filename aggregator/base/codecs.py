"""The one table of codecs: each codec's name, archive extension and levels.

Settings validates ``COMPRESSION`` and ``COMPRESSION_LEVEL`` against it, the archive layer
pairs each name with its stream factory (:mod:`aggregator.archive.codecs`), and the
pipeline and the operator tools find an archive's codec from its key with
:func:`codec_for_key`. Adding a codec is one row here and one factory there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final


@dataclass(frozen=True, slots=True)
class Codec:
    name: str  # the COMPRESSION value, and the manifest's "codec"
    extension: str  # of the archive's key: "{archive_id}{extension}"
    lowest_level: int
    highest_level: int
    default_level: int | None  # None: the codec takes no level

    def __post_init__(self) -> None:
        if not self.lowest_level <= self.highest_level:
            raise ValueError(f"codec {self.name}: empty level range")
        if self.default_level is not None and not self.lowest_level <= self.default_level <= self.highest_level:
            raise ValueError(f"codec {self.name}: default level outside its range")


_TABLE = (
    # zstd 3 and zlib 6 are each library's own default; zstd 19+ and gzip 9 are far too slow
    # for a function with a deadline (~1.5 MB/s and ~29 MB/s measured), but stay allowed.
    Codec("zstd", ".tar.zst", 1, 22, 3),
    Codec("gzip", ".tar.gz", 1, 9, 6),
    Codec("none", ".tar", 0, 0, None),
)

CODECS: Final[Mapping[str, Codec]] = MappingProxyType({codec.name: codec for codec in _TABLE})
DEFAULT_CODEC: Final = "zstd"


def codec(name: str) -> Codec:
    """The codec called ``name``; :class:`ValueError` naming the known ones otherwise."""
    try:
        return CODECS[name]
    except KeyError:
        raise ValueError(f"unknown codec {name!r}; known: {', '.join(CODECS)}") from None


def extension(name: str) -> str:
    """The archive key's extension for codec ``name`` (``.tar.zst``, ``.tar.gz``, ``.tar``)."""
    return codec(name).extension


def codec_for_key(key: str) -> Codec | None:
    """The codec an archive key's extension names, or ``None`` if it names none.

    The longest matching extension wins, so no extension can shadow a longer one.
    """
    matches = [c for c in _TABLE if key.endswith(c.extension)]
    return max(matches, key=lambda c: len(c.extension)) if matches else None
