"""The packaged function, run the way Lambda runs it (issue 13).

Every test here runs the unzipped twin of the deploy artifact (``serverless package
--stage prod`` for this machine's architecture, tests/e2e/conftest.py) in a sandbox
(local/sandbox.py): a fresh ``python -S -m awslambdaric handler.handler`` whose
``sys.path`` holds the task root, the runtime client's own packages and the standard
library, nothing else; Lambda's environment; the Runtime API on loopback.

A probe module (``probe.handler``) stands beside the zip's contents where a test must
look inside the sandbox; the task root is then a tree of links to the unzipped files
plus that one module, so the zip's contents are what they are.
"""

from __future__ import annotations

import json
import random
import re
import sys
import sysconfig
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local import artifact, worker
from local.sandbox import FunctionConfig, Invocation, LogSink, Sandbox
from tests.support.servers import MotoServer
from tests.support.world import World, new_batch

ROOT = Path(__file__).resolve().parents[2]
PROBE = textwrap.dedent('''
    import importlib, os, pkgutil, sys

    def handler(event, context):
        imported, failed = [], {}
        for name in event.get("import", []):
            try:
                imported.append(importlib.import_module(name).__name__)
            except BaseException as e:
                failed[name] = f"{type(e).__name__}: {e}"
        if event.get("walk"):
            package = importlib.import_module(event["walk"])
            for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
                try:
                    importlib.import_module(info.name)
                    imported.append(info.name)
                except BaseException as e:
                    failed[info.name] = f"{type(e).__name__}: {e}"
        origins = {name: getattr(module, "__file__", None) for name, module in sorted(sys.modules.items())
                   if module is not None and "." not in name}
        return {"sys_path": sys.path, "imported": imported, "failed": failed, "origins": origins,
                "versions": {name: getattr(sys.modules.get(name), "__version__", None)
                             for name in ("boto3", "botocore")},
                "executable": sys.executable, "version": list(sys.version_info[:2]),
                "no_site": sys.flags.no_site, "cwd": os.getcwd(),
                "env": {k: os.environ.get(k) for k in ("LAMBDA_TASK_ROOT", "_HANDLER", "AWS_LAMBDA_FUNCTION_NAME",
                        "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "TMPDIR",
                        "AWS_LAMBDA_RUNTIME_API")},
                "memory_limit_in_mb": context.memory_limit_in_mb,
                "remaining_ms": context.get_remaining_time_in_millis(),
                "request_id": context.aws_request_id}
''')
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing"}
TRACING_ON = {"POWERTOOLS_TRACE_DISABLED": "false"}


def pinned(name: str) -> str:
    text = (ROOT / "requirements.txt").read_text()
    match = re.search(rf"^{re.escape(name)}(?:\[[^\]]*\])?==(\S+)", text, re.M)
    assert match, f"{name} is not pinned in requirements.txt"
    return match.group(1)


def overlay(task_root: Path, where: Path, *, without: tuple[str, ...] = (), probe: bool = True) -> Path:
    """A task root of links to ``task_root``'s top-level entries, less ``without``, plus the probe."""
    where.mkdir(parents=True, exist_ok=True)
    for entry in task_root.iterdir():
        if entry.name not in without:
            (where / entry.name).symlink_to(entry)
    if probe:
        (where / "probe.py").write_text(PROBE)
    return where


def template_environment(built: artifact.Artifact) -> dict[str, str]:
    """The function's environment as the template gives it to Lambda (plain strings)."""
    template = json.loads(built.template_path.read_text())
    variables = template["Resources"]["AggregatorLambdaFunction"]["Properties"]["Environment"]["Variables"]
    assert all(isinstance(v, str) for v in variables.values()), variables
    return dict(variables)


