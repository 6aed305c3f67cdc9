"""The lean S3 fetch honours what boto3 honours: a forward proxy (``HTTPS_PROXY`` /
``HTTP_PROXY`` / ``NO_PROXY``), ``AWS_CA_BUNDLE``, credentials that rotate mid-fetch; and
fetch processes inherit no AWS credentials.

The proxy is a real one (``pproxy`` from PyPI) in its own process on a free loopback
port; its log (one line per connection it carries) shows what went through it.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from aggregator.base.events import ObjectRef
from aggregator.base.objects import Fetched
from aggregator.fetch import fetch_objects, processes, source_config_from_client
from aggregator.sdk.credentials import FrozenCredentials
from tests.support.fault_proxy import FaultProxy, Request, s3_error
from tests.support.servers import MotoServer, SeaweedS3, free_port
from tests.support.tls import make_tls

pytestmark = [pytest.mark.servers, pytest.mark.timeout(120)]


class Pproxy:
    """``pproxy -l http://127.0.0.1:PORT -v``: logs ``http SRC -> HOST:PORT`` per connection."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Pproxy:
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "pproxy"), "-l", self.url, "-v"], stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        for _ in range(200):
            if "Serving on" in self.log_path.read_text():
                return self
            time.sleep(0.05)
        raise RuntimeError("pproxy did not start: " + self.log_path.read_text())

    def __exit__(self, *_: object) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(10)

    def carried(self, target: str) -> int:
        """Connections the proxy carried to ``target`` (host:port)."""
        return sum(1 for line in self.log_path.read_text().splitlines() if line.endswith(f"-> {target}"))


@pytest.fixture(scope="module")
def tls_seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SeaweedS3, Path]]:
    tls = make_tls(tmp_path_factory.mktemp("proxy-tls"))
    with SeaweedS3(access_key="proxy-fetch-key", secret_key="proxy-fetch-secret-0123456789",
                   tls=(tls.cert_path, tls.key_path)) as server:
        yield server, tls.ca_path


def _put(client: Any, bucket: str, count: int) -> list[ObjectRef]:
    if client.meta.region_name == "us-east-1" or "seaweed" in client.meta.endpoint_url:
        client.create_bucket(Bucket=bucket)
    else:
        client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": client.meta.region_name})
    refs = []
    for i in range(count):
        response = client.put_object(Bucket=bucket, Key=f"k{i}", Body=f"body {i}".encode())
        refs.append(ObjectRef(bucket, f"k{i}", None, response["ETag"].strip('"'), None, "01"))
    return refs


def _fetch(source: Any, refs: list[ObjectRef], **kwargs: Any) -> dict[str, bytes]:
    with fetch_objects(refs, source=source, workers=kwargs.pop("workers", 2), processes=kwargs.pop("processes", 1),
                       queue_depth=kwargs.pop("queue_depth", 4), **kwargs) as results:
        got = {}
        for result in results:
            assert isinstance(result, Fetched), result
            got[result.ref.key] = result.body
    return got


