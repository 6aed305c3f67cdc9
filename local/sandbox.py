"""One Lambda execution environment: a child process that serves invocations one at a time.

The child (:mod:`local.worker`) imports the handler once and stays warm between
invocations. Each invocation gets a deadline of ``timeout_s``; when it passes, the whole
process group is SIGKILLed, as Lambda kills a timed-out sandbox, and the next invocation
starts a new one (a cold start). An exception in the handler leaves the sandbox warm,
as in Lambda's Python runtime.

The function's stdout and stderr go to a :class:`LogSink`, which keeps them in a log file
(with Lambda's START / END / REPORT lines), sums the EMF metrics found in them and counts
lines that are not one JSON object each (CONTRACT.md section 8 says every line is).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from local.json_lines import JsonLines

REPO_ROOT = Path(__file__).resolve().parent.parent
ACCOUNT_ID = "123456789012"  # moto's default account
# The SDK and tooling variables a sandbox must not inherit from the caller: the function
# gets exactly the configured environment, so it can never reach real AWS by accident.
_SCRUBBED_PREFIXES = ("AWS_", "POWERTOOLS_", "_HANDLER", "LAMBDA_")


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
        self._requests: IO[bytes] | None = None
        self._responses: JsonLines | None = None
        self._reader: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------
    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
        env.update(self.config.env)
        stream = f"{datetime.now(UTC):%Y/%m/%d}/[$LATEST]{uuid.uuid4().hex}"
        env.update({
            "AWS_LAMBDA_FUNCTION_NAME": self.config.name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.config.memory_mb),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_LOG_GROUP_NAME": self.config.log_group,
            "AWS_LAMBDA_LOG_STREAM_NAME": stream,
            "AWS_EXECUTION_ENV": f"AWS_Lambda_python{sys.version_info.major}.{sys.version_info.minor}",
            "LAMBDA_TASK_ROOT": str(self.config.task_root),
            "_HANDLER": self.config.handler,
            # As Lambda sets them; nothing listens there, and Sampled=0 sends nothing anyway.
            "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
            "AWS_XRAY_DAEMON_ADDRESS": "127.0.0.1:2000",
            "PYTHONPATH": os.pathsep.join(dict.fromkeys([str(self.config.task_root), str(REPO_ROOT)])),
        })
        env.setdefault("AWS_REGION", self.config.region)
        env.setdefault("AWS_DEFAULT_REGION", self.config.region)
        return env

    def _start(self) -> Invocation | None:
        """Start a new environment and run its init phase; an Invocation if init failed."""
        request_read, request_write = os.pipe()
        response_read, response_write = os.pipe()
        started = time.time()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-u", "-m", "local.worker", self.config.handler, str(request_read),
                 str(response_write)],
                cwd=self.config.task_root, env=self._environment(), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=(request_read, response_write),
                # Its own process group: Ctrl-C in the terminal does not reach it, and a kill
                # at the deadline takes any process the function started with it.
                start_new_session=True,
            )
        finally:
            os.close(request_read)
            os.close(response_write)
        self._requests = os.fdopen(request_write, "wb")
        self._responses = JsonLines(response_read)
        self._reader = threading.Thread(target=self._pump_logs, args=(self._process.stdout,),
                                        name=f"{self.label}-logs", daemon=True)
        self._reader.start()
        message = self._read_response(time.monotonic() + self.config.init_timeout_s)
        if message is not None and message.get("type") == "ready":
            return None
        outcome = "init_error" if message is not None else "timeout"
        error = message or {"errorType": "InitTimeout",
                            "errorMessage": f"init did not finish in {self.config.init_timeout_s:.0f} s"}
        self.sink.runtime_line(f"INIT_REPORT Init Duration: {(time.time() - started) * 1000:.2f} ms "
                               f"Phase: init Status: {outcome} {error.get('errorType')}: {error.get('errorMessage')}")
        self.kill()
        return Invocation(request_id="-", outcome=outcome, started=started, duration_s=time.time() - started,
                          cold_start=True, error=error)

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
        if self._requests is not None:
            with contextlib.suppress(OSError):
                self._requests.close()
            self._requests = None
        if self._responses is not None:
            self._responses.close()
            self._responses = None
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None

    close = kill

    def terminate(self) -> None:
        """SIGKILL from another thread; the owning thread sees the crash and cleans up."""
        process = self._process
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    # -- invocations -----------------------------------------------------------------
    def invoke(self, event: Mapping[str, Any]) -> Invocation:
        cold = self._process is None or self._process.poll() is not None
        if cold:
            self.kill()
            failed_init = self._start()
            if failed_init is not None:
                return failed_init
        assert self._process is not None and self._requests is not None
        self.invocations += 1
        request_id = str(uuid.uuid4())
        started = time.time()
        deadline = time.monotonic() + self.config.timeout_s
        deadline_ms = int((started + self.config.timeout_s) * 1000)
        context = {
            "aws_request_id": request_id,
            "function_name": self.config.name,
            "function_version": "$LATEST",
            "invoked_function_arn": self.config.arn,
            "memory_limit_in_mb": str(self.config.memory_mb),
            "log_group_name": self.config.log_group,
            "log_stream_name": "local",
            "deadline_ms": deadline_ms,
        }
        self.sink.runtime_line(f"START RequestId: {request_id} Version: $LATEST")
        try:
            trace_id = f"Root=1-{int(started):08x}-{uuid.uuid4().hex[:24]};Parent={uuid.uuid4().hex[:16]};Sampled=0"
            self._requests.write(json.dumps({"event": event, "context": context, "trace_id": trace_id}).encode()
                                 + b"\n")
            self._requests.flush()
            message = self._read_response(deadline)
        except BrokenPipeError:
            message = {}
        duration = time.time() - started
        memory = self._max_memory_mb()
        if message is None:
            self.sink.runtime_line(f"{datetime.now(UTC).isoformat()} {request_id} Task timed out after "
                                   f"{self.config.timeout_s:.2f} seconds")
            self.kill()
            outcome, result, error = "timeout", None, {"errorType": "Sandbox.Timedout",
                                                       "errorMessage": "Task timed out"}
        elif not message:
            code = self._process.poll() if self._process else None
            self.kill()
            outcome, result, error = "crash", None, {"errorType": "Runtime.ExitError",
                                                     "errorMessage": f"Runtime exited with {code}"}
        elif message.get("type") == "result":
            outcome, result, error = "ok", message.get("result"), None
        else:
            outcome, result, error = "error", None, message
        self.sink.runtime_line(f"END RequestId: {request_id}")
        self.sink.runtime_line(
            f"REPORT RequestId: {request_id}\tDuration: {duration * 1000:.2f} ms\t"
            f"Memory Size: {self.config.memory_mb} MB\tMax Memory Used: {memory or '?'} MB\tStatus: {outcome}")
        return Invocation(request_id=request_id, outcome=outcome, started=started, duration_s=duration,
                          cold_start=cold, result=result, error=error, max_memory_mb=memory)

    def _read_response(self, deadline: float) -> dict[str, Any] | None:
        assert self._responses is not None
        return self._responses.read(deadline)

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
