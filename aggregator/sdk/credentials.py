"""Credentials for the lean clients, through botocore's public interfaces only.

A botocore ``Credentials`` object (``session.get_credentials()``; static, or a
``RefreshableCredentials`` from an assumed role, the container or SSO) hands out
consistent snapshots with ``get_frozen_credentials()``, refreshing them itself before
they expire (botocore: 15 minutes ahead if it can, 10 minutes ahead at the latest). The
lean clients re-read that snapshot for their signing, so a batch that outlives a session
token signs its later requests with the new one.

Re-reading costs ~11 us for a refreshable object (it checks the clock against the expiry
each time), 4% of a small GET's client CPU, so :class:`CredentialReader` re-reads at most
every ``recheck`` seconds (1 s by default): far inside botocore's 10 minutes of margin.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class CredentialSource(Protocol):
    """botocore's ``Credentials`` (static or refreshable), or :class:`FrozenCredentials`."""

    def get_frozen_credentials(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class FrozenCredentials:
    """Fixed credentials as plain values (they pickle into fetch processes)."""

    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)

    def get_frozen_credentials(self) -> FrozenCredentials:
        return self

    @classmethod
    def of(cls, source: CredentialSource) -> FrozenCredentials:
        """A snapshot of ``source`` now (refreshed first by botocore if it is due)."""
        frozen = source.get_frozen_credentials()
        return cls(frozen.access_key, frozen.secret_key, frozen.token or None)


class CredentialReader:
    """The current snapshot of a credential source and a version number that grows each
    time the snapshot changes (so signing configs built from an older one are dropped)."""

    __slots__ = ("_checked", "_clock", "_lock", "_recheck", "_source", "current", "version")

    def __init__(self, source: CredentialSource, *, recheck: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._source = source
        self._recheck = recheck
        self._clock = clock
        self._lock = threading.Lock()
        self.current = FrozenCredentials.of(source)
        self.version = 0
        self._checked = clock()

    def check(self) -> int:
        """Re-read the source if ``recheck`` seconds have passed; the version now."""
        now = self._clock()
        if now - self._checked < self._recheck:
            return self.version
        with self._lock:
            if now - self._checked >= self._recheck:
                fresh = FrozenCredentials.of(self._source)
                if fresh != self.current:
                    self.current, self.version = fresh, self.version + 1
                self._checked = now
        return self.version
