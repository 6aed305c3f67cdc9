"""The local stack as a new user meets it: the demo, the CLI, and serverless invoke local.

The demo runs the packaged ``handler.handler`` (the unzipped twin of the deploy artifact)
under awslambdaric in Lambda-like sandboxes fed by the local SQS event-source runner,
on a small data set, and must verify: every object in exactly one
archive, checksums, manifests and bytes matching the sources, duplicates skipped, and no
process left running afterwards.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pytest
import zstandard

from local import stack
from local.artifact import Artifact
from local.demo import DemoOptions, run_demo
from local.processes import is_running
from local.resources import aws_client, minio_client
from local.sample_event import make_sample_event
from local.verify import Uploaded, verify_archives
from tests.conftest import S3Target
from tests.support.servers import MotoServer

pytestmark = pytest.mark.servers

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def _clean_env() -> dict[str, str]:
    """The caller's environment without AWS settings: each command must bring its own."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_"))}


def test_demo_archives_and_verifies_a_small_data_set(tmp_path: Path, twin: Artifact) -> None:
    # `make demo` runs the packaged function: the unzipped twin, through awslambdaric.
    options = DemoOptions(objects=60, duplicates=3, progress=False, state_dir=tmp_path / "stack", idle_s=1,
                          max_s=300, task_root=twin.task_root)
    out = io.StringIO()

    result = run_demo(options, out=out, say=lambda _: None)

    print(result.report)  # shown by pytest when the test fails
    assert result.verification is not None and result.summary is not None
    assert result.verification.problems == []
    assert len(result.uploads) == 60
    assert result.verification.objects_archived == 60
    assert result.duplicates_sent == 3
    assert result.summary.metrics.get("DuplicatesSkipped") == 3
    assert result.queue_left == 0 and result.dlq_left == 0
    assert result.ok
    assert result.summary.non_json_lines == 0, result.summary.non_json_examples  # CONTRACT.md section 8
    assert "VERIFIED" in out.getvalue()
    # Taken down: nothing recorded is running, and the state is gone.
    assert result.server_pids and not any(is_running(pid) for pid in result.server_pids)
    assert stack.StackState.load(options.state_dir) is None


