"""Multi-process fetching where Lambda's limits hold: no /dev/shm, so no SemLock.

On Lambda, creating a ``multiprocessing`` semaphore fails with ``OSError(38, "Function not
implemented")``: ``Queue``, ``Pool``, ``Lock``, ``Event`` and ``Value`` all need one. Here
that failure is simulated in the parent (monkeypatch) and in every child (the children
are started through a wrapper interpreter that disables SemLock, then runs the child's
real bootstrap), and a two-process fetch still runs end to end.
"""

from __future__ import annotations

import _multiprocessing
import multiprocessing
import multiprocessing.synchronize
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from aggregator.base.events import ObjectRef
from aggregator.base.objects import Failed, Fetched, Streamed
from aggregator.fetch import SourceConfig, fetch_objects
from tests.support.servers import MotoServer

pytestmark = [pytest.mark.servers, pytest.mark.timeout(180)]

# Stands in for sys.executable: started as ``wrapper -I -S -c BOOTSTRAP CTRL OUT`` like the
# real interpreter, it makes SemLock fail, leaves a marker, then runs the bootstrap.
WRAPPER = """#!{python} -IS
import os, sys, _multiprocessing

class _NoSemLock:
    def __init__(self, *args, **kwargs):
        raise OSError(38, "Function not implemented")

_multiprocessing.SemLock = _NoSemLock
with open(os.path.join({marker_dir!r}, f"child-{{os.getpid()}}"), "w") as f:
    f.write("SemLock disabled")
flags = [a for a in sys.argv[1:] if a in ("-I", "-S")]
assert flags == ["-I", "-S"] and sys.argv[3] == "-c", sys.argv
code = sys.argv[4]
sys.argv = ["-c"] + sys.argv[5:]
exec(compile(code, "<bootstrap>", "exec"), {{"__name__": "__main__"}})
"""


class _NoSemLock:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise OSError(38, "Function not implemented")


@pytest.fixture
def no_semlock(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """SemLock creation fails here and in every child interpreter; returns the marker dir."""
    monkeypatch.setattr(_multiprocessing, "SemLock", _NoSemLock)
    monkeypatch.setattr(multiprocessing.synchronize, "SemLock", _NoSemLock, raising=False)
    markers = tmp_path / "markers"
    markers.mkdir()
    wrapper = tmp_path / "python-without-semlock"
    wrapper.write_text(WRAPPER.format(python=sys.executable, marker_dir=str(markers)))
    wrapper.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(wrapper))
    with pytest.raises(OSError, match="not implemented"):
        multiprocessing.Lock()  # the simulation works: what Lambda would say
    return markers


def test_two_processes_fetch_without_semlock(moto_server: MotoServer, no_semlock: Path) -> None:
    client = boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name="eu-west-2",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = f"nosem-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    bodies, refs = {}, []
    for i in range(120):
        key = f"k/{i:03d} + ü"
        body = os.urandom(100 + i * 97)
        etag = client.put_object(Bucket=bucket, Key=key, Body=body)["ETag"].strip('"')
        bodies[key] = body
        refs.append(ObjectRef(bucket, key, len(body), etag, None, "01"))
    big = os.urandom(3 << 20)
    etag = client.put_object(Bucket=bucket, Key="big", Body=big)["ETag"].strip('"')
    bodies["big"] = big
    refs.append(ObjectRef(bucket, "big", len(big), etag, None, "01"))
    source = SourceConfig(moto_server.endpoint_url, "eu-west-2", "testing", "testing", None)

    got = {}
    with fetch_objects(refs, source=source, workers=8, processes=2, queue_depth=8, stream_threshold=1 << 20) as results:
        for result in results:
            if isinstance(result, Streamed):
                got[result.ref.key] = b"".join(result.chunks)
            else:
                assert isinstance(result, Fetched)
                got[result.ref.key] = result.body
    assert got == bodies
    assert len(list(no_semlock.iterdir())) == 2  # both children ran with SemLock disabled
    assert multiprocessing.active_children() == []


