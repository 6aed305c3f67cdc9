"""Bring the local stack up and down; the state file that remembers it between commands.

``up`` starts two server processes on free 127.0.0.1 ports, each in its own session:
``moto_server`` (S3, SQS, DynamoDB, Secrets Manager, CloudWatch) and SeaweedFS ``weed
mini`` (the MinIO stand-in, data under a temp folder). Their PIDs are written to the
state file *before* anything is provisioned, so that ``down`` can stop them whatever
happened afterwards, from any later process, also after a crash.

The function's environment is written next to the state file twice: ``env`` (``KEY='v'``
lines, to source with ``set -a; . .local-stack/env; set +a`` before ``serverless invoke
local``) and ``env.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from local import processes
from local.resources import Names, aws_client, minio_client, minio_secret, provision_aws, provision_minio
from local.serverless_config import StageConfig, load_stage

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STATE_DIR = REPO_ROOT / ".local-stack"
STATE_FILE = "state.json"
ENV_FILE = "env"
ENV_JSON_FILE = "env.json"
# Lambda's own recommendation, and a trap seen before (FIELD-NOTES): a visibility timeout
# shorter than 6x the function timeout redelivers messages still being processed.
VISIBILITY_FACTOR = 6


class StackError(RuntimeError):
    """The stack cannot be brought up (or is already up)."""


@dataclass(frozen=True)
class StackConfig:
    """Which stage of serverless.yml to mirror, and what to change for a quicker run."""

    serverless_yml: Path = REPO_ROOT / "serverless.yml"
    stage: str = "local"
    function_timeout_s: int | None = None  # default: the stage's function timeout
    visibility_timeout_s: int | None = None  # default: the stage's, or 6x an overridden timeout
    max_receive_count: int | None = None  # default: the stage's redrive policy

    def resolve(self) -> StageConfig:
        stage = load_stage(self.serverless_yml, stage=self.stage)
        timeout = self.function_timeout_s or stage.timeout_s
        visibility = self.visibility_timeout_s or (
            VISIBILITY_FACTOR * timeout if self.function_timeout_s else stage.visibility_timeout_s)
        return replace(stage, timeout_s=timeout, visibility_timeout_s=visibility,
                       max_receive_count=self.max_receive_count or stage.max_receive_count)


@dataclass
class ProcessRecord:
    pid: int
    program: str  # the executable's name, checked before killing a recorded PID
    port: int
    log: str


@dataclass
class StackState:
    state_dir: str
    work_dir: str  # temp folder: server logs and SeaweedFS data
    region: str
    created_at: float
    processes: dict[str, ProcessRecord] = field(default_factory=dict)
    endpoints: dict[str, str] = field(default_factory=dict)
    resources: dict[str, str] = field(default_factory=dict)
    function: dict[str, Any] = field(default_factory=dict)
    minio: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    ready: bool = False

    @property
    def path(self) -> Path:
        return Path(self.state_dir) / STATE_FILE

    def save(self) -> None:
        Path(self.state_dir).mkdir(parents=True, exist_ok=True)
        # Written whole or not at all: a crash mid-write must not lose the recorded PIDs.
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, state_dir: Path) -> StackState | None:
        path = Path(state_dir) / STATE_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as e:
            raise StackError(f"{path} is not valid JSON ({e}); remove it after checking no server runs") from e
        raw["processes"] = {name: ProcessRecord(**record) for name, record in raw.get("processes", {}).items()}
        return cls(**raw)

    def alive(self) -> dict[str, bool]:
        return {name: processes.is_running(p.pid, program=p.program) for name, p in self.processes.items()}

    def aws_client(self, service: str, *, max_pool: int = 10) -> Any:
        return aws_client(service, endpoint_url=self.endpoints["aws"], region=self.region, max_pool=max_pool)

    def minio_client(self) -> Any:
        return minio_client(endpoint_url=self.endpoints["minio"], access_key=self.minio["access_key"],
                            secret_key=self.minio["secret_key"])


def function_env(stage: StageConfig, *, endpoint_url: str, extra: Mapping[str, str]) -> dict[str, str]:
    """The function's environment: the stage's own (serverless.yml), the SDK's overrides."""
    return {
        **stage.environment,
        # Every AWS service at moto, dummy credentials. The MinIO endpoint comes from the
        # secret, as in production. serverless invoke local keeps these from the shell.
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_REGION": stage.region,
        "AWS_DEFAULT_REGION": stage.region,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        # Not read by the function: for people and scripts using the stack.
        **extra,
    }


