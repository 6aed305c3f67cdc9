"""Fetching in child processes, for more than one core's worth of GETs.

Each child fetches every ``processes``-th ref with its own engine and frames the results
on its own pipe; the parent waits on all pipes with ``multiprocessing.connection.wait``
and turns frames back into results. Only ``Pipe``-level primitives are used (``os.pipe``):
Lambda has no ``/dev/shm``, so ``multiprocessing.Queue``, ``Pool``, ``Lock`` and anything
else built on ``SemLock`` fail there.

Start method: a fresh interpreter (``subprocess`` with ``sys.executable``), i.e. spawn.
``fork`` is cheaper but unsafe here: the parent may have threads (the pipeline's own, any
CRT event loop), a forked child inherits their locks in whatever state they were, and the
CRT is not fork-safe. ``multiprocessing``'s spawn and
forkserver would start helper processes that outlive the fetch (the resource tracker,
the fork server) and re-import the parent's ``__main__`` (the Lambda runtime's bootstrap)
in every child. A plain subprocess imports only ``awscrt`` and this package: ~0.1-0.17 s of CPU
per child (a third of it loading the CRT), paid once per fetch.

Children get only the environment an interpreter needs to start (:data:`CHILD_ENVIRONMENT`):
no AWS credentials, no ``AWS_*`` at all. Their work, the signing keys included, arrives
over the control pipe, so a child that misbehaved, or a dependency that dumps its
environment, has nothing more to leak.

Children die with the fetch: closing the control pipe (or the parent dying, which closes
it too) cancels a child; one that does not exit in time is terminated, then killed, and
every child is reaped before the context exits.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from multiprocessing.connection import wait
from typing import IO

from aggregator.base.errors import FetchError
from aggregator.base.events import ObjectRef
from aggregator.base.objects import Failed, Fetched, FetchResult, Missing, Streamed
from aggregator.fetch import frames
from aggregator.fetch.child import BOOTSTRAP
from aggregator.fetch.source import SourceConfig
from aggregator.fetch.stream import FetchCancelled

_POLL = 0.5  # seconds between cancel checks while waiting on pipes
_EXIT_WAIT = 2.0  # seconds a cancelled child gets to exit before it is terminated
_PIPE_SIZE = 1 << 20
# What a fetch process inherits: the loader and locale variables a Python needs to start
# (Lambda's runtime links libpython through LD_LIBRARY_PATH) and the system trust store's
# location. Nothing else: no credentials, no endpoint overrides, no proxies (resolved by the
# parent and sent with the job).
CHILD_ENVIRONMENT = ("PATH", "LD_LIBRARY_PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SSL_CERT_FILE",
                     "SSL_CERT_DIR")


def child_environment(parent: Mapping[str, str]) -> dict[str, str]:
    """The environment of a fetch process, from its parent's."""
    return {name: parent[name] for name in CHILD_ENVIRONMENT if name in parent}


@contextmanager
def fetch_in_children(refs: Sequence[ObjectRef], *, source: SourceConfig, workers: int, processes: int,
                      queue_depth: int, stream_threshold: int, cancel: threading.Event | None
                      ) -> Iterator[Iterator[FetchResult]]:
    cancel = cancel or threading.Event()
    refs = list(refs)
    children: list[_Child] = []
    try:
        for number in range(processes):
            indices = list(range(number, len(refs), processes))
            children.append(_Child.start(number, indices))
        for child in children:
            child.send_job({
                # Refs as plain tuples: pickling a slotted dataclass costs ~20x more, and
                # the child cannot start until its whole job has been pickled.
                "source": source, "refs": [_ref_fields(refs[i]) for i in child.indices], "indices": child.indices,
                "workers": workers, "queue_depth": queue_depth, "stream_threshold": stream_threshold,
            })
        yield _Demux(children, refs, cancel).results()
    finally:
        for child in children:
            child.cancel()
        deadline = time.monotonic() + _EXIT_WAIT
        for child in children:
            child.reap(deadline)


def _ref_fields(ref: ObjectRef) -> tuple[str, str, int | None, str | None, str | None, str | None]:
    return ref.bucket, ref.key, ref.size, ref.etag, ref.version_id, ref.sequencer


