"""What can go wrong while writing or reading an archive, placed in the base error tree.

    AggregatorError
    ├── SizeMismatch      a member's chunks gave more or fewer bytes than its header says
    ├── WriterClosed      add() or finish() on a writer that is finished or abandoned
    │   └── WriterBroken      ... or that failed part-way: its bytes must never be uploaded
    ├── ArchiveReadError  an archive read back is truncated, corrupt or has no manifest
    └── PermanentError
        └── UnarchivableKey   a key no tar member name can carry (not valid Unicode)

The writer turns a :class:`SizeMismatch` on a streamed body into a
:class:`~aggregator.base.errors.FetchError` (a truncated body is a failed GET) and leaves
a body's own ``FetchError`` as it is.
"""

from __future__ import annotations

from aggregator.base.errors import AggregatorError, PermanentError


class SizeMismatch(AggregatorError, ValueError):
    """A member's data did not match the size written in its header."""


class WriterClosed(AggregatorError, RuntimeError):
    """The archive writer takes no more members."""


class WriterBroken(WriterClosed):
    """A member was left half-written: the archive is corrupt and must be abandoned."""


class ArchiveReadError(AggregatorError, ValueError):
    """An archive could not be read back to its end (truncated, corrupt, no manifest)."""


class UnarchivableKey(PermanentError, ValueError):
    """The key cannot be written as a tar member name (e.g. a lone surrogate)."""
