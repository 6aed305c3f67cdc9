"""The fetch layer against real S3 servers on loopback.

moto is the source for hostile keys and versioning (SeaweedFS normalises keys); SeaweedFS
checks SigV4 signatures, so every GET there also proves the CRT signs what S3 expects.
What checks: an independent boto3 client wrote the objects and knows their bytes.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from aggregator.base.errors import FetchError
from aggregator.base.events import ObjectRef
from aggregator.base.objects import Failed, Fetched, FetchResult, Streamed
from aggregator.fetch import FetchCancelled, SourceConfig, fetch_objects, source_config_from_client
from tests.support.servers import MotoServer, SeaweedS3
from tests.support.tls import TlsFiles, make_tls

pytestmark = [pytest.mark.servers, pytest.mark.timeout(300)]

MiB = 1 << 20
HOSTILE = [
    "with space", "plus+sign", "percent%25literal%", "unicode/ü/日本語/🙂", "double//slash", "/leading/slash",
    "dots/./and/../segments", "trailing/", "query?x=1&y#frag", "tab\there", "quote\"and'apostrophe",
    "tilde~star*", "x" * 1024, "é" * 512,
]


def s3_client(url: str, access_key: str, secret_key: str) -> Any:
    return boto3.client("s3", endpoint_url=url, region_name="eu-west-2", aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, aws_session_token=None,
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5}))


def ref(bucket: str, key: str, response: dict[str, Any], *, versioned: bool = False) -> ObjectRef:
    return ObjectRef(bucket, key, None, response["ETag"].strip('"'),
                     response.get("VersionId") if versioned else None, "0055AED6DCD90281E5")


def collect(results: Iterator[FetchResult]) -> list[tuple[ObjectRef, str, bytes]]:
    """(ref, kind, bytes) for every result; streams are read to their end."""
    out = []
    for result in results:
        if isinstance(result, Streamed):
            body = b"".join(result.chunks)
            assert len(body) == result.head.size
            out.append((result.ref, "Streamed", body))
        elif isinstance(result, Fetched):
            assert len(result.body) == result.head.size
            out.append((result.ref, "Fetched", result.body))
        else:
            out.append((result.ref, type(result).__name__, b""))
    return out


def children() -> set[int]:
    """Live child processes of this process, from /proc (not only multiprocessing's)."""
    me = str(os.getpid())
    found = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[1] == me and fields[0] != "Z":
            found.add(int(pid))
    return found


def native_threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.fixture(scope="module")
def moto_source(moto_server: MotoServer) -> dict[str, Any]:
    """A bucket of hostile keys and 200+ small objects, plus versioned and overwritten keys."""
    client = s3_client(moto_server.endpoint_url, "testing", "testing")
    bucket = f"src-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    bodies: dict[str, bytes] = {}
    refs: list[ObjectRef] = []
    keys = HOSTILE + [f"many/{i:04d} obj+{i}" for i in range(220)]
    for i, key in enumerate(keys):
        body = hashlib.sha256(key.encode()).digest() * (i % 50 + 1)
        response = client.put_object(Bucket=bucket, Key=key, Body=body)
        bodies[key] = body
        refs.append(ref(bucket, key, response))
    big = os.urandom(20 * MiB)
    refs.append(ref(bucket, "big/twenty-mib", client.put_object(Bucket=bucket, Key="big/twenty-mib", Body=big)))
    bodies["big/twenty-mib"] = big

    versioned = f"ver-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=versioned, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    client.put_bucket_versioning(Bucket=versioned, VersioningConfiguration={"Status": "Enabled"})
    old = client.put_object(Bucket=versioned, Key="over written", Body=b"old bytes")
    new = client.put_object(Bucket=versioned, Key="over written", Body=b"new bytes")
    assert old["VersionId"] != new["VersionId"]

    first = client.put_object(Bucket=bucket, Key="unversioned overwrite", Body=b"first")
    client.put_object(Bucket=bucket, Key="unversioned overwrite", Body=b"second")
    gone = client.put_object(Bucket=bucket, Key="deleted soon", Body=b"bye")
    client.delete_object(Bucket=bucket, Key="deleted soon")
    source = SourceConfig(moto_server.endpoint_url, "eu-west-2", "testing", "testing", None)
    return {
        "client": client, "bucket": bucket, "bodies": bodies, "refs": refs, "source": source,
        "old_version": ref(versioned, "over written", old, versioned=True),
        "new_version": ref(versioned, "over written", new, versioned=True),
        "bad_version": ObjectRef(versioned, "over written", None, None, "not-a-real-version-id", None),
        "overwritten": ref(bucket, "unversioned overwrite", first),
        "deleted": ref(bucket, "deleted soon", gone),
    }


@pytest.mark.parametrize("processes", [1, 2])
def test_hostile_keys_and_a_large_object_from_moto(moto_source: dict[str, Any], processes: int) -> None:
    refs, bodies = moto_source["refs"], moto_source["bodies"]
    with fetch_objects(refs, source=moto_source["source"], workers=16, processes=processes, queue_depth=32) as results:
        got = collect(results)
    assert sorted(r.key for r, _, _ in got) == sorted(r.key for r in refs)
    for fetched_ref, kind, body in got:
        assert body == bodies[fetched_ref.key], fetched_ref.key
        assert kind == ("Streamed" if fetched_ref.key == "big/twenty-mib" else "Fetched")


def test_processes_one_and_two_give_identical_bytes(moto_source: dict[str, Any]) -> None:
    refs = moto_source["refs"]
    digests = []
    for processes in (1, 2):
        with fetch_objects(refs, source=moto_source["source"], workers=8, processes=processes,
                           queue_depth=16) as results:
            digests.append({r.key: hashlib.sha256(body).hexdigest() for r, _, body in collect(results)})
    assert digests[0] == digests[1]


@pytest.mark.parametrize("processes", [1, 2])
def test_version_pinning_against_moto(moto_source: dict[str, Any], processes: int) -> None:
    wanted = [moto_source[name] for name in ("old_version", "new_version", "bad_version", "overwritten", "deleted")]
    with fetch_objects(wanted, source=moto_source["source"], workers=4, processes=processes,
                       queue_depth=4) as results:
        got = {(r.key, r.version_id, r.etag): (kind, body) for r, kind, body in collect(results)}
    old, new = moto_source["old_version"], moto_source["new_version"]
    assert got[(old.key, old.version_id, old.etag)] == ("Fetched", b"old bytes")  # by versionId
    assert got[(new.key, new.version_id, new.etag)] == ("Fetched", b"new bytes")
    bad = moto_source["bad_version"]
    assert got[(bad.key, bad.version_id, None)] == ("Missing", b"")
    over = moto_source["overwritten"]
    assert got[(over.key, None, over.etag)] == ("Missing", b"")  # If-Match on the old eTag
    deleted = moto_source["deleted"]
    assert got[(deleted.key, None, deleted.etag)] == ("Missing", b"")


def test_heads_describe_the_version_fetched(moto_source: dict[str, Any]) -> None:
    client = moto_source["client"]
    old = moto_source["old_version"]
    with fetch_objects([old], source=moto_source["source"], workers=1, processes=1, queue_depth=1) as results:
        [result] = list(results)
    assert isinstance(result, Fetched)
    head = client.head_object(Bucket=old.bucket, Key=old.key, VersionId=old.version_id)
    assert result.head.size == head["ContentLength"] == len(b"old bytes")
    assert result.head.etag == old.etag
    assert result.head.version_id == old.version_id
    assert result.head.last_modified == head["LastModified"]
    assert result.head.last_modified.utcoffset() is not None


def test_wrong_credentials_fail_without_touching_other_objects(seaweed: SeaweedS3) -> None:
    client = s3_client(seaweed.endpoint_url, seaweed.access_key, seaweed.secret_key)
    bucket = f"creds-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    response = client.put_object(Bucket=bucket, Key="k", Body=b"x")
    wrong = SourceConfig(seaweed.endpoint_url, "eu-west-2", seaweed.access_key, "not-the-secret", None)
    with fetch_objects([ref(bucket, "k", response)] * 3, source=wrong, workers=2, processes=1,
                       queue_depth=2) as results:
        got = list(results)
    assert len(got) == 3 and all(isinstance(r, Failed) and "403" in str(r.error) for r in got)


@pytest.fixture(scope="module")
def seaweed_source(seaweed: SeaweedS3) -> dict[str, Any]:
    client = s3_client(seaweed.endpoint_url, seaweed.access_key, seaweed.secret_key)
    bucket = f"sw-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    bodies, refs = {}, []
    for i in range(300):
        key = f"small/{i:04d} é+{i}"
        body = os.urandom(8192)
        bodies[key] = body
        refs.append(ref(bucket, key, client.put_object(Bucket=bucket, Key=key, Body=body)))
    big = os.urandom(20 * MiB)
    bodies["big"] = big
    refs.append(ref(bucket, "big", client.put_object(Bucket=bucket, Key="big", Body=big)))
    return {"client": client, "bucket": bucket, "bodies": bodies, "refs": refs,
            "source": source_config_from_client(client)}


@pytest.mark.parametrize("processes", [1, 2])
def test_signed_gets_against_seaweedfs(seaweed_source: dict[str, Any], processes: int) -> None:
    with fetch_objects(seaweed_source["refs"], source=seaweed_source["source"], workers=16, processes=processes,
                       queue_depth=64) as results:
        got = collect(results)
    assert len(got) == len(seaweed_source["refs"])
    for fetched_ref, kind, body in got:
        assert kind == ("Streamed" if fetched_ref.key == "big" else "Fetched")
        assert body == seaweed_source["bodies"][fetched_ref.key]


@pytest.mark.slow  # the CRT takes ~20 s here to give up on an untrusted certificate
def test_tls_with_a_private_ca(tmp_path_factory: pytest.TempPathFactory) -> None:
    tls: TlsFiles = make_tls(tmp_path_factory.mktemp("fetch-tls"))
    with SeaweedS3(access_key="tls-fetch-key", secret_key="tls-fetch-secret-0123456789",
                   tls=(tls.cert_path, tls.key_path)) as server:
        client = boto3.client("s3", endpoint_url=server.endpoint_url, region_name="eu-west-2",
                              aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key,
                              verify=str(tls.ca_path))
        client.create_bucket(Bucket="tls")
        response = client.put_object(Bucket="tls", Key="k", Body=b"over tls")
        source = source_config_from_client(client, verify=str(tls.ca_path))
        with fetch_objects([ref("tls", "k", response)], source=source, workers=1, processes=1,
                           queue_depth=1) as results:
            [result] = list(results)
        assert isinstance(result, Fetched) and result.body == b"over tls"
        untrusted = SourceConfig(server.endpoint_url, "eu-west-2", server.access_key, server.secret_key, None,
                                 connect_timeout=1.0)
        with fetch_objects([ref("tls", "k", response)], source=untrusted, workers=1, processes=1,
                           queue_depth=1) as results:
            [result] = list(results)
        assert isinstance(result, Failed)


def test_a_closed_port_fails_each_object_after_bounded_retries() -> None:
    from tests.support.servers import free_port

    source = SourceConfig(f"http://127.0.0.1:{free_port()}", "eu-west-2", "a", "b", None, connect_timeout=0.5)
    refs = [ObjectRef("b", f"k{i}", None, "e", None, None) for i in range(3)]
    with fetch_objects(refs, source=source, workers=2, processes=1, queue_depth=2) as results:
        got = list(results)
    assert len(got) == 3 and all(isinstance(r, Failed) and isinstance(r.error, FetchError) for r in got)


# --- clean exits: threads and child processes ------------------------------------------------


@pytest.mark.parametrize("processes", [1, 2])
def test_nothing_outlives_the_context(seaweed_source: dict[str, Any], processes: int) -> None:
    refs, source = seaweed_source["refs"], seaweed_source["source"]
    threads_before, native_before, children_before = set(threading.enumerate()), native_threads(), children()

    with fetch_objects(refs, source=source, workers=8, processes=processes, queue_depth=8) as results:
        collect(results)  # normal exit
    with fetch_objects(refs, source=source, workers=8, processes=processes, queue_depth=8) as results:
        for _ in zip(range(5), results, strict=False):  # leaving early
            pass
    cancel = threading.Event()
    with fetch_objects(refs, source=source, workers=8, processes=processes, queue_depth=8,
                       cancel=cancel) as results:
        next(results)
        cancel.set()
        with pytest.raises(FetchCancelled):
            collect(results)
    with pytest.raises(ZeroDivisionError), fetch_objects(refs, source=source, workers=8, processes=processes,
                                                         queue_depth=8) as results:
        next(results)
        1 / 0  # noqa: B018 - the consumer fails

    assert set(threading.enumerate()) == threads_before
    assert native_threads() == native_before  # the CRT's event loops are gone too
    assert children() == children_before
    import multiprocessing

    assert multiprocessing.active_children() == []


def test_a_killed_child_fails_only_its_own_objects(seaweed_source: dict[str, Any]) -> None:
    refs = seaweed_source["refs"][:200]
    before = children()
    with fetch_objects(refs, source=seaweed_source["source"], workers=2, processes=2, queue_depth=2) as results:
        first = next(results)
        victim = min(children() - before)
        os.kill(victim, 9)
        got = [first, *results]
    assert len(got) == 200
    failed = [r for r in got if isinstance(r, Failed)]
    fetched = [r for r in got if isinstance(r, Fetched)]
    assert failed and fetched and len(failed) + len(fetched) == 200
    assert all("fetch process" in str(r.error) for r in failed)
    assert all(r.body == seaweed_source["bodies"][r.ref.key] for r in fetched)