def test_up_status_down_from_separate_processes(tmp_path: Path) -> None:
    state_dir = tmp_path / "stack"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "local", "--state-dir", str(state_dir), *args], cwd=ROOT,
                              env=_clean_env(), capture_output=True, text=True, timeout=120)

    up = cli("up")
    try:
        assert up.returncode == 0, up.stderr
        exports = dict(line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines())
        assert exports["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
        assert {"IDEMPOTENCY_TABLE_NAME", "MINIO_SECRET_ID", "USE_MOTO", "AWS_REGION"} <= set(exports)
        assert json.loads((state_dir / "env.json").read_text())["MINIO_SECRET_ID"] == exports["MINIO_SECRET_ID"]
        state = stack.StackState.load(state_dir)
        assert state is not None and all(state.alive().values())
        pids = [p.pid for p in state.processes.values()]

        again = cli("up")
        assert again.returncode == 2 and "already running" in again.stderr

        status = cli("status")
        assert status.returncode == 0
        report = json.loads(status.stdout)
        assert report["queue"] == {"visible": 1, "in_flight": 0}  # S3's test event, as in AWS
        assert report["archives"] == 0
    finally:
        down = cli("down")
    assert down.returncode == 0
    assert not any(is_running(pid) for pid in pids)
    assert not (state_dir / "state.json").exists()
    assert cli("down").returncode == 0  # idempotent


def test_serverless_invoke_local_runs_against_the_same_stack(tmp_path: Path) -> None:
    state_dir = tmp_path / "stack"
    state = stack.up(state_dir=state_dir)
    try:
        sample = make_sample_event(state, key="incoming/invoke local/é 1+1.json", body=b'{"reading": 1}',
                                   out=tmp_path / "event.json")
        env = {**_clean_env(), **state.env, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               "VIRTUAL_ENV": str(VENV_BIN.parent)}
        invoked = subprocess.run(
            ["npx", "serverless", "invoke", "local", "-f", "aggregator", "--stage", "local", "-p", str(sample.path)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
        assert invoked.returncode == 0, invoked.stdout + invoked.stderr
        assert re.search(r'"batchItemFailures":\s*\[\s*\]', invoked.stdout), invoked.stdout  # nothing failed

        verification = verify_archives(
            minio=state.minio_client(), archive_bucket=state.resources["archive_bucket"],
            prefix=state.env["ARCHIVE_PREFIX"], source_s3=state.aws_client("s3"),
            source_bucket=state.resources["landing_bucket"], expected={sample.upload.key: sample.upload})
        assert verification.problems == []
        assert verification.objects_archived == 1
    finally:
        stack.down(state_dir=state_dir)


def _archive(members: list[tuple[str, bytes]], manifest: dict[str, object], *,
             tar_format: int = tarfile.PAX_FORMAT) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tar_format) as tar:
        for name, data in [*members, ("MANIFEST.json", json.dumps(manifest).encode())]:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return zstandard.ZstdCompressor().compress(raw.getvalue())


def test_the_verifier_catches_what_it_must(moto_server: MotoServer, minio_target: S3Target) -> None:
    """A verifier that cannot fail proves nothing: feed it an object archived twice, a
    missing one, a wrong checksum and a GNU tar, and expect each to be named."""
    source = aws_client("s3", endpoint_url=moto_server.endpoint_url, region="eu-west-2")
    minio = minio_client(endpoint_url=minio_target.endpoint_url, access_key=minio_target.access_key,
                         secret_key=minio_target.secret_key)
    landing, archive_bucket = f"landing-{uuid.uuid4().hex[:8]}", f"archive-{uuid.uuid4().hex[:8]}"
    source.create_bucket(Bucket=landing, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    minio.create_bucket(Bucket=archive_bucket)
    expected: dict[str, Uploaded] = {}
    for key, body in (("a.txt", b"alpha"), ("b c.txt", b"bravo"), ("missing.txt", b"never archived")):
        etag = source.put_object(Bucket=landing, Key=key, Body=body)["ETag"].strip('"')
        expected[key] = Uploaded(key=key, size=len(body), sha256=hashlib.sha256(body).hexdigest(), etag=etag,
                                 version_id=None, uploaded_at=0.0)

    def entry(key: str, data: bytes) -> dict[str, object]:
        return {"bucket": landing, "key": key, "member": f"{landing}/{key}", "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(), "etag": expected[key].etag, "version_id": None,
                "sequencer": None, "last_modified": "2023-11-14T22:13:20+00:00"}

    def put(archive_id: str, data: bytes, *, checksum: str | None = None) -> None:
        minio.put_object(Bucket=archive_bucket, Key=f"archives/2026/11/26/12/{archive_id}.tar.zst", Body=data,
                         Metadata={"sha256_checksum": checksum or hashlib.sha256(data).hexdigest()})

    for archive_id in ("first", "second"):  # "a.txt" lands in two archives
        members = [(f"{landing}/a.txt", b"alpha"), (f"{landing}/b c.txt", b"bravo")]
        members = members[:1] if archive_id == "second" else members
        objects = [entry(name.split("/", 1)[1], data) for name, data in members]
        put(archive_id, _archive(members, {"archive_id": archive_id, "codec": "zstd", "objects": objects}))
    gnu_members = [(f"{landing}/b c.txt", b"bravo")]
    put("gnu", _archive(gnu_members, {"archive_id": "gnu", "codec": "zstd", "objects": [entry("b c.txt", b"bravo")]},
                        tar_format=tarfile.GNU_FORMAT), checksum="0" * 64)

    result = verify_archives(minio=minio, archive_bucket=archive_bucket, prefix="archives", source_s3=source,
                             source_bucket=landing, expected=expected)

    problems = "\n".join(result.problems)
    assert "'a.txt' is in 2 archives" in problems
    assert "'b c.txt' is in 2 archives" in problems
    assert "'missing.txt' is in 0 archives" in problems
    assert "gnu.tar.zst: sha256_checksum metadata" in problems
    assert "no POSIX ustar/pax header" in problems
    assert not result.ok
