"""The child side of a sandbox: ``python -m local.worker HANDLER REQUEST_FD RESPONSE_FD``.

Like a warm Lambda execution environment it imports the handler once (the init phase),
then serves invocations one at a time. Requests and responses are JSON lines on two
dedicated pipes, so the function keeps stdout and stderr for its own log lines, as in
Lambda. It exits when the request pipe closes: a runner that dies takes its workers
with it.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, BinaryIO


class LambdaContext:
    """The attributes and method of the Python runtime's context object.

    ``memory_limit_in_mb`` is a string, as the real runtime (and ``serverless invoke
    local``) hands it over: code that does arithmetic on it must convert it.
    """

    def __init__(self, *, aws_request_id: str, function_name: str, function_version: str,
                 invoked_function_arn: str, memory_limit_in_mb: str, log_group_name: str,
                 log_stream_name: str, deadline_ms: int) -> None:
        self.aws_request_id = aws_request_id
        self.function_name = function_name
        self.function_version = function_version
        self.invoked_function_arn = invoked_function_arn
        self.memory_limit_in_mb = memory_limit_in_mb
        self.log_group_name = log_group_name
        self.log_stream_name = log_stream_name
        self.identity = None
        self.client_context = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


def load_handler(spec: str) -> Callable[[Any, Any], Any]:
    """``module.function`` as Lambda's ``_HANDLER`` names it (the module may be dotted)."""
    module_name, _, function_name = spec.rpartition(".")
    if not module_name:
        raise ValueError(f"handler {spec!r} is not of the form module.function")
    function = getattr(importlib.import_module(module_name), function_name)
    if not callable(function):
        raise TypeError(f"{spec} is not callable")
    return function  # type: ignore[no-any-return]


def _error(exc: BaseException) -> dict[str, Any]:
    # Lambda's error response: errorType, errorMessage, stackTrace.
    return {
        "errorType": type(exc).__name__,
        "errorMessage": str(exc),
        "stackTrace": traceback.format_exception(exc),
    }


def _send(pipe: BinaryIO, message: dict[str, Any]) -> None:
    pipe.write(json.dumps(message).encode() + b"\n")
    pipe.flush()


def serve(spec: str, requests: BinaryIO, responses: BinaryIO) -> int:
    try:
        handler = load_handler(spec)
    except BaseException as e:  # any failure of the init phase is reported, as Lambda does
        _send(responses, {"type": "init_error", **_error(e)})
        return 1
    _send(responses, {"type": "ready"})
    for line in requests:
        request = json.loads(line)
        context = LambdaContext(**request["context"])
        # The runtime sets the invocation's trace header in the environment, where the
        # X-Ray SDK (Powertools Tracer) looks for it; without it the SDK logs plain-text
        # warnings that a real Lambda never shows.
        os.environ["_X_AMZN_TRACE_ID"] = request["trace_id"]
        try:
            result = handler(request["event"], context)
            payload = {"type": "result", "result": result}
            encoded = json.dumps(payload)  # a result Lambda could not serialise is an error there too
        except Exception as e:
            encoded = json.dumps({"type": "error", **_error(e)})
        sys.stdout.flush()
        sys.stderr.flush()
        responses.write(encoded.encode() + b"\n")
        responses.flush()
    return 0


def main(argv: list[str]) -> int:
    spec, request_fd, response_fd = argv[0], int(argv[1]), int(argv[2])
    with os.fdopen(request_fd, "rb") as requests, os.fdopen(response_fd, "wb") as responses:
        return serve(spec, requests, responses)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
