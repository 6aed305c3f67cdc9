"""Test-side fault injection inside an invocation process (see tests/support/invoke.py).

Nothing here touches production code paths: :func:`install` wraps the warm app's
dependencies (``aggregator.lambda_app.warm_dependencies()``) from the outside, the way a test
double would be injected, and reports every step it sees to a trace file:

* ``deps.claims._client`` (the DynamoDB client inside the ClaimStore): points
  ``claims.<operation>.before`` / ``.after`` for put_item and delete_item;
* ``deps.fetch``: ``fetch.start``, then ``fetch.item`` for each result handed to the writer;
* ``deps.target``: ``publish.before``, ``publish.read`` (with the bytes read from the spool so
  far), ``publish.after``, ``target.listing``, ``target.open_object``;
* the archive spool's free-space probe: ``spool.free_space``.

A :class:`Plan` is a list of :class:`Rule` (plain JSON, so the parent process can send
it): at the ``nth`` hit of ``point`` (and the next ``times - 1`` hits; ``times=0`` means every
hit from then on) the rule acts:

* ``kill``: SIGKILL the invocation's whole process group (fetch children included), as
  Lambda does at a timeout. Nothing runs after it: no ``finally``, no release;
* ``sleep``: wait ``seconds`` (stretches a step so that random kill points land in it, or
  makes the deadline arrive mid-archive);
* ``sleep_until``: wait until ``seconds`` before the invocation's deadline;
* ``raise``: raise the error named ``error`` (see :data:`ERRORS`);
* ``full``: the spool's free-space probe answers 0 bytes (``/tmp`` is full).

``publish.read`` rules fire once ``bytes`` bytes of the archive have been read for upload.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO


@dataclass(frozen=True)
class Rule:
    point: str
    action: str  # kill | sleep | sleep_until | raise | full
    nth: int = 1
    times: int = 1  # 0: every hit from the nth on
    seconds: float = 0.0
    error: str = ""
    bytes: int = 0

    def fires(self, count: int) -> bool:
        if count < self.nth:
            return False
        return self.times == 0 or count < self.nth + self.times

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def kill_at(point: str, *, nth: int = 1, bytes: int = 0) -> Rule:
    return Rule(point, "kill", nth=nth, bytes=bytes)


def sleep_at(point: str, seconds: float, *, nth: int = 1, times: int = 0) -> Rule:
    return Rule(point, "sleep", nth=nth, times=times, seconds=seconds)


def raise_at(point: str, error: str, *, nth: int = 1, times: int = 1) -> Rule:
    return Rule(point, "raise", nth=nth, times=times, error=error)


def _client_error(code: str, status: int, operation: str, **extra: Any) -> Exception:
    from botocore.exceptions import ClientError

    response: Any = {"Error": {"Code": code, "Message": "injected by the test"},
                     "ResponseMetadata": {"HTTPStatusCode": status}, **extra}
    return ClientError(response, operation)


def _error(name: str, operation: str, kwargs: dict[str, Any]) -> Exception:
    if name == "ddb_throttle":
        return _client_error("ProvisionedThroughputExceededException", 400, operation)
    if name == "ddb_internal":
        return _client_error("InternalServerError", 500, operation)
    if name == "ddb_conflict":
        items = kwargs.get("TransactItems", [])
        return _client_error("TransactionCanceledException", 400, operation,
                             CancellationReasons=[{"Code": "TransactionConflict"} for _ in items])
    if name == "ddb_access_denied":
        return _client_error("AccessDeniedException", 400, operation)
    if name == "delivery":
        from aggregator.base.errors import DeliveryError

        return DeliveryError(f"{operation}: injected MinIO failure")
    if name == "fetch":
        from aggregator.base.errors import FetchError

        return FetchError(f"{operation}: injected fetch failure")
    if name == "oserror":
        return OSError(28, "No space left on device (injected)")
    raise ValueError(f"unknown injected error {name!r}")


ERRORS = ("ddb_throttle", "ddb_internal", "ddb_conflict", "ddb_access_denied", "delivery", "fetch", "oserror")


@dataclass
class Plan:
    rules: list[Rule] = field(default_factory=list)
    trace_fd: int | None = None
    deadline: float = 0.0  # epoch seconds, the invocation's (for sleep_until)
    counts: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_json(cls, rules: list[dict[str, Any]], *, trace_fd: int | None) -> Plan:
        return cls([Rule(**rule) for rule in rules], trace_fd=trace_fd)

    def trace(self, point: str, **info: Any) -> None:
        if self.trace_fd is None:
            return
        line = json.dumps({"t": time.time(), "pid": os.getpid(), "point": point, **info}, default=str) + "\n"
        os.write(self.trace_fd, line.encode())  # one unbuffered write: survives a SIGKILL

    def hit(self, point: str, *, operation: str = "", kwargs: dict[str, Any] | None = None,
            **info: Any) -> list[Rule]:
        """Count a hit of ``point``, trace it, act on the rules that fire; the rules the
        caller must act on itself (``full``) are returned."""
        with self._lock:
            count = self.counts[point] = self.counts.get(point, 0) + 1
        self.trace(point, n=count, **info)
        left: list[Rule] = []
        for rule in self.rules:
            if rule.point != point or rule.bytes or not rule.fires(count):
                continue
            self._act(rule, operation or point, kwargs or {}, left)
        return left

    def read_progress(self, point: str, total: int) -> None:
        """``bytes`` rules of ``point``: fire once ``total`` bytes have gone by."""
        for rule in self.rules:
            if rule.point == point and rule.bytes and total >= rule.bytes:
                key = f"{point}@{rule.bytes}"
                with self._lock:
                    done = self.counts.get(key, 0)
                    self.counts[key] = done + 1
                if done == 0:
                    self.trace(point, bytes=total)
                    self._act(rule, point, {}, [])

    def _act(self, rule: Rule, operation: str, kwargs: dict[str, Any], left: list[Rule]) -> None:
        if rule.action == "kill":
            self.trace("kill", at=rule.point)
            kill_process_group()
        elif rule.action == "sleep":
            time.sleep(rule.seconds)
        elif rule.action == "sleep_until":
            time.sleep(max(0.0, self.deadline - rule.seconds - time.time()))
        elif rule.action == "raise":
            self.trace("raise", at=rule.point, error=rule.error)
            raise _error(rule.error, operation, kwargs)
        elif rule.action == "full":
            left.append(rule)
        else:
            raise ValueError(f"unknown action {rule.action!r}")


def kill_process_group() -> None:
    """SIGKILL this process and every process of its group (fetch children)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


