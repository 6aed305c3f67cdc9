"""One Lambda execution environment: the packaged function run by Lambda's own runtime client.

A sandbox is a fresh interpreter running ``python -S -m awslambdaric HANDLER`` in the task
root (the unzipped artifact, see local/worker.py for what is and is not on its
``sys.path``), with Lambda's environment, talking to a Runtime API served on loopback for
it alone (local/runtime_api.py). So handler resolution, the context object, init
failures and response serialisation are the real runtime client's code.

It imports the handler once (the init phase) and stays warm between invocations. Each
invocation gets a deadline of ``timeout_s`` (the ``Lambda-Runtime-Deadline-Ms`` header);
when it passes, the whole process group is SIGKILLed, as Lambda kills a timed-out
sandbox, and the next invocation starts a new one (a cold start). An exception in the
handler leaves the sandbox warm, as in Lambda's Python runtime. An init failure is
reported as Lambda reports it: an ``INIT_REPORT`` line, and the invocation fails with the
runtime client's error (``Runtime.ImportModuleError``, ...).

The function's stdout and stderr go to a :class:`LogSink`, which keeps them in a log file
(with Lambda's START / END / REPORT lines), sums the EMF metrics found in them and counts
lines that are not one JSON object each (CONTRACT.md section 8 says every line is).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from local import worker
from local.runtime_api import Outcome, Pending, RuntimeApi

REPO_ROOT = worker.REPO_ROOT
ACCOUNT_ID = "123456789012"  # moto's default account


@dataclass(frozen=True)
class FunctionConfig:
    handler: str = "handler.handler"
    name: str = "aggregator"
    timeout_s: float = 30.0
    memory_mb: int = 1024
    region: str = "eu-west-2"
    env: Mapping[str, str] = field(default_factory=dict)
    task_root: Path = REPO_ROOT
    init_timeout_s: float = 10.0  # Lambda's limit for the init phase

    @property
    def arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{ACCOUNT_ID}:function:{self.name}"

    @property
    def log_group(self) -> str:
        return f"/aws/lambda/{self.name}"


@dataclass(frozen=True)
class Invocation:
    request_id: str
    outcome: str  # ok | error | timeout | crash | init_error
    started: float  # epoch seconds
    duration_s: float
    cold_start: bool
    result: Any = None
    error: Mapping[str, Any] | None = None
    max_memory_mb: int | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


class LogSink:
    """The function's log stream, shared by the sandboxes of one run (thread-safe)."""

    def __init__(self, path: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = open(path, "ab") if path else None  # noqa: SIM115 - closed in close()
        self.metrics: dict[str, float] = {}
        self.lines = 0
        self.non_json_lines = 0
        self.non_json_examples: list[str] = []

    def function_line(self, line: bytes) -> None:
        metrics = _emf_metrics(line)
        with self._lock:
            self.lines += 1
            if metrics is None:
                self.non_json_lines += 1
                if len(self.non_json_examples) < 5:
                    self.non_json_examples.append(line.decode(errors="replace").rstrip()[:300])
            else:
                for name, value in metrics.items():
                    self.metrics[name] = self.metrics.get(name, 0) + value
            if self._file:
                self._file.write(line if line.endswith(b"\n") else line + b"\n")

    def runtime_line(self, text: str) -> None:
        """Lines the platform writes (START, END, REPORT, timeouts): not function output."""
        with self._lock:
            if self._file:
                self._file.write(text.encode() + b"\n")
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file:
                self._file.close()
                self._file = None


def _emf_metrics(line: bytes) -> dict[str, float] | None:
    """The metric values of an EMF line, empty for another JSON line, None if not JSON."""
    try:
        document = json.loads(line)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    metrics: dict[str, float] = {}
    aws = document.get("_aws")
    directives = aws.get("CloudWatchMetrics", []) if isinstance(aws, dict) else []
    for directive in directives:
        for metric in directive.get("Metrics", []):
            value = document.get(metric.get("Name"))
            values = value if isinstance(value, list) else [value]
            total = sum(v for v in values if isinstance(v, int | float) and not isinstance(v, bool))
            metrics[metric["Name"]] = metrics.get(metric["Name"], 0) + total
    return metrics


class Sandbox:
    def __init__(self, config: FunctionConfig, sink: LogSink, *, label: str = "sandbox") -> None:
        self.config = config
        self.sink = sink
        self.label = label
        self.invocations = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._api: RuntimeApi | None = None
        self._reader: threading.Thread | None = None
        self._tmp: Path | None = None

    # -- lifecycle -------------------------------------------------------------------
    def _environment(self, *, api: RuntimeApi, tmp: Path) -> dict[str, str]:
        env = worker.inherited_environment()
        env.update(self.config.env)
        stream = f"{datetime.now(UTC):%Y/%m/%d}/[$LATEST]{uuid.uuid4().hex}"
        task_root = Path(self.config.task_root).resolve()
        env.update({
            "AWS_LAMBDA_FUNCTION_NAME": self.config.name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.config.memory_mb),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_LOG_GROUP_NAME": self.config.log_group,
            "AWS_LAMBDA_LOG_STREAM_NAME": stream,
            # serverless.yml's LoggingConfig: the runtime's own lines are JSON too.
            "AWS_LAMBDA_LOG_FORMAT": "JSON",
            "AWS_LAMBDA_RUNTIME_API": api.address,
            "AWS_EXECUTION_ENV": f"AWS_Lambda_python{sys.version_info.major}.{sys.version_info.minor}",
            "LAMBDA_TASK_ROOT": str(task_root),
            "LAMBDA_RUNTIME_DIR": str(worker.runtime_packages()),
            "_HANDLER": self.config.handler,
            # As Lambda sets them; nothing listens there, and Sampled=0 sends nothing anyway.
            "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
            "AWS_XRAY_DAEMON_ADDRESS": "127.0.0.1:2000",
            "PYTHONPATH": worker.python_path(task_root, worker.runtime_packages()),
            "PYTHONNOUSERSITE": "1",
            # /var/task is read-only: no bytecode is written next to the code.
            "PYTHONDONTWRITEBYTECODE": "1",
            # Lambda's writable /tmp, new for each environment.
            "TMPDIR": str(tmp),
            "TZ": ":UTC",
        })
        env.setdefault("AWS_REGION", self.config.region)
        env.setdefault("AWS_DEFAULT_REGION", self.config.region)
        return env

    def _alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _start(self) -> Invocation | None:
        """Start a new environment and run its init phase; an Invocation if init failed."""
        started = time.time()
        self._api = RuntimeApi()
        self._tmp = Path(tempfile.mkdtemp(prefix=f"lambda-{self.config.name}-tmp-"))
        self._process = subprocess.Popen(
            worker.bootstrap_command(self.config.handler), cwd=self.config.task_root,
            env=self._environment(api=self._api, tmp=self._tmp), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            # Its own process group: Ctrl-C in the terminal does not reach it, and a kill
            # at the deadline takes any process the function started with it.
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._pump_logs, args=(self._process.stdout,),
                                        name=f"{self.label}-logs", daemon=True)
        self._reader.start()
        outcome = self._api.wait_init(self.config.init_timeout_s, alive=self._alive)
        if outcome is not None and outcome.kind == "ready":
            return None
        if outcome is not None:
            error = outcome.json() or {}
            status = "error"
        elif not self._alive():
            code = self._process.poll()
            error = {"errorType": "Runtime.ExitError", "errorMessage": f"Runtime exited with {code} during init"}
            status = "error"
        else:
            error = {"errorType": "Sandbox.Timedout",
                     "errorMessage": f"init did not finish in {self.config.init_timeout_s:.0f} s"}
            status = "timeout"
        self.sink.runtime_line(f"INIT_REPORT Init Duration: {(time.time() - started) * 1000:.2f} ms\t"
                               f"Phase: init\tStatus: {status}\tError Type: {error.get('errorType')}")
        self.kill()
        return Invocation(request_id="-", outcome="init_error" if status == "error" else "timeout",
                          started=started, duration_s=time.time() - started, cold_start=True, error=error)

    def _pump_logs(self, stream: IO[bytes] | None) -> None:
        if stream is None:
            return
        with stream:
            for line in iter(stream.readline, b""):
                self.sink.function_line(line)

    def kill(self) -> None:
        """SIGKILL the environment and everything it started, as Lambda does at a timeout."""
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if self._api is not None:
            self._api.close()
            self._api = None
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    close = kill

    def terminate(self) -> None:
        """SIGKILL from another thread; the owning thread sees the crash and cleans up."""
        process = self._process
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    @property
    def pid(self) -> int | None:
        """The environment's process while it runs (for measuring its CPU from outside)."""
        return self._process.pid if self._alive() and self._process is not None else None

    def prewarm(self) -> Invocation | None:
        """Run the init phase now, before any event, as provisioned concurrency does; an
        Invocation when init failed (the next invoke then starts a new environment)."""
        if self._alive():
            return None
        self.kill()
        return self._start()

    # -- invocations -----------------------------------------------------------------
    def invoke(self, event: Mapping[str, Any]) -> Invocation:
        cold = not self._alive()
        if cold:
            self.kill()
            failed_init = self._start()
            if failed_init is not None:
                return failed_init
        assert self._api is not None
        self.invocations += 1
        request_id = str(uuid.uuid4())
        started = time.time()
        deadline = time.monotonic() + self.config.timeout_s
        trace_id = f"Root=1-{int(started):08x}-{uuid.uuid4().hex[:24]};Parent={uuid.uuid4().hex[:16]};Sampled=0"
        self.sink.runtime_line(f"START RequestId: {request_id} Version: $LATEST")
        self._api.invoke(Pending(request_id=request_id, body=json.dumps(event).encode(),
                                 deadline_ms=int((started + self.config.timeout_s) * 1000),
                                 function_arn=self.config.arn, trace_id=trace_id))
        outcome = self._api.wait(deadline, alive=self._alive)
        duration = time.time() - started
        memory = self._max_memory_mb()
        result: Any = None
        error: Mapping[str, Any] | None = None
        if outcome is None and self._alive():
            self.sink.runtime_line(f"{datetime.now(UTC).isoformat()} {request_id} Task timed out after "
                                   f"{self.config.timeout_s:.2f} seconds")
            self.kill()
            status, error = "timeout", {"errorType": "Sandbox.Timedout", "errorMessage": "Task timed out"}
        elif outcome is None:
            code = self._process.poll() if self._process else None
            self.kill()
            status, error = "crash", {"errorType": "Runtime.ExitError", "errorMessage": f"Runtime exited with {code}"}
        elif outcome.kind == "response":
            status, result = "ok", _parsed(outcome)
        else:
            status, error = "error", _error(outcome)
        self.sink.runtime_line(f"END RequestId: {request_id}")
        self.sink.runtime_line(
            f"REPORT RequestId: {request_id}\tDuration: {duration * 1000:.2f} ms\t"
            f"Memory Size: {self.config.memory_mb} MB\tMax Memory Used: {memory or '?'} MB\tStatus: {status}")
        return Invocation(request_id=request_id, outcome=status, started=started, duration_s=duration,
                          cold_start=cold, result=result, error=error, max_memory_mb=memory)

    def _max_memory_mb(self) -> int | None:
        # VmHWM of the child itself (FIELD-NOTES: ru_maxrss would include the parent).
        if self._process is None:
            return None
        try:
            status = Path(f"/proc/{self._process.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
        return None


def _parsed(outcome: Outcome) -> Any:
    try:
        return outcome.json()
    except ValueError:
        return outcome.body.decode(errors="replace")


def _error(outcome: Outcome) -> dict[str, Any]:
    """Lambda's error document: errorType, errorMessage, stackTrace."""
    try:
        document = outcome.json()
    except ValueError:
        document = None
    if not isinstance(document, dict):
        document = {"errorMessage": outcome.body.decode(errors="replace")}
    document.setdefault("errorType", outcome.error_type or "Unknown")
    return document