PARENT_SCRIPT = """
import os, sys, time
from aggregator.base.events import ObjectRef
from aggregator.fetch import SourceConfig, fetch_objects

endpoint, bucket, etag = sys.argv[1:4]
refs = [ObjectRef(bucket, "k", 1, etag, None, None)] * 400
source = SourceConfig(endpoint, "eu-west-2", "testing", "testing", None)
with fetch_objects(refs, source=source, workers=2, processes=2, queue_depth=1) as results:
    next(results)
    me = str(os.getpid())
    kids = [p for p in os.listdir("/proc") if p.isdigit()
            and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1] == me]
    print(" ".join(kids), flush=True)
    time.sleep(600)  # never consumes again: the children block on their pipes
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_children_exit_when_the_parent_is_killed(moto_server: MotoServer, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    client = boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name="eu-west-2",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = f"orphan-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    etag = client.put_object(Bucket=bucket, Key="k", Body=b"x")["ETag"].strip('"')
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT)
    root = str(Path(__file__).resolve().parents[2])
    parent = subprocess.Popen([sys.executable, str(script), moto_server.endpoint_url, bucket, etag],
                              stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": root})
    try:
        assert parent.stdout is not None
        kids = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(kids) == 2 and all(_alive(pid) for pid in kids)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in kids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in kids), "fetch children outlived their parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_a_child_that_cannot_start_fails_its_objects_with_its_words(moto_server: MotoServer, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An interpreter that dies before it reports anything: every object it had is Failed,
    quoting what it wrote to stderr (which never reaches the function's own output)."""
    broken = tmp_path / "broken-python"
    broken.write_text("#!/bin/sh\necho 'cannot start: simulated' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(broken))
    refs = [ObjectRef("b", f"k{i}", 1, "e", None, None) for i in range(4)]
    source = SourceConfig(moto_server.endpoint_url, "eu-west-2", "testing", "testing", None)
    with fetch_objects(refs, source=source, workers=2, processes=2, queue_depth=2) as results:
        got = list(results)
    assert len(got) == 4
    assert all(isinstance(r, Failed) and "cannot start: simulated" in str(r.error) for r in got)


def test_children_start_while_the_parent_has_busy_threads(moto_server: MotoServer) -> None:
    """A forked child would inherit these locks held; spawned children never see them."""
    import logging
    import threading

    client = boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name="eu-west-2",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = f"threads-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    refs = []
    for i in range(20):
        etag = client.put_object(Bucket=bucket, Key=f"k{i}", Body=b"v%d" % i)["ETag"].strip('"')
        refs.append(ObjectRef(bucket, f"k{i}", None, etag, None, None))
    stop = threading.Event()
    held = threading.Lock()

    def hog() -> None:
        handler = logging.getLogger().handlers[0] if logging.getLogger().handlers else logging.Handler()
        while not stop.is_set():
            with held, handler.lock or threading.Lock():  # locks held most of the time
                stop.wait(0.001)

    hogs = [threading.Thread(target=hog) for _ in range(3)]
    for thread in hogs:
        thread.start()
    try:
        source = SourceConfig(moto_server.endpoint_url, "eu-west-2", "testing", "testing", None)
        with fetch_objects(refs, source=source, workers=4, processes=2, queue_depth=4) as results:
            got = {r.ref.key: r.body for r in results if isinstance(r, Fetched)}
    finally:
        stop.set()
        for thread in hogs:
            thread.join()
    assert got == {f"k{i}": b"v%d" % i for i in range(20)}


def test_cancel_stops_the_children_before_the_context_exits(moto_server: MotoServer) -> None:
    import threading
    import time

    from aggregator.fetch import FetchCancelled

    client = boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name="eu-west-2",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = f"cancel-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    etag = client.put_object(Bucket=bucket, Key="k", Body=b"x")["ETag"].strip('"')
    refs = [ObjectRef(bucket, "k", 1, etag, None, None)] * 2000
    source = SourceConfig(moto_server.endpoint_url, "eu-west-2", "testing", "testing", None)
    cancel = threading.Event()
    me = str(os.getpid())

    def live_children() -> list[int]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me and fields[0] != "Z" and "aggregator.fetch.child" in Path(
                    f"/proc/{pid}/cmdline").read_text():
                found.append(int(pid))
        return found

    with fetch_objects(refs, source=source, workers=2, processes=2, queue_depth=2, cancel=cancel) as results:
        next(results)
        kids = live_children()
        assert len(kids) == 2
        cancel.set()
        with pytest.raises(FetchCancelled):
            for _ in results:
                pass
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in kids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in kids)
