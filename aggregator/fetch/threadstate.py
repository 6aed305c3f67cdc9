"""Keeping a Python thread state on a CRT event-loop thread while its connections are open.

awscrt calls into Python from its native event-loop threads between ``PyGILState_Ensure``
and ``PyGILState_Release``. A native thread has no Python thread state of its own, so
CPython creates one for every callback and destroys it on the way out: allocations and a
16 KiB frame stack mapped and unmapped (the unmap interrupts the other core to flush its
TLB), three times per GET. Measured here on 2,000 GETs of 8 KiB from SeaweedFS: 18% of
the fetch's client CPU (0.34 -> 0.28 ms per object).

:class:`ThreadStateHolds` takes one more ``PyGILState_Ensure`` on a loop thread the first
time a connection's callback runs there, which keeps that thread's state alive between
callbacks, and gives it back on that same thread (as the API requires) when the last
connection using it shuts down. A callback after that only pays the old price again; a
hold whose release never comes costs one thread state (a few KiB), never correctness.

It is optional and bounded: ``FETCH_THREAD_STATE_HOLD=off`` (Settings) gives the plain
awscrt behaviour (:class:`NoHolds`), and it is used only on the CPython versions it was
checked on (:data:`CHECKED_ON`, pinned by ``tests/integration/test_crt_thread_state.py``);
on any other interpreter the hold is off whatever the setting says. Upstream, the cost
is the ``PyGILState_Ensure``/``PyGILState_Release`` pair that awscrt's native callbacks
wrap around every call into Python (awscrt's ``aws_py_gilstate_ensure``): CPython keeps no
thread state for a foreign thread between such calls.
"""

from __future__ import annotations

import ctypes
import sys
import threading

# CPython versions (major, minor) on which the hold was checked: the GIL-state API is
# public and stable, but its per-call cost (what the hold saves) is an implementation detail.
CHECKED_ON = ((3, 11),)


def supported() -> bool:
    """Whether this interpreter is one the hold was checked on."""
    return sys.implementation.name == "cpython" and sys.version_info[:2] in CHECKED_ON

# PyDLL functions run with the GIL held, which these two require here: they only count.
_ensure = ctypes.pythonapi.PyGILState_Ensure
_ensure.argtypes = ()
_ensure.restype = ctypes.c_int
_release = ctypes.pythonapi.PyGILState_Release
_release.argtypes = (ctypes.c_int,)
_release.restype = None


class ThreadStateHolds:
    """Counted holds, one per connection, on the thread state of the thread that runs its
    callbacks. Every method must be called with the GIL held, from a CRT callback."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: dict[int, list[int]] = {}  # thread id -> [connections, PyGILState_STATE]

    def take(self) -> int:
        """Hold this thread's state for one more connection; returns the thread id to give
        to :meth:`give_back`."""
        ident = threading.get_ident()
        entry = self._held.get(ident)
        if entry is None:
            self._held[ident] = [1, _ensure()]
        else:
            entry[0] += 1
        return ident

    def give_back(self, ident: int) -> None:
        """One connection that took a hold on thread ``ident`` is gone. Only that thread
        can release its state: anywhere else this does nothing (the hold stays)."""
        if ident != threading.get_ident():
            return
        entry = self._held.get(ident)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            del self._held[ident]
            _release(entry[1])

    @property
    def threads(self) -> int:
        """Threads whose state is held now."""
        return len(self._held)


class NoHolds:
    """The hold switched off: every callback pays awscrt's own thread-state price."""

    __slots__ = ()

    def take(self) -> int:
        return 0

    def give_back(self, ident: int) -> None:
        return None

    @property
    def threads(self) -> int:
        return 0
