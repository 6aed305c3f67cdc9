"""Lambda's Runtime API for one execution environment, served on loopback.

The runtime interface client in the sandbox (``awslambdaric``, what AWS's own base images
run) talks to it exactly as it talks to Lambda:

- ``GET  /2018-06-01/runtime/invocation/next``: blocks until there is an event, then
  answers it with ``Lambda-Runtime-Aws-Request-Id``, ``Lambda-Runtime-Deadline-Ms``
  (epoch milliseconds), ``Lambda-Runtime-Invoked-Function-Arn`` and
  ``Lambda-Runtime-Trace-Id``;
- ``POST /2018-06-01/runtime/invocation/{id}/response`` and ``.../{id}/error``;
- ``POST /2018-06-01/runtime/init/error`` when the init phase (importing the handler)
  fails.

The platform side (local/sandbox.py) queues one invocation at a time with :meth:`invoke`
and waits for its outcome with :meth:`wait`. The first ``next`` request marks the end
of the init phase, as it does in Lambda.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PREFIX = "/2018-06-01/runtime"
_INVOCATION = re.compile(rf"^{PREFIX}/invocation/(?P<id>[^/]+)/(?P<kind>response|error)$")
ERROR_TYPE_HEADER = "Lambda-Runtime-Function-Error-Type"


@dataclass(frozen=True)
class Pending:
    request_id: str
    body: bytes
    deadline_ms: int
    function_arn: str
    trace_id: str


@dataclass(frozen=True)
class Outcome:
    """What the runtime posted: ``ready`` (asked for the first event), ``init_error``,
    ``response`` or ``error``; ``body`` is the posted payload."""

    kind: str
    body: bytes = b""
    error_type: str | None = None

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class RuntimeApi:
    """The server of one sandbox: ``address`` goes into ``AWS_LAMBDA_RUNTIME_API``."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: Pending | None = None  # queued, not yet handed out by `next`
        self._current: str | None = None  # request id handed out, awaiting its outcome
        self._outcome: Outcome | None = None
        self._ready = False
        self._closed = False
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the runtime client expects

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the function's log is the sandbox's stdout, not this

            def do_GET(self) -> None:
                if self.path != f"{PREFIX}/invocation/next":
                    self._answer(HTTPStatus.NOT_FOUND, b'{"errorType":"InvalidRequest"}')
                    return
                pending = api._next()
                if pending is None:  # the environment is going away: no answer
                    self.close_connection = True
                    return
                self._answer(HTTPStatus.OK, pending.body, {
                    "Lambda-Runtime-Aws-Request-Id": pending.request_id,
                    "Lambda-Runtime-Deadline-Ms": str(pending.deadline_ms),
                    "Lambda-Runtime-Invoked-Function-Arn": pending.function_arn,
                    "Lambda-Runtime-Trace-Id": pending.trace_id,
                })

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                error_type = self.headers.get(ERROR_TYPE_HEADER)
                if self.path == f"{PREFIX}/init/error":
                    api._post(None, Outcome("init_error", body, error_type))
                    self._answer(HTTPStatus.ACCEPTED, b'{"status":"OK"}')
                    return
                match = _INVOCATION.match(self.path)
                if match is None:
                    self._answer(HTTPStatus.NOT_FOUND, b'{"errorType":"InvalidRequest"}')
                elif not api._post(match["id"], Outcome(match["kind"], body, error_type)):
                    self._answer(HTTPStatus.BAD_REQUEST, b'{"errorType":"InvalidRequestID"}')
                else:
                    self._answer(HTTPStatus.ACCEPTED, b'{"status":"OK"}')

            def _answer(self, status: HTTPStatus, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                with contextlib.suppress(OSError):  # a runtime killed mid-request
                    self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="runtime-api", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    # -- the runtime's side ------------------------------------------------------------
    def _next(self) -> Pending | None:
        with self._cond:
            self._ready = True
            self._cond.notify_all()
            while self._pending is None and not self._closed:
                self._cond.wait()
            pending, self._pending = self._pending, None
            if pending is not None:
                self._current = pending.request_id
            return pending

    def _post(self, request_id: str | None, outcome: Outcome) -> bool:
        with self._cond:
            if request_id is not None:
                if request_id != self._current:
                    return False
                self._current = None
            self._outcome = outcome
            self._cond.notify_all()
            return True

    # -- the platform's side -----------------------------------------------------------
    def wait_init(self, timeout_s: float, *, alive: Any = None) -> Outcome | None:
        """``ready`` or ``init_error``; None if neither came in time or ``alive()`` went false."""
        end = time.monotonic() + timeout_s
        with self._cond:
            while True:
                if self._outcome is not None and self._outcome.kind == "init_error":
                    outcome, self._outcome = self._outcome, None
                    return outcome
                if self._ready:
                    return Outcome("ready")
                left = end - time.monotonic()
                if left <= 0 or (alive is not None and not alive()):
                    return None
                self._cond.wait(min(left, 0.05))

    def invoke(self, pending: Pending) -> None:
        with self._cond:
            self._outcome = None
            self._pending = pending
            self._cond.notify_all()

    def wait(self, deadline: float, *, alive: Any = None) -> Outcome | None:
        """The outcome of the queued invocation; None at the (monotonic) deadline or when
        ``alive()`` goes false first."""
        with self._cond:
            while self._outcome is None:
                left = deadline - time.monotonic()
                if left <= 0 or (alive is not None and not alive()):
                    # A crash may race its last post: look once more before giving up.
                    break
                self._cond.wait(min(left, 0.05))
            outcome, self._outcome = self._outcome, None
            return outcome

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
