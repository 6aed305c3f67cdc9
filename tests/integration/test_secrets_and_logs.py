"""Secrets, logs, metrics and TLS, as an operator and an attacker see them (contract 3 and 8).

The function runs in a child process (tests/support/invoke.py) and every line it writes
to stdout and stderr is captured, across runs with failures: a malformed message, an S3
GET that keeps failing, MinIO refusing rotated-away credentials, then the rotation picked
up. Every line must be one JSON object; the MinIO ``access_key`` and ``secret_key`` (the
right and the wrong ones) never appear, nor the raw event (bodies, receipt handles,
request markers planted in the S3 records). The run is repeated with the SDK's loggers at
DEBUG, the level at which botocore prints headers and bodies. The EMF lines carry the
metrics of contract section 8.

Also: ``USE_MOTO`` with ``ENVIRONMENT=prod`` refuses to start with one clear error and
writes nothing; TLS to MinIO is verified by default and a wrong CA fails closed (nothing
published), against SeaweedFS serving HTTPS with a private CA (tests/support/tls.py).
"""

from __future__ import annotations

import json
import random
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import S3Target
from tests.support.fault_proxy import FaultProxy, s3_error
from tests.support.invoke import Function, InvocationResult
from tests.support.s3events import messages
from tests.support.servers import MotoServer, SeaweedS3
from tests.support.tls import TlsFiles, make_ca, make_tls
from tests.support.world import Batch, World, new_batch

pytestmark = [pytest.mark.servers, pytest.mark.timeout(300)]

CONTRACT_METRICS = {"ObjectsArchived", "DuplicatesSkipped", "ObjectsMissing", "EventsIgnored", "ArchiveBytes",
                    "ArchiveObjects", "BatchItemFailures", "ArchiveDurationMs"}
NAMESPACE = "AggregatorTests"


@pytest.fixture(scope="module")
def world(moto_server: MotoServer, minio_target: S3Target) -> World:
    return World.create(moto_server, minio_target)