def up(config: StackConfig = StackConfig(), *, state_dir: Path = DEFAULT_STATE_DIR,
       say: Callable[[str], None] = lambda _: None) -> StackState:
    """Start and provision the stack; on any failure take down what was started."""
    from tests.support.servers import MotoServer, SeaweedS3

    state_dir = Path(state_dir)
    stage = config.resolve()
    existing = StackState.load(state_dir)
    if existing is not None:
        alive = existing.alive()
        if alive and all(alive.values()) and existing.ready:
            raise StackError(f"a local stack is already running (state in {existing.path}); "
                             "`python -m local down` stops it")
        say("cleaning up a stack that crashed or was half started")
        down(state_dir=state_dir, say=say)

    work_dir = Path(tempfile.mkdtemp(prefix="local-stack-"))
    (work_dir / "logs").mkdir()
    state = StackState(state_dir=str(state_dir), work_dir=str(work_dir), region=stage.region, created_at=time.time())
    state.save()
    try:
        started = time.monotonic()
        moto = MotoServer(log_dir=work_dir / "logs")
        minio_key, minio_secret_key = f"local{secrets.token_hex(6)}", secrets.token_urlsafe(24)
        minio = SeaweedS3(access_key=minio_key, secret_key=minio_secret_key, data_dir=work_dir / "seaweed")
        # Record each PID as soon as it exists: start() waits for readiness and may raise.
        for name, server, program in (("moto", moto, "local.moto_server"), ("minio", minio, "weed")):
            _record_pid_on_spawn(server, state, name, program)
            server.start()
        say(f"moto on {moto.endpoint_url}, SeaweedFS (MinIO stand-in) on {minio.endpoint_url} "
            f"({time.monotonic() - started:.1f} s)")
        state.endpoints = {"aws": moto.endpoint_url, "minio": minio.endpoint_url}
        state.minio = {"access_key": minio_key, "secret_key": minio_secret_key}

        names = Names(landing_bucket=stage.landing_bucket, queue=stage.queue, dlq=stage.dlq, table=stage.table,
                      secret=stage.secret, archive_bucket=f"{stage.service}-{stage.stage}-archive")
        provision_minio(endpoint_url=minio.endpoint_url, access_key=minio_key, secret_key=minio_secret_key,
                        bucket=names.archive_bucket)
        resources = provision_aws(
            endpoint_url=moto.endpoint_url, region=stage.region, names=names,
            visibility_timeout_s=stage.visibility_timeout_s, max_receive_count=stage.max_receive_count,
            secret=minio_secret(endpoint_url=minio.endpoint_url, access_key=minio_key,
                                secret_key=minio_secret_key, bucket=names.archive_bucket),
        )
        state.resources = resources.to_dict()
        state.function = {
            "name": stage.function_name,
            "handler": stage.handler,
            "timeout_s": stage.timeout_s,
            "memory_mb": stage.memory_mb,
            "visibility_timeout_s": stage.visibility_timeout_s,
            "max_receive_count": stage.max_receive_count,
            "batch_size": stage.batch_size,
            "batching_window_s": stage.batching_window_s,
            "max_concurrency": stage.max_concurrency,
            "report_batch_item_failures": stage.report_batch_item_failures,
        }
        state.env = function_env(stage, endpoint_url=moto.endpoint_url, extra={
            "LOCAL_STACK_LANDING_BUCKET": resources.landing_bucket,
            "LOCAL_STACK_QUEUE_URL": resources.queue_url,
            "LOCAL_STACK_DLQ_URL": resources.dlq_url,
            "LOCAL_STACK_MINIO_ENDPOINT_URL": minio.endpoint_url,
            "LOCAL_STACK_MINIO_BUCKET": resources.archive_bucket,
        })
        state.ready = True
        state.save()
        write_env_files(state)
        say(f"provisioned in {time.monotonic() - started:.1f} s; state in {state.path}")
        return state
    except BaseException:
        down(state_dir=state_dir)
        raise