class _Child:
    def __init__(self, number: int, indices: list[int], process: subprocess.Popen[bytes], ctrl: int,
                 reader: frames.FrameReader, stderr: IO[bytes]) -> None:
        self.number = number
        self.stderr = stderr
        self.indices = indices
        self.process = process
        self.ctrl: int | None = ctrl
        self.reader = reader
        self.pending = set(indices)  # positions not yet reported
        self.crash = ""

    @classmethod
    def start(cls, number: int, indices: list[int]) -> _Child:
        ctrl_read, ctrl_write = os.pipe()
        out_read, out_write = os.pipe()
        for fd in (ctrl_write, out_write):
            with contextlib.suppress(OSError):  # a larger pipe means fewer wake-ups
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        # Whatever a child prints (an interpreter that cannot even start) goes to a file,
        # quoted in the errors of its objects: the function's own output stays JSON lines.
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed when the child is reaped
        try:
            # -I -S: no site module, no environment: the parent's sys.path arrives on the
            # control pipe, so the child needs neither, and its start-up is the fetch's fixed cost.
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", BOOTSTRAP, str(ctrl_read), str(out_write)],
                pass_fds=(ctrl_read, out_write), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=stderr, close_fds=True, env=child_environment(os.environ),
            )
        except BaseException:
            for fd in (ctrl_read, ctrl_write, out_read, out_write):
                os.close(fd)
            stderr.close()
            raise
        os.close(ctrl_read)
        os.close(out_write)
        return cls(number, indices, process, ctrl_write, frames.FrameReader(out_read), stderr)

    def send_job(self, job: dict[str, object]) -> None:
        assert self.ctrl is not None
        data = pickle.dumps(sys.path) + pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.ctrl, view):]
        except BrokenPipeError:
            pass  # it died already: its refs are reported failed when its pipe ends

    def cancel(self) -> None:
        """Close both pipes: the child cancels its fetch (end of the control pipe) and a
        write it is blocked in fails at once (no reader), so it exits without delay."""
        if self.ctrl is not None:
            os.close(self.ctrl)
            self.ctrl = None
        if self.reader.fd >= 0:
            os.close(self.reader.fd)
            self.reader.fd = -1

    def reap(self, deadline: float) -> None:
        try:
            self.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.terminate()
            try:
                self.process.wait(1.0)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        finally:
            self.cancel()
            self.stderr.close()

    def exit_reason(self) -> str:
        code = self.process.poll()
        if self.crash:
            return f"fetch process {self.number} failed: {self.crash}"
        said = ""
        with contextlib.suppress(OSError, ValueError):
            self.stderr.seek(0)
            said = self.stderr.read()[-500:].decode("utf-8", "replace").strip()
        tail = f": {said}" if said else ""
        return f"fetch process {self.number} ended (exit code {code}) before reporting this object{tail}"


class _Demux:
    """Turns the frames of every child back into results, in arrival order."""

    def __init__(self, children: list[_Child], refs: list[ObjectRef], cancel: threading.Event) -> None:
        self._children = children
        self._refs = refs
        self._cancel = cancel

    def results(self) -> Iterator[FetchResult]:
        live = {child.reader.fd: child for child in self._children}
        stream: _ChildStream | None = None
        while live:
            if stream is not None:
                stream.drain()  # the writer must finish a stream before the next item
                stream = None
            if self._cancel.is_set():
                for each in self._children:
                    each.cancel()  # stop them now, not only when the context exits
                raise FetchCancelled("fetch cancelled")
            child = next((c for c in live.values() if c.reader.eof or c.reader.has_frame()), None)
            if child is None:
                for fd in wait(list(live), timeout=_POLL):
                    live[int(fd)].reader.fill()  # type: ignore[arg-type]
                continue
            frame = child.reader.next()
            if frame is None:  # end of the pipe without DONE: the child died
                del live[child.reader.fd]
                try:
                    child.process.wait(_EXIT_WAIT)
                except subprocess.TimeoutExpired:  # it closed its pipe but lives on: not ours any more
                    child.process.kill()
                    child.process.wait()
                reason = child.exit_reason()
                for index in sorted(child.pending):
                    yield Failed(self._refs[index], FetchError(reason))
                child.pending.clear()
                continue
            live[child.reader.fd] = live.pop(child.reader.fd)  # round robin between the children
            kind, meta, body = frame
            if kind == frames.DONE:
                del live[child.reader.fd]
                for index in sorted(child.pending):  # never expected: a ref the child skipped
                    yield Failed(self._refs[index], FetchError(f"fetch process {child.number} skipped this object"))
                child.pending.clear()
                continue
            if kind == frames.CRASH:
                child.crash = str(meta)
                continue
            index = meta if kind == frames.MISSING else meta[0]
            child.pending.discard(index)
            ref = self._refs[index]
            if kind == frames.FETCHED:
                yield Fetched(ref, frames.head_from_meta(meta), body)
            elif kind == frames.MISSING:
                yield Missing(ref)
            elif kind == frames.FAILED:
                yield Failed(ref, FetchError(meta[1]))
            elif kind == frames.STREAM:
                stream = _ChildStream(child, self._cancel)
                yield Streamed(ref, frames.head_from_meta(meta), stream)
            else:
                raise FetchError(f"fetch process {child.number} sent an unexpected frame {kind}")


class _ChildStream(Iterator[bytes]):
    """``Streamed.chunks`` of an object a child is streaming: its pipe's next frames."""

    def __init__(self, child: _Child, cancel: threading.Event) -> None:
        self._child = child
        self._cancel = cancel
        self.finished = False

    def __iter__(self) -> _ChildStream:
        return self

    def __next__(self) -> bytes:
        if self.finished:
            raise StopIteration
        reader = self._child.reader
        while True:
            frame = reader.next()
            if frame is not None:
                break
            if reader.eof:
                self.finished = True
                raise FetchError(f"fetch process {self._child.number} ended in the middle of a stream")
            if self._cancel.is_set():
                self.finished = True
                raise FetchCancelled("fetch cancelled")
            if wait([reader.fd], timeout=_POLL):
                reader.fill()
        kind, meta, body = frame
        if kind == frames.CHUNK:
            return body
        self.finished = True
        if kind == frames.STREAM_END:
            raise StopIteration
        if kind == frames.STREAM_ERROR:
            raise FetchError(str(meta))
        raise FetchError(f"fetch process {self._child.number} sent frame {kind} inside a stream")

    def drain(self) -> None:
        """Skip what the writer left unread, up to the end of this stream."""
        with contextlib.suppress(FetchError):
            for _ in self:
                pass
