"""Is a recorded PID still our process, and stopping it, from any later process.

The state file outlives the ``up`` command that wrote it, so ``down`` cannot hold a
``Popen``: it has only a PID. A PID can be reused after a crash, so a process is ours
only if its command line still names the program we started. A zombie (exited, not yet
reaped because its parent is gone) counts as stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def _proc(pid: int) -> Path:
    return Path("/proc") / str(pid)


def is_running(pid: int, *, program: str | None = None) -> bool:
    """True when ``pid`` is alive (not a zombie) and, if given, runs ``program``."""
    if pid <= 0:
        return False
    try:
        status = (_proc(pid) / "status").read_text()
        cmdline = (_proc(pid) / "cmdline").read_bytes()
    except OSError:
        return False
    state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "?")
    if state in ("Z", "X"):
        return False
    if program is None:
        return True
    return any(Path(arg.decode(errors="replace")).name == Path(program).name for arg in cmdline.split(b"\0")[:3])


def stop(pid: int, *, program: str | None = None, grace: float = 5.0) -> bool:
    """Stop ``pid`` and its process group: SIGTERM, then SIGKILL after ``grace`` seconds.

    Returns False when there was nothing of ours to stop. Every process here is started
    in its own session, so its PID is also its process group's id, and the group takes
    the server's own children with it.
    """
    if not is_running(pid, program=program):
        return False
    _signal_group(pid, signal.SIGTERM)
    if _wait_gone(pid, grace):
        return True
    _signal_group(pid, signal.SIGKILL)
    _wait_gone(pid, 5.0)
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Reap it when it is our own child; otherwise init (or nobody) does.
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        if not is_running(pid):
            return True
        time.sleep(0.05)
    return not is_running(pid)