# -- the wrappers ------------------------------------------------------------------------------

class _PlanHolder:
    """The plan of the current invocation (a warm process serves several)."""

    def __init__(self) -> None:
        self.plan = Plan()


class _DynamoDBClient:
    """Stands in front of the ClaimStore's boto3 client."""

    _WATCHED = ("put_item", "delete_item")

    def __init__(self, real: Any, holder: _PlanHolder) -> None:
        self._real = real
        self._holder = holder

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._real, name)
        if name not in self._WATCHED:
            return attribute

        def call(**kwargs: Any) -> Any:
            plan = self._holder.plan
            plan.hit(f"claims.{name}.before", operation=name, kwargs=kwargs, items=1)
            answer = attribute(**kwargs)
            plan.hit(f"claims.{name}.after", operation=name, kwargs=kwargs, items=1)
            return answer

        return call


class _CountingReader:
    """The archive spool as the upload reads it, counting bytes."""

    def __init__(self, source: BinaryIO, holder: _PlanHolder) -> None:
        self._source = source
        self._holder = holder
        self.total = 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.total += len(data)
        self._holder.plan.read_progress("publish.read", self.total)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)


class _Target:
    def __init__(self, real: Any, holder: _PlanHolder) -> None:
        self._real = real
        self._holder = holder

    def publish(self, *, key: str, source: BinaryIO, **kwargs: Any) -> Any:
        plan = self._holder.plan
        plan.hit("publish.before", key=key, size=kwargs.get("size"))
        reader = _CountingReader(source, self._holder)
        publication = self._real.publish(key=key, source=reader, **kwargs)
        plan.hit("publish.after", key=key, outcome=publication.outcome.name)
        return publication

    def listing(self, key: str) -> Any:
        self._holder.plan.hit("target.listing", operation="HeadObject", key=key)
        return self._real.listing(key)

    def open_object(self, key: str) -> Any:
        self._holder.plan.hit("target.open_object", operation="GetObject", key=key)
        return self._real.open_object(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _wrap_fetch(real: Callable[..., Any], holder: _PlanHolder) -> Callable[..., Any]:
    @contextlib.contextmanager
    def fetch(refs: Any, **kwargs: Any) -> Iterator[Iterator[Any]]:
        plan = holder.plan
        plan.hit("fetch.start", objects=len(refs))
        with real(refs, **kwargs) as results:
            def items() -> Iterator[Any]:
                for item in results:
                    plan.hit("fetch.item", kind=type(item).__name__)
                    yield item

            yield items()

    return fetch


def _wrap_spool(holder: _PlanHolder) -> None:
    import aggregator.pipeline.batch as pipeline
    from aggregator.archive.spool import ArchiveSpool, free_bytes

    def free_space(directory: str) -> int:
        if holder.plan.hit("spool.free_space"):
            return 0
        return free_bytes(directory)

    class InjectedSpool(ArchiveSpool):
        def __init__(self, **kwargs: Any) -> None:
            kwargs.setdefault("free_space", free_space)
            super().__init__(**kwargs)

    setattr(pipeline, "ArchiveSpool", InjectedSpool)  # noqa: B010 - test-side injection, this process only


def install(deps: Any) -> _PlanHolder:
    """Wrap the warm app's dependencies; set ``holder.plan`` before each invocation."""
    holder = _PlanHolder()
    deps.claims._client = _DynamoDBClient(deps.claims._client, holder)
    deps.fetch = _wrap_fetch(deps.fetch, holder)
    deps.target = _Target(deps.target, holder)
    _wrap_spool(holder)
    return holder
