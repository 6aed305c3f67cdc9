"""Real invocations of ``handler.handler`` in a child process that a test may SIGKILL.

The parent side (:class:`Function`) starts ``python -u -m tests.support.invoke`` in its own
session with exactly the environment given (real clients are built from it: moto for S3,
DynamoDB and Secrets Manager, the MinIO secret naming SeaweedFS), waits for its init phase
(``warm_dependencies()`` builds settings and clients, as a cold start does, then
:func:`tests.support.faults.install` wraps the dependencies), then sends invocations::

    with Function(env, log_dir=tmp_path) as fn:
        result = fn.invoke(event, timeout_s=4, plan=[kill_at("publish.after")])
        assert result.killed

Each invocation gets a Lambda-like context whose deadline is ``timeout_s`` after the child
received the request. ``kill_after=seconds`` makes the *parent* SIGKILL the process group
that long after the handler started (random kill points); plan rules make the child kill
itself at an exact step. Past the deadline (plus ``grace_s``) the parent SIGKILLs it, like
Lambda. The child appends one JSON line per step to a trace file with single unbuffered
writes, so the trace of a killed invocation is complete up to the kill.

After the handler returns, the child reports the threads and child processes it still has
beyond those it had before the invocation (after a short grace for the fetch engine's
event loops to wind down): a leak check.

stdout and stderr are the function's log streams, kept in files; each result carries the
lines written during its invocation.
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from local.json_lines import JsonLines
from tests.support.faults import Rule

REPO_ROOT = Path(__file__).resolve().parents[2]
FUNCTION_NAME = "aggregator"
REGION = "eu-west-2"
ACCOUNT = "123456789012"
_LEAK_GRACE_S = 3.0


@dataclass
class InvocationResult:
    outcome: str  # ok | error | killed | timeout | crashed
    response: Any = None
    error: dict[str, Any] | None = None
    started: float = 0.0  # epoch seconds, when the handler was called (0: never)
    deadline: float = 0.0  # epoch seconds: the context's deadline
    duration_s: float = 0.0
    trace: list[dict[str, Any]] = field(default_factory=list)
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    leaks: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None

    @property
    def killed(self) -> bool:
        return self.outcome in ("killed", "timeout")

    @property
    def failed_ids(self) -> list[str]:
        if not isinstance(self.response, dict):
            return []
        return [item["itemIdentifier"] for item in self.response.get("batchItemFailures", [])]

    @property
    def points(self) -> list[str]:
        return [entry["point"] for entry in self.trace]

    def last_step(self) -> str:
        """The last step the trace shows (where a kill landed)."""
        meaningful = [p for p in self.points if p not in ("kill", "publish.read")]
        return meaningful[-1] if meaningful else "before handler"

    def log_lines(self) -> list[str]:
        return self.stdout + self.stderr


class FunctionError(RuntimeError):
    """The child could not be started or did not answer as expected."""


def lambda_env(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` plus what the Lambda runtime sets, with nothing inherited from the caller's
    AWS or Powertools settings (the function must get exactly what the test gives it)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "POWERTOOLS_", "LAMBDA_", "_HANDLER", "_X_AMZN"))
           and k not in ("USE_MOTO", "ENVIRONMENT", "LOG_LEVEL")}
    env.update({
        "AWS_LAMBDA_FUNCTION_NAME": FUNCTION_NAME,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{FUNCTION_NAME}",
        "AWS_LAMBDA_LOG_STREAM_NAME": "tests",
        "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
        "AWS_XRAY_DAEMON_ADDRESS": "127.0.0.1:2000",
        "_X_AMZN_TRACE_ID": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Parent={uuid.uuid4().hex[:16]};"
                            "Sampled=0",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "PYTHONPATH": str(REPO_ROOT),
    })
    env.update(base)
    return env


class Function:
    """One execution environment: a child process serving invocations one at a time."""

    def __init__(self, env: Mapping[str, str], *, log_dir: Path, name: str = "fn", warm_up: bool = True,
                 sdk_debug: bool = False) -> None:
        self.env = lambda_env(env)
        self.log_dir = Path(log_dir)
        self.name = f"{name}-{uuid.uuid4().hex[:6]}"
        self.warm_up = warm_up
        self.sdk_debug = sdk_debug
        self.process: subprocess.Popen[bytes] | None = None
        self.init_error: dict[str, Any] | None = None
        self._requests: Any = None
        self._responses: JsonLines | None = None
        self.trace_path = self.log_dir / f"{self.name}.trace.jsonl"
        self.stdout_path = self.log_dir / f"{self.name}.stdout"
        self.stderr_path = self.log_dir / f"{self.name}.stderr"

    # -- life cycle -----------------------------------------------------------------------
    def start(self, *, timeout_s: float = 30.0) -> Function:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        request_read, request_write = os.pipe()
        response_read, response_write = os.pipe()
        options = json.dumps({"warm_up": self.warm_up, "sdk_debug": self.sdk_debug,
                              "trace": str(self.trace_path)})
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            try:
                self.process = subprocess.Popen(
                    [sys.executable, "-u", "-m", "tests.support.invoke", str(request_read), str(response_write),
                     options],
                    cwd=REPO_ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                    pass_fds=(request_read, response_write), start_new_session=True)
            finally:
                os.close(request_read)
                os.close(response_write)
        self._requests = os.fdopen(request_write, "wb")
        self._responses = JsonLines(response_read)
        message = self._read(time.monotonic() + timeout_s)
        if message is None or message.get("type") not in ("ready", "init_error"):
            self.kill()
            raise FunctionError(f"{self.name} did not start: {message!r}; stderr: {self._tail(self.stderr_path)}")
        if message["type"] == "init_error":
            self.init_error = message
        return self

    def kill(self) -> None:
        """SIGKILL the child's whole process group (its fetch processes too)."""
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def close(self) -> None:
        if self.process is not None:
            if self._requests is not None:
                with contextlib.suppress(OSError):
                    self._requests.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
            self.kill()
            self.process = None
        if self._responses is not None:
            self._responses.close()
            self._responses = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> Function:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    # -- invocations ----------------------------------------------------------------------
    def invoke(self, event: Mapping[str, Any], *, timeout_s: float, plan: Sequence[Rule] = (),
               kill_after: float | None = None, grace_s: float = 5.0, request_id: str | None = None
               ) -> InvocationResult:
        if self.init_error is not None:
            return InvocationResult(outcome="error", error=self.init_error)
        if not self.alive:
            raise FunctionError(f"{self.name} is not running")
        assert self._requests is not None and self.process is not None
        trace_offset = self.trace_path.stat().st_size if self.trace_path.exists() else 0
        out_offset, err_offset = self.stdout_path.stat().st_size, self.stderr_path.stat().st_size
        request = {"event": event, "timeout_s": timeout_s, "plan": [rule.to_json() for rule in plan],
                   "request_id": request_id or str(uuid.uuid4())}
        sent = time.monotonic()
        self._requests.write(json.dumps(request).encode() + b"\n")
        self._requests.flush()
        killer: threading.Thread | None = None
        if kill_after is not None:
            killer = threading.Thread(target=self._kill_after_start, args=(trace_offset, kill_after), daemon=True)
            killer.start()
        message = self._read(sent + timeout_s + grace_s)
        timed_out = message is None
        if timed_out:
            self.kill()
        if killer is not None:
            killer.join()
        if message is None or not message:
            code = self.process.wait(timeout=30)
            trace = self._trace(trace_offset)
            started = next((e for e in trace if e["point"] == "handler.start"), {})
            outcome = "timeout" if timed_out else "killed" if code == -signal.SIGKILL else "crashed"
            result = InvocationResult(outcome=outcome, started=started.get("t", 0.0),
                                      deadline=started.get("deadline", 0.0), duration_s=time.monotonic() - sent,
                                      trace=trace, exit_code=code)
        else:
            trace = self._trace(trace_offset)
            result = InvocationResult(
                outcome="ok" if message["type"] == "result" else "error",
                response=message.get("result"), error=message if message["type"] != "result" else None,
                started=message.get("started", 0.0), deadline=message.get("deadline", 0.0),
                duration_s=time.monotonic() - sent, trace=trace, leaks=message.get("leaks", {}))
        result.stdout = self._lines(self.stdout_path, out_offset)
        result.stderr = self._lines(self.stderr_path, err_offset)
        return result

    def _kill_after_start(self, trace_offset: int, delay: float) -> None:
        """Wait for the handler to start, then ``delay`` seconds, then SIGKILL the group."""
        limit = time.monotonic() + 30
        while time.monotonic() < limit:
            if any(e["point"] == "handler.start" for e in self._trace(trace_offset)):
                break
            if not self.alive:
                return
            time.sleep(0.002)
        time.sleep(delay)
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)

    # -- pipes and files ------------------------------------------------------------------
    def _read(self, deadline: float) -> dict[str, Any] | None:
        assert self._responses is not None
        return self._responses.read(deadline)

    def _trace(self, offset: int) -> list[dict[str, Any]]:
        if not self.trace_path.exists():
            return []
        with open(self.trace_path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
        entries = []
        for line in data.splitlines():
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
        return entries

    @staticmethod
    def _lines(path: Path, offset: int) -> list[str]:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", "replace").splitlines()

    @staticmethod
    def _tail(path: Path) -> str:
        return "\n".join(path.read_text(errors="replace").splitlines()[-20:]) if path.exists() else ""


# --- the child -------------------------------------------------------------------------------


class LambdaContext:
    """What the Python runtime passes: the attributes the contract names, and the rest."""

    def __init__(self, *, request_id: str, deadline_ms: int) -> None:
        self.aws_request_id = request_id
        self.function_name = FUNCTION_NAME
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{FUNCTION_NAME}"
        self.memory_limit_in_mb = "1024"
        self.log_group_name = f"/aws/lambda/{FUNCTION_NAME}"
        self.log_stream_name = "tests"
        self.identity = None
        self.client_context = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


def _threads() -> list[str]:
    """Names of this process's OS threads but the main one (CRT threads are native)."""
    names = []
    for tid in os.listdir("/proc/self/task"):
        if int(tid) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            names.append(Path(f"/proc/self/task/{tid}/comm").read_text().strip())
    return sorted(names)


def _children() -> list[int]:
    pids: list[int] = []
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in Path(f"/proc/self/task/{tid}/children").read_text().split()]
    return pids