def parse_lines(lines: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """(JSON objects, lines that are not one JSON object each)."""
    documents, bad = [], []
    for line in lines:
        try:
            document = json.loads(line)
        except ValueError:
            bad.append(line)
            continue
        if isinstance(document, dict):
            documents.append(document)
        else:
            bad.append(line)
    return documents, bad


def raw_event_markers(batch: Batch) -> dict[str, str]:
    """Values that only the raw event holds: receipt handles, bodies, request markers."""
    markers: dict[str, str] = {}
    for message in batch.messages:
        markers[f"receipt handle of {message.message_id}"] = message.receipt_handle
        markers[f"body of {message.message_id}"] = message.body
        try:
            records = json.loads(message.body).get("Records", [])
        except (ValueError, AttributeError):
            continue
        for record in records:
            if "userIdentity" not in record:
                continue  # the malformed message's record
            markers["userIdentity.principalId"] = record["userIdentity"]["principalId"]
            markers["requestParameters.sourceIPAddress"] = record["requestParameters"]["sourceIPAddress"]
            markers["responseElements.x-amz-request-id"] = record["responseElements"]["x-amz-request-id"]
            markers["bucket ownerIdentity"] = record["s3"]["bucket"]["ownerIdentity"]["principalId"]
    return markers


def leaked(lines: list[str], forbidden: dict[str, str]) -> dict[str, int]:
    return {label: sum(value in line for line in lines) for label, value in forbidden.items()
            if any(value in line for line in lines)}


def emf(documents: list[dict[str, Any]]) -> tuple[set[str], set[str], Counter[str]]:
    """(metric names, namespaces, summed values) of the EMF lines."""
    names: set[str] = set()
    namespaces: set[str] = set()
    totals: Counter[str] = Counter()
    for document in documents:
        for directive in document.get("_aws", {}).get("CloudWatchMetrics", []):
            namespaces.add(directive.get("Namespace"))
            for metric in directive.get("Metrics", []):
                names.add(metric["Name"])
                value = document.get(metric["Name"])
                totals[metric["Name"]] += int(sum(value) if isinstance(value, list) else value or 0)
    return names, namespaces, totals


# --- logs and metrics under failures -----------------------------------------------------------------

@pytest.fixture(scope="module", params=[False, True], ids=["default-logging", "sdk-debug-logging"])
def failing_run(request: pytest.FixtureRequest, world: World,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two deliveries of one batch: the first with a malformed message, a GET that keeps
    failing and MinIO refusing the secret's key; the second after the key was rotated in
    Secrets Manager and the deadline passed."""
    sdk_debug: bool = request.param
    log_dir = tmp_path_factory.mktemp("logs")
    with FaultProxy(world.moto_url, name="s3") as s3:
        batch = new_batch(world, random.Random(5), objects=6, prefix="logs", LOG_LEVEL="DEBUG")
        batch.env["AWS_ENDPOINT_URL_S3"] = s3.url
        bad = messages(["{\"Records\": [{\"eventSource\": \"aws:s3\", \"oops\": true}]}"])
        batch.messages += bad
        wrong_key = "WRONG-" + secrets.token_urlsafe(18)
        world.set_secret(batch.secret, secret_key=wrong_key)
        broken = batch.objects[0]
        s3.add(lambda r: r.is_object_get and r.key == f"{broken.bucket}/{broken.key}", s3_error(500, "InternalError"))
        with Function(batch.env, log_dir=log_dir, sdk_debug=sdk_debug) as function:
            first = function.invoke(batch.event(), timeout_s=5)
            s3.clear()
            world.set_secret(batch.secret)  # rotated: the warm function must pick it up by itself
            time.sleep(max(0.0, first.deadline + 1 - time.time()))
            second = function.invoke(batch.event(again=True), timeout_s=8)
        yield {"batch": batch, "first": first, "second": second, "wrong_key": wrong_key, "bad": bad[0],
               "sdk_debug": sdk_debug, "lines": first.log_lines() + second.log_lines()}


def test_the_failing_run_behaves(failing_run: dict[str, Any]) -> None:
    batch: Batch = failing_run["batch"]
    first: InvocationResult = failing_run["first"]
    second: InvocationResult = failing_run["second"]
    every = {m.message_id for m in batch.messages}
    assert first.outcome == "ok" and set(first.failed_ids) == every
    assert second.outcome == "ok" and second.failed_ids == [failing_run["bad"].message_id]
    assert batch.problems() == []


def test_every_line_is_one_json_object(failing_run: dict[str, Any]) -> None:
    lines: list[str] = failing_run["lines"]
    documents, bad = parse_lines(lines)
    assert bad == []
    assert len(documents) >= 6  # warnings, errors, EMF: the run did log
    messages_seen = " ".join(str(d.get("message")) for d in documents)
    for expected in ("malformed message", "fetch failed", "refused the credentials"):
        assert expected in messages_seen, f"no log line about {expected!r}"


def test_minio_keys_never_appear(failing_run: dict[str, Any], world: World) -> None:
    forbidden = {"access_key": world.minio_access_key, "secret_key": world.minio_secret_key,
                 "wrong secret_key": failing_run["wrong_key"]}
    assert leaked(failing_run["lines"], forbidden) == {}


def test_the_raw_event_is_never_logged(failing_run: dict[str, Any]) -> None:
    assert leaked(failing_run["lines"], raw_event_markers(failing_run["batch"])) == {}


def test_metrics_of_the_contract_are_emitted(failing_run: dict[str, Any]) -> None:
    first_docs, _ = parse_lines(failing_run["first"].stdout)
    second_docs, _ = parse_lines(failing_run["second"].stdout)
    names, namespaces, totals = emf(second_docs)
    assert names >= CONTRACT_METRICS
    assert namespaces == {NAMESPACE}
    batch: Batch = failing_run["batch"]
    assert totals["ObjectsArchived"] == len(batch.objects)
    assert totals["ArchiveObjects"] == len(batch.objects)
    assert totals["BatchItemFailures"] == 1 and totals["ArchiveBytes"] > 0
    first_names, _, first_totals = emf(first_docs)
    assert {"BatchItemFailures", "ObjectsArchived"} <= first_names
    assert first_totals["BatchItemFailures"] == len(batch.messages) and first_totals["ObjectsArchived"] == 0


def test_each_log_record_is_written_once(failing_run: dict[str, Any]) -> None:
    """Not on stdout by the service logger *and* again on stderr by the root handler.

    The SDK's DEBUG lines are left out of the count: the claims are written from 16
    threads at once, so two identical debug lines in one millisecond are two records. A
    doubled handler would double every record, the service's own included."""
    documents, _ = parse_lines(failing_run["first"].log_lines())
    records = Counter((d.get("message"), d.get("timestamp"), d.get("location")) for d in documents
                      if "message" in d and d.get("level") != "DEBUG")
    assert records, "no records to check"
    assert {record: n for record, n in records.items() if n > 1} == {}


# --- configuration refused -------------------------------------------------------------------------

@pytest.mark.parametrize("warm_up", [False, True], ids=["first-invocation", "init"])
def test_use_moto_with_prod_refuses_to_start(world: World, tmp_path: Path, warm_up: bool) -> None:
    batch = new_batch(world, random.Random(6), objects=3, prefix="prod", ENVIRONMENT="prod", USE_MOTO="true")
    with Function(batch.env, log_dir=tmp_path, warm_up=warm_up) as function:
        result = function.invoke(batch.event(), timeout_s=6)
    assert result.outcome == "error"
    assert result.error is not None and result.error["errorType"] == "ConfigError"
    message = result.error["errorMessage"]
    assert "USE_MOTO" in message and "prod" in message
    documents, bad = parse_lines(result.log_lines())
    assert bad == []
    assert [d for d in documents if d.get("level") in ("ERROR", "CRITICAL")] in ([], documents[:1])
    assert world.claims(batch.table) == {}  # nothing written
    assert world.archive_keys(batch.prefix) == []


def test_without_use_moto_prod_starts(world: World, tmp_path: Path) -> None:
    # The test MinIO speaks plain http, which prod refuses unless allowed.
    batch = new_batch(world, random.Random(7), objects=2, prefix="prod", ENVIRONMENT="prod", USE_MOTO="",
                      MINIO_ALLOW_HTTP="true")
    with Function(batch.env, log_dir=tmp_path) as function:
        result = function.invoke(batch.event(), timeout_s=6)
    assert result.outcome == "ok" and result.failed_ids == []
    assert batch.problems() == []


# --- TLS ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_world(moto_server: MotoServer, tls_files: TlsFiles) -> Iterator[World]:
    with SeaweedS3(access_key="tls-access-key", secret_key="tls-secret-key-0123456789",
                   tls=(tls_files.cert_path, tls_files.key_path)) as server:
        target = S3Target(server.endpoint_url, server.access_key, server.secret_key, "seaweedfs-tls")
        yield World.create(moto_server, target, ca_path=str(tls_files.ca_path))


def test_tls_with_the_private_ca_publishes(tls_world: World, tls_files: TlsFiles, tmp_path: Path) -> None:
    batch = new_batch(tls_world, random.Random(8), objects=4, prefix="tls")
    tls_world.set_secret(batch.secret, ca_bundle=tls_files.ca_pem)
    with Function(batch.env, log_dir=tmp_path) as function:
        result = function.invoke(batch.event(), timeout_s=8)
    assert result.outcome == "ok" and result.failed_ids == []
    assert tls_world.minio_url.startswith("https://")
    assert batch.problems() == []


@pytest.mark.parametrize("trust", ["no-ca-bundle", "wrong-ca"])
def test_tls_fails_closed(tls_world: World, tls_files: TlsFiles, tmp_path: Path, trust: str) -> None:
    """Verification is on by default (no bundle: the system store does not know the CA),
    and a bundle of another CA is refused: nothing is published, every message fails;
    after the CA is fixed, a later delivery archives every object once."""
    batch = new_batch(tls_world, random.Random(9), objects=4, prefix="tls")
    wrong = None if trust == "no-ca-bundle" else make_ca("another CA").pem
    tls_world.set_secret(batch.secret, ca_bundle=wrong)
    with Function(batch.env, log_dir=tmp_path) as function:
        refused = function.invoke(batch.event(), timeout_s=6)
        assert refused.outcome == "ok"
        assert sorted(refused.failed_ids) == sorted(m.message_id for m in batch.messages)
        assert tls_world.archive_keys(batch.prefix) == []
        assert parse_lines(refused.log_lines())[1] == []
        assert leaked(refused.log_lines(), {"access_key": tls_world.minio_access_key,
                                            "secret_key": tls_world.minio_secret_key}) == {}
    # Fixed in the secret. A warm container may keep the old secret for up to its 5 minute
    # cache (contract 3: only an auth error refreshes it at once), so a new one takes it.
    tls_world.set_secret(batch.secret, ca_bundle=tls_files.ca_pem)
    with Function(batch.env, log_dir=tmp_path) as function:
        time.sleep(max(0.0, refused.deadline + 1 - time.time()))
        again = function.invoke(batch.event(again=True), timeout_s=10)
    assert again.outcome == "ok" and again.failed_ids == []
    assert batch.problems() == []