def test_https_through_a_forward_proxy_with_the_ca_bundle_from_aws_ca_bundle(
        tls_seaweed: tuple[SeaweedS3, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server, ca_path = tls_seaweed
    origin = server.endpoint_url.split("//", 1)[1]
    for name in ("https_proxy", "http_proxy", "no_proxy", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    # The private CA reaches the fetch the way it reaches boto3: AWS_CA_BUNDLE, no verify=.
    monkeypatch.setenv("AWS_CA_BUNDLE", str(ca_path))
    with Pproxy(tmp_path / "pproxy.log") as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        session = boto3.session.Session(aws_access_key_id=server.access_key,
                                        aws_secret_access_key=server.secret_key, region_name="eu-west-2")
        client = session.client("s3", endpoint_url=server.endpoint_url)
        refs = _put(client, f"px-{uuid.uuid4().hex[:8]}", 5)
        before = proxy.carried(origin)
        assert before > 0  # boto3 itself went through the proxy for the PUTs
        source = source_config_from_client(client)
        assert source.verify == str(ca_path)
        assert _fetch(source, refs) == {f"k{i}": f"body {i}".encode() for i in range(5)}
        assert proxy.carried(origin) > before, "the fetch did not go through HTTPS_PROXY"

        # NO_PROXY names the host: the fetch connects directly.
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        direct = source_config_from_client(session.client("s3", endpoint_url=server.endpoint_url))
        carried = proxy.carried(origin)
        assert _fetch(direct, refs) == {f"k{i}": f"body {i}".encode() for i in range(5)}
        assert proxy.carried(origin) == carried


def test_plain_http_through_a_forward_proxy_in_fetch_processes(moto_server: MotoServer, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("https_proxy", "http_proxy", "no_proxy", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    origin = moto_server.endpoint_url.split("//", 1)[1]
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                    region_name="eu-west-2")
    client = session.client("s3", endpoint_url=moto_server.endpoint_url)
    refs = _put(client, f"pxh-{uuid.uuid4().hex[:8]}", 6)
    with Pproxy(tmp_path / "pproxy.log") as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        source = source_config_from_client(session.client("s3", endpoint_url=moto_server.endpoint_url))
        assert _fetch(source, refs, processes=2) == {f"k{i}": f"body {i}".encode() for i in range(6)}
        assert proxy.carried(origin) >= 2  # at least one connection per fetch process


class RotatingCredentials:
    def __init__(self) -> None:
        self.generation = 0

    def get_frozen_credentials(self) -> FrozenCredentials:
        return FrozenCredentials(f"AKIDGEN{self.generation}", "secret", f"token{self.generation}")


def test_credentials_rotated_mid_fetch_sign_the_later_requests(moto_server: MotoServer) -> None:
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                    region_name="eu-west-2")
    client = session.client("s3", endpoint_url=moto_server.endpoint_url)
    refs = _put(client, f"rot-{uuid.uuid4().hex[:8]}", 8)
    keys: list[str] = []

    def record(request: Request) -> bool:
        if request.is_object_get:
            keys.append((request.header("Authorization") or "").split("Credential=")[1].split("/")[0])
        return False  # never a fault: only look

    with FaultProxy(moto_server.endpoint_url) as proxy:
        proxy.add(record, s3_error(500, "InternalError"))
        credentials = RotatingCredentials()
        source = dataclasses.replace(source_config_from_client(client), endpoint_url=proxy.url,
                                     credentials=credentials, credentials_recheck=0.0, resolver=None)
        got = {}
        with fetch_objects(refs, source=source, workers=1, processes=1, queue_depth=1) as results:
            for result in results:
                assert isinstance(result, Fetched)
                got[result.ref.key] = result.body
                credentials.generation = 1  # the session token was renewed while the batch runs
    assert len(got) == 8
    assert keys[0] == "AKIDGEN0" and keys[-1] == "AKIDGEN1", keys


def test_fetch_processes_inherit_no_aws_credentials(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-inherit-this")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "nor-this")
    session = boto3.session.Session(region_name="eu-west-2")
    client = session.client("s3", endpoint_url=moto_server.endpoint_url)
    refs = _put(client, f"env-{uuid.uuid4().hex[:8]}", 4)
    environments: list[dict[str, str]] = []
    real_popen = subprocess.Popen

    def spying_popen(*args: Any, **kwargs: Any) -> Any:
        environments.append(kwargs.get("env"))
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(processes.subprocess, "Popen", spying_popen)
    assert len(_fetch(source_config_from_client(client), refs, processes=2)) == 4  # they still work
    assert len(environments) == 2
    for env in environments:
        assert env is not None, "a fetch process inherited the whole environment"
        assert not [name for name in env if name.startswith("AWS_")]
        assert "do-not-inherit-this" not in env.values()
