"""A fetch process: runs the engine over its share of the refs and frames the results.

Started by :mod:`aggregator.fetch.processes` as a fresh interpreter. It reads its job
from the control pipe, then keeps reading that pipe: end of file (the parent closed it,
or died) or any byte cancels the fetch, so a child never outlives its parent's interest.
The result pipe is written by this one thread only, so a stream's chunk frames are never
interleaved with anything else.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import resource
import threading
from typing import IO, Any

from aggregator.base.errors import FetchError
from aggregator.base.objects import Failed, Fetched, Missing, Streamed
from aggregator.fetch import frames
from aggregator.fetch.local import fetch_here

# The interpreter is started with ``python -c BOOTSTRAP CTRL_FD OUT_FD``. The parent's
# sys.path comes first on the control pipe, so the child imports this package from the
# same place the parent did (a Lambda adds its task root at run time, not in PYTHONPATH).
BOOTSTRAP = (
    "import os, pickle, sys\n"
    "ctrl = os.fdopen(int(sys.argv[1]), 'rb')\n"
    "sys.path[:] = pickle.load(ctrl)\n"
    "from aggregator.fetch.child import main\n"
    "main(ctrl, int(sys.argv[2]))\n"
)


def main(ctrl: IO[bytes], out_fd: int) -> None:
    code = 0
    try:
        job: dict[str, Any] = pickle.load(ctrl)
        cancel = threading.Event()
        watcher = threading.Thread(target=_watch, args=(ctrl, cancel), name="fetch-parent-watch", daemon=True)
        watcher.start()
        _run(job, out_fd, cancel)
    except BrokenPipeError:
        code = 1  # the parent stopped reading: nothing left to tell it
    except BaseException as e:
        code = 2
        with contextlib.suppress(OSError):
            frames.write_all(out_fd, frames.encode(frames.CRASH, f"{e.__class__.__name__}: {e}"[:2000]))
    finally:
        # Skip interpreter teardown: the parent is waiting for the exit, and the CRT's
        # event loops need not be unwound in a process that is about to disappear.
        os._exit(code)


def _watch(ctrl: IO[bytes], cancel: threading.Event) -> None:
    with contextlib.suppress(OSError):
        ctrl.read(1)
    cancel.set()


def _run(job: dict[str, Any], out_fd: int, cancel: threading.Event) -> None:
    indices: list[int] = job["indices"]
    write = frames.write_all
    encode = frames.encode
    with fetch_here(job["refs"], source=job["source"], workers=job["workers"], queue_depth=job["queue_depth"],
                    stream_threshold=job["stream_threshold"], cancel=cancel, indexed=True) as results:
        for local, result in results:
            index = indices[local]
            if isinstance(result, Fetched):
                write(out_fd, encode(frames.FETCHED, (index, result.head), result.body))
            elif isinstance(result, Missing):
                write(out_fd, encode(frames.MISSING, index))
            elif isinstance(result, Failed):
                write(out_fd, encode(frames.FAILED, (index, str(result.error))))
            elif isinstance(result, Streamed):
                write(out_fd, encode(frames.STREAM, (index, result.head)))
                try:
                    for chunk in result.chunks:
                        write(out_fd, encode(frames.CHUNK, None, chunk))
                except FetchError as e:
                    write(out_fd, encode(frames.STREAM_ERROR, str(e)))
                else:
                    write(out_fd, encode(frames.STREAM_END))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    write(out_fd, encode(frames.DONE, usage.ru_utime + usage.ru_stime))
