"""Every session of aggregator.clients shares one botocore data loader: service models and
endpoints.json parsed once per process, so the MinIO client built in the first invocation
does not parse S3's model again. No sockets: clients are only built."""

from __future__ import annotations

from typing import Any

import pytest

from aggregator import clients
from aggregator.delivery.secret import MinioSecret


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")


def loader_of(client: Any) -> Any:
    return client._loader


def test_aws_and_minio_clients_share_one_loader_and_parse_s3s_model_once(monkeypatch: pytest.MonkeyPatch) -> None:
    session = clients.aws_session(region="eu-west-2")
    source = clients.source_s3_client(session, max_pool=4)
    loader = loader_of(source)
    parsed: list[str] = []  # the files the loader reads from disk (its caches sit above)
    read = loader.file_loader.load_file

    def counting(path: str) -> Any:
        parsed.append(path)
        return read(path)

    monkeypatch.setattr(loader.file_loader, "load_file", counting)
    minio = clients.minio_client(MinioSecret(endpoint_url="http://127.0.0.1:9", access_key="abcd",
                                             secret_key="efgh", bucket="b"))
    assert loader_of(minio) is loader
    assert not [path for path in parsed if "service-2" in path or path.endswith("endpoints")], parsed
    # Its own credentials, not the environment's.
    signed: Any = minio
    assert signed._request_signer._credentials.access_key == "abcd"


def test_many_sessions_leave_one_entry_per_search_path() -> None:
    for _ in range(5):
        clients.aws_session()
        clients.minio_client(MinioSecret(endpoint_url="http://127.0.0.1:9", access_key="abcd", secret_key="efgh",
                                         bucket="b"))
    paths = clients.aws_session().get_component("data_loader").search_paths
    assert len(paths) == len(set(paths))


def test_building_a_client_leaves_the_garbage_collector_as_it_found_it() -> None:
    import gc

    session = clients.aws_session()
    assert gc.isenabled()
    clients.secretsmanager_client(session)
    assert gc.isenabled()
    gc.disable()
    try:
        clients.source_s3_client(session, max_pool=2)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_overlapping_pauses_restore_the_collector_when_the_last_ends() -> None:
    # Two threads building clients at once: the first to finish must not turn the collector
    # on under the other, and the last must not leave it off.
    import gc

    assert gc.isenabled()
    first, second = clients._no_cyclic_gc(), clients._no_cyclic_gc()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not gc.isenabled()
    second.__exit__(None, None, None)
    assert gc.isenabled()
