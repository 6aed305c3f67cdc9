"""Shared fixtures: dummy AWS credentials and real server processes on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.servers import MotoServer, SeaweedS3

# Nothing in the test run may reach real AWS: fixed dummy credentials and region for
# every client a test builds, before any test module creates one.
os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_SESSION_TOKEN="testing",
    AWS_DEFAULT_REGION="eu-west-2",
    AWS_REGION="eu-west-2",
)
for _name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@dataclass(frozen=True)
class S3Target:
    """An S3-compatible server that checks signatures: SeaweedFS here, or a real MinIO."""

    endpoint_url: str
    access_key: str
    secret_key: str
    kind: str


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedS3]:
    with SeaweedS3(access_key="minio-test-key", secret_key="minio-test-secret-0123456789") as server:
        yield server


@pytest.fixture(scope="session")
def minio_target(request: pytest.FixtureRequest) -> S3Target:
    """The MinIO stand-in, or a real MinIO when MINIO_TEST_ENDPOINT (+ _ACCESS_KEY,
    _SECRET_KEY) names one."""
    url = os.environ.get("MINIO_TEST_ENDPOINT")
    if url:
        return S3Target(url, os.environ["MINIO_TEST_ACCESS_KEY"], os.environ["MINIO_TEST_SECRET_KEY"], "minio")
    server: SeaweedS3 = request.getfixturevalue("seaweed")
    return S3Target(server.endpoint_url, server.access_key, server.secret_key, "seaweedfs")
