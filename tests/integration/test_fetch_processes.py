"""Multi-process fetching where Lambda's limits hold: no /dev/shm, so no SemLock.

On Lambda, creating a ``multiprocessing`` semaphore fails with ``OSError(38, "Function not
implemented")``: ``Queue``, ``Pool``, ``Lock``, ``Event`` and ``Value`` all need one. Here
that failure is simulated in the parent (monkeypatch) and in every child (a
``sitecustomize`` on PYTHONPATH), and a two-process fetch still runs end to end.
"""

from __future__ import annotations

import _multiprocessing
import multiprocessing
import multiprocessing.synchronize
import os
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from aggregator.base.events import ObjectRef
from aggregator.base.objects import Fetched, Streamed
from aggregator.fetch import SourceConfig, fetch_objects
from tests.support.servers import MotoServer

pytestmark = [pytest.mark.servers, pytest.mark.timeout(180)]

SITECUSTOMIZE = """
import os, _multiprocessing

class _NoSemLock:
    def __init__(self, *args, **kwargs):
        raise OSError(38, "Function not implemented")

_multiprocessing.SemLock = _NoSemLock
with open(os.path.join({marker_dir!r}, f"child-{{os.getpid()}}"), "w") as f:
    f.write("SemLock disabled")
"""


class _NoSemLock:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise OSError(38, "Function not implemented")


@pytest.fixture
def no_semlock(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """SemLock creation fails here and in every child interpreter; returns the marker dir."""
    monkeypatch.setattr(_multiprocessing, "SemLock", _NoSemLock)
    monkeypatch.setattr(multiprocessing.synchronize, "SemLock", _NoSemLock, raising=False)
    site = tmp_path / "site"
    site.mkdir()
    markers = tmp_path / "markers"
    markers.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(marker_dir=str(markers)))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
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
