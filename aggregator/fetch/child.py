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
import threading
from typing import IO, Any

from aggregator.base.errors import FetchError
from aggregator.base.events import ObjectRef
from aggregator.base.objects import Failed, Fetched, Missing, Streamed
from aggregator.fetch import frames
from aggregator.fetch.local import running_engine

_BATCH_BYTES = 256 * 1024
_BATCH_PARTS = 3 * 200  # writev takes at most IOV_MAX (1,024) buffers

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
    encode = frames.encode
    pending: list[bytes] = []  # frames of small results, written together
    pending_bytes = 0
    refs = [ObjectRef(*fields) for fields in job["refs"]]
    with running_engine(refs, source=job["source"], workers=job["workers"], queue_depth=job["queue_depth"],
                        stream_threshold=job["stream_threshold"], cancel=cancel) as engine:
        for local, result in engine.indexed_results():
            index = indices[local]
            if isinstance(result, Fetched):
                parts = encode(frames.FETCHED, frames.head_meta(index, result.head), result.body)
            elif isinstance(result, Missing):
                parts = encode(frames.MISSING, index)
            elif isinstance(result, Failed):
                parts = encode(frames.FAILED, (index, str(result.error)))
            elif isinstance(result, Streamed):
                _flush(out_fd, pending)
                pending_bytes = 0
                _stream(out_fd, index, result)
                continue
            pending += parts
            pending_bytes += len(parts[2])
            # One write (and one wake-up of the parent) for whatever is ready now.
            if not engine.ready() or pending_bytes >= _BATCH_BYTES or len(pending) >= _BATCH_PARTS:
                _flush(out_fd, pending)
                pending_bytes = 0
        _flush(out_fd, pending)
    frames.write_all(out_fd, encode(frames.DONE))


def _flush(out_fd: int, pending: list[bytes]) -> None:
    if pending:
        frames.write_all(out_fd, pending)
        pending.clear()


def _stream(out_fd: int, index: int, result: Streamed) -> None:
    write, encode = frames.write_all, frames.encode
    write(out_fd, encode(frames.STREAM, frames.head_meta(index, result.head)))
    try:
        for chunk in result.chunks:
            write(out_fd, encode(frames.CHUNK, None, chunk))
    except FetchError as e:
        write(out_fd, encode(frames.STREAM_ERROR, str(e)))
    else:
        write(out_fd, encode(frames.STREAM_END))
