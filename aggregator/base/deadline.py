"""One invocation's clock: how long is left, whether a write may start, when the lease ends.

Made once per invocation from Lambda's deadline; everything that asks a time question
asks this object, so the three answers cannot drift apart::

    now ........ write_cutoff ........ at ..................... lease_until
                 (at - WRITE_MARGIN)   (Lambda kills us)        (at + LEASE_GRACE_SECONDS)
    any request  no key-creating       nothing of ours runs     our claims become
    may start    request starts        after this               another's to take over

Why the two margins are enough: no request that can make an archive appear (PutObject,
UploadPart, CompleteMultipartUpload, and no SDK retry of one) leaves after ``write_cutoff``,
and the process is gone at ``at``. What remains is a request the store received before
``at`` and finishes on its own after the client gave up: a gateway timeout, a reset after
the body was sent. ``LEASE_GRACE_SECONDS`` (default 30 s) is the time such a request has to
land before another invocation may conclude from the archive's absence that it never will.
MinIO finishes a PUT it has fully received within the time it takes to write the bytes to
its drives (well under a second for the archives here); 30 s covers a slow disk and a
request queued behind others, and operators of a slower store raise it (up to 300 s).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aggregator.base.errors import OutOfTime

# No key-creating request starts later than this before the deadline. It covers the time
# from the check to the request's first byte (reading a spilled spool part, signing).
WRITE_MARGIN_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Deadline:
    """The invocation's deadline ``at`` (epoch seconds) and what follows from it."""

    at: float
    grace: float
    clock: Callable[[], float] = field(default=time.time, compare=False)
    write_margin: float = WRITE_MARGIN_SECONDS

    @classmethod
    def after(cls, seconds: float, *, grace: float, clock: Callable[[], float] = time.time) -> Deadline:
        """The deadline ``seconds`` from now (Lambda's remaining time)."""
        return cls(at=clock() + seconds, grace=grace, clock=clock)

    def remaining(self) -> float:
        """Seconds until the deadline (negative once past)."""
        return self.at - self.clock()

    @property
    def write_cutoff(self) -> float:
        """The last moment a key-creating request may start."""
        return self.at - self.write_margin

    @property
    def lease_until(self) -> float:
        """When claims taken in this invocation stop being ours."""
        return self.at + self.grace

    def may_start_write(self, *, needs: float = 0.0) -> bool:
        """Whether a key-creating request expected to take ``needs`` seconds may start now."""
        return self.clock() + needs <= self.write_cutoff

    def check_write(self, what: str, *, needs: float = 0.0) -> None:
        """Raise :class:`OutOfTime` unless a key-creating request may start now."""
        if not self.may_start_write(needs=needs):
            raise OutOfTime(f"too close to the deadline to {what}")