def _record_pid_on_spawn(server: Any, state: StackState, name: str, program: str) -> None:
    """Save the PID the moment the process exists, before ``start()`` waits for readiness:
    an ``up`` killed during that wait must not leave an unrecorded server behind."""
    original_spawn = server._spawn

    def spawn(argv: list[str], **kwargs: Any) -> None:
        original_spawn(argv, **kwargs)
        state.processes[name] = ProcessRecord(pid=server.pid, program=program, port=server.port,
                                              log=str(kwargs["log_path"]))
        state.save()

    server._spawn = spawn


def write_env_files(state: StackState) -> None:
    state_dir = Path(state.state_dir)
    lines = [f"{key}={shlex.quote(value)}" for key, value in state.env.items()]
    (state_dir / ENV_FILE).write_text("# written by `python -m local up`; source with: set -a; . THIS; set +a\n"
                                      + "\n".join(lines) + "\n")
    (state_dir / ENV_JSON_FILE).write_text(json.dumps(state.env, indent=2) + "\n")


def export_lines(state: StackState) -> str:
    return "\n".join(f"export {key}={shlex.quote(value)}" for key, value in state.env.items())


def down(*, state_dir: Path = DEFAULT_STATE_DIR, say: Callable[[str], None] = lambda _: None) -> bool:
    """Stop every recorded process and remove the stack's files. False if there was no stack."""
    state_dir = Path(state_dir)
    state = StackState.load(state_dir)
    if state is None:
        return False
    for name, record in state.processes.items():
        if processes.stop(record.pid, program=record.program):
            say(f"stopped {name} (pid {record.pid})")
    work_dir = Path(state.work_dir)
    if work_dir.name.startswith("local-stack-"):  # never remove a folder we did not make
        shutil.rmtree(work_dir, ignore_errors=True)
    for name in (STATE_FILE, ENV_FILE, ENV_JSON_FILE):
        with contextlib.suppress(FileNotFoundError):
            (state_dir / name).unlink()
    return True


def status(*, state_dir: Path = DEFAULT_STATE_DIR) -> dict[str, Any] | None:
    """What runs, and how full the queues and the archive bucket are."""
    state = StackState.load(Path(state_dir))
    if state is None:
        return None
    report: dict[str, Any] = {
        "state_file": str(state.path),
        "ready": state.ready,
        "processes": {name: {"pid": p.pid, "port": p.port, "running": alive}
                      for (name, p), alive in zip(state.processes.items(), state.alive().values(), strict=True)},
        "endpoints": state.endpoints,
    }
    if state.ready and all(state.alive().values()):
        sqs = state.aws_client("sqs")
        for label, url in (("queue", state.resources["queue_url"]), ("dlq", state.resources["dlq_url"])):
            attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
                "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
            report[label] = {"visible": int(attributes["ApproximateNumberOfMessages"]),
                             "in_flight": int(attributes["ApproximateNumberOfMessagesNotVisible"])}
        pages = state.minio_client().get_paginator("list_objects_v2").paginate(
            Bucket=state.resources["archive_bucket"], Prefix=state.env.get("ARCHIVE_PREFIX", "archives") + "/")
        report["archives"] = sum(len(page.get("Contents", [])) for page in pages)
    return report