def _leaks(baseline: list[str]) -> dict[str, Any]:
    """Threads and child processes beyond the baseline, after a short grace."""
    limit = time.monotonic() + _LEAK_GRACE_S
    while True:
        threads = _threads()
        for name in baseline:
            if name in threads:
                threads.remove(name)
        children = _children()
        if (not threads and not children) or time.monotonic() > limit:
            return {"threads": threads, "children": children,
                    "python_threads": [t.name for t in threading.enumerate() if t is not threading.main_thread()]}
        time.sleep(0.05)


def _child(argv: list[str]) -> int:
    request_fd, response_fd, options = int(argv[0]), int(argv[1]), json.loads(argv[2])
    requests = os.fdopen(request_fd, "rb")
    responses = os.fdopen(response_fd, "wb")
    trace_fd = os.open(options["trace"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def send(message: dict[str, Any]) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        responses.write(json.dumps(message, default=str).encode() + b"\n")
        responses.flush()

    holder = None
    try:
        import handler as handler_module  # the Lambda runtime's import of handler.handler
        from aggregator import lambda_app
        from tests.support import faults

        if options.get("warm_up", True):
            holder = faults.install(lambda_app.warm_dependencies())
        if options.get("sdk_debug"):
            import logging

            for name in ("botocore", "boto3", "urllib3"):
                logging.getLogger(name).setLevel(logging.DEBUG)
    except BaseException as e:
        send({"type": "init_error", "errorType": type(e).__name__, "errorMessage": str(e)})
        return 1
    send({"type": "ready"})
    for line in requests:
        request = json.loads(line)
        baseline = _threads()
        plan = faults.Plan.from_json(request["plan"], trace_fd=trace_fd)
        if holder is not None:
            holder.plan = plan
        started = time.time()
        deadline = started + float(request["timeout_s"])
        context = LambdaContext(request_id=request["request_id"], deadline_ms=int(deadline * 1000))
        plan.deadline = deadline
        plan.trace("handler.start", deadline=deadline)
        try:
            result = handler_module.handler(request["event"], context)
            message: dict[str, Any] = {"type": "result", "result": result}
        except Exception as e:
            message = {"type": "error", "errorType": type(e).__name__, "errorMessage": str(e)}
        plan.trace("handler.end")
        message.update(started=started, deadline=deadline, leaks=_leaks(baseline))
        send(message)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