class Runs:
    """Sandboxes on one log, with the template's environment; every one is killed at the end."""

    def __init__(self, log: Path, base_env: dict[str, str]) -> None:
        self.log = log
        self.base_env = base_env
        self.sink = LogSink(log)
        self.sandboxes: list[Sandbox] = []

    def sandbox(self, task_root: Path, *, handler: str = "handler.handler", env: dict[str, str] | None = None,
                timeout_s: float = 60) -> Sandbox:
        config = FunctionConfig(handler=handler, name="aggregator", timeout_s=timeout_s, memory_mb=1024,
                                env={**self.base_env, **CREDENTIALS, **(env or {})}, task_root=task_root,
                                init_timeout_s=60)
        box = Sandbox(config, self.sink, label=f"e2e-{len(self.sandboxes)}")
        self.sandboxes.append(box)
        return box

    def invoke(self, task_root: Path, event: dict[str, Any], **options: Any) -> Invocation:
        return self.sandbox(task_root, **options).invoke(event)

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def runs(tmp_path: Path, twin: artifact.Artifact) -> Iterator[Runs]:
    runs = Runs(tmp_path / "function.log", template_environment(twin))
    yield runs
    for box in runs.sandboxes:
        box.kill()
    runs.sink.close()


def probe(runs: Runs, task_root: Path, event: dict[str, Any], *, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = runs.invoke(task_root, event, handler="probe.handler", env=env)
    assert result.outcome == "ok", result.error
    assert isinstance(result.result, dict)
    return result.result


# -- versions ------------------------------------------------------------------------------


def test_the_template_names_the_python_the_tests_run(twin: artifact.Artifact) -> None:
    ours = f"python{sys.version_info.major}.{sys.version_info.minor}"
    template = json.loads(twin.template_path.read_text())
    function = template["Resources"]["AggregatorLambdaFunction"]["Properties"]
    assert function["Runtime"] == ours
    assert function["Architectures"] == [artifact.HOST_ARCH]
    assert re.search(rf"^\s*runtime:\s*{re.escape(ours)}\s*$", (ROOT / "serverless.yml").read_text(), re.M)


# -- the sandbox is what Lambda gives the function -------------------------------------------


def test_the_sandbox_sees_the_zip_the_runtime_client_and_the_standard_library_only(
        twin: artifact.Artifact, runs: Runs, tmp_path: Path) -> None:
    task_root = overlay(twin.task_root, tmp_path / "task")
    # boto3 too: the handler imports only botocore; Powertools imports boto3 with the secret.
    seen = probe(runs, task_root, {"import": ["handler", "zstandard", "awscrt.http", "boto3"]})
    runtime = worker.runtime_packages()
    stdlib = {Path(sysconfig.get_path(name)).resolve() for name in ("stdlib", "platstdlib")}
    # The interpreter's own zipped standard library entry (absent on disk, always listed).
    stdlib_zip = Path(sys.base_prefix, "lib", f"python{sys.version_info.major}{sys.version_info.minor}.zip")
    allowed = [task_root.resolve(), runtime.resolve(), stdlib_zip.resolve(), *stdlib]
    for entry in seen["sys_path"]:
        path = Path(entry).resolve()
        assert any(path == root or root in path.parents for root in allowed), f"{entry} is on sys.path"
    assert not [e for e in seen["sys_path"] if "site-packages" in e or "dist-packages" in e]
    assert seen["no_site"] == 1 and seen["version"] == list(sys.version_info[:2])
    assert seen["failed"] == {}, seen["failed"]
    # Everything the handler imported came from the zip (or the standard library).
    for name in ("boto3", "botocore", "aws_lambda_powertools", "awscrt", "zstandard", "aggregator", "handler"):
        origin = seen["origins"].get(name)
        assert origin and Path(origin).resolve().is_relative_to(twin.task_root.resolve()), (name, origin)
    assert "awslambdaric" in seen["origins"] and "aws_xray_sdk" not in seen["origins"]  # tracing off: not loaded
    # The SDK that runs in production is the one the tests ran.
    assert seen["versions"] == {"boto3": pinned("boto3"), "botocore": pinned("botocore")}
    env = seen["env"]
    assert env["LAMBDA_TASK_ROOT"] == str(task_root.resolve()) and seen["cwd"] == str(task_root.resolve())
    assert env["_HANDLER"] == "probe.handler" and env["AWS_LAMBDA_FUNCTION_NAME"] == "aggregator"
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST" and env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "1024"
    assert env["TMPDIR"] and Path(env["TMPDIR"]) != task_root and env["AWS_LAMBDA_RUNTIME_API"]
    # awslambdaric's context object: the memory size is a string there, as in Lambda.
    assert seen["memory_limit_in_mb"] == "1024" and 0 < seen["remaining_ms"] <= 60_000


def test_every_module_of_the_production_zip_imports_from_the_zip_alone(
        twin: artifact.Artifact, runs: Runs, tmp_path: Path) -> None:
    """`--stage prod`: each module of aggregator/, with tracing on, so the X-Ray SDK too."""
    task_root = overlay(twin.task_root, tmp_path / "task")
    seen = probe(runs, task_root, {"import": ["handler"], "walk": "aggregator"}, env=TRACING_ON)
    assert seen["failed"] == {}, seen["failed"]
    expected = {".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "aggregator").rglob("*.py")}
    expected = {name.removesuffix(".__init__") for name in expected} - {"aggregator"}
    assert expected <= set(seen["imported"]), expected - set(seen["imported"])
    for name in ("aws_xray_sdk", "wrapt"):
        assert Path(seen["origins"][name]).resolve().is_relative_to(twin.task_root.resolve()), name


# -- init failures show as Lambda shows them ---------------------------------------------------


def test_a_missing_module_fails_init_with_lambdas_import_error(
        twin: artifact.Artifact, runs: Runs, tmp_path: Path) -> None:
    """Today's zip: no X-Ray SDK, while the template turns tracing on."""
    broken = overlay(twin.task_root, tmp_path / "broken", without=("aws_xray_sdk",), probe=False)
    result = runs.invoke(broken, {"Records": []}, env=TRACING_ON)
    assert result.outcome == "init_error"
    assert result.error is not None
    assert result.error["errorType"] == "Runtime.ImportModuleError"
    assert result.error["errorMessage"] == "Unable to import module 'handler': No module named 'aws_xray_sdk'"
    lines = runs.lines()
    assert any(line.startswith("INIT_REPORT ") and "Status: error" in line
               and "Error Type: Runtime.ImportModuleError" in line for line in lines), lines
    # The runtime client's own log line, JSON as the template's LoggingConfig asks.
    logged = [json.loads(line) for line in lines if line.startswith("{")]
    assert any(entry.get("errorType") == "Runtime.ImportModuleError" for entry in logged), logged


def test_the_fixed_zip_imports_with_tracing_on_and_off(twin: artifact.Artifact, runs: Runs) -> None:
    for env in ({}, TRACING_ON):
        result = runs.invoke(twin.task_root, {"not": "an SQS event"}, env=env)
        # Init passed; the event is refused by the handler itself, as Lambda would report it.
        assert result.outcome == "error", result.error
        assert result.error is not None and result.error["errorType"] == "ValueError"


# -- a whole invocation --------------------------------------------------------------------------


@pytest.mark.servers
@pytest.mark.parametrize("tracing", ["PassThrough", "Active"])
def test_the_packaged_function_archives_a_batch(twin: artifact.Artifact, runs: Runs, moto_server: MotoServer,
                                                minio_target: Any, tracing: str) -> None:
    world = World.create(moto_server, minio_target)
    batch = new_batch(world, random.Random(13), objects=10, prefix="artifact")
    env = {**batch.env, **(TRACING_ON if tracing == "Active" else {})}
    box = runs.sandbox(twin.task_root, env=env, timeout_s=60)
    first = box.invoke(batch.event())
    assert first.outcome == "ok", first.error
    assert first.cold_start and first.result == {"batchItemFailures": []}
    assert batch.problems() == []
    again = box.invoke(batch.event(again=True))  # warm, and a redelivery: nothing archived twice
    assert again.outcome == "ok" and not again.cold_start and again.result == {"batchItemFailures": []}
    assert batch.problems() == []
    assert runs.sink.non_json_lines == 0, runs.sink.non_json_examples
    assert runs.sink.metrics.get("ObjectsArchived") == len(batch.objects)
