"""Lambda's SQS event source mapping, emulated on one machine.

Each poller (``concurrency`` of them, one warm sandbox each) does what Lambda's pollers do:

1. long-poll the queue (``WaitTimeSeconds``, at most 10 messages per call) until at
   least one message arrives;
2. keep receiving until the batch holds ``batch_size`` messages, the batching window
   (counted from the first message) has passed, or the event would exceed 6 MB;
3. invoke the function with the SQS event and a context counting down from the timeout,
   SIGKILLing it at the deadline;
4. delete what was acknowledged: every message when the invocation returned and
   reported no failures, every message but the ``batchItemFailures`` otherwise, none
   when it raised, crashed, timed out or returned a malformed failure list.

Steps 1-2 and 3-4 overlap, as in Lambda, where the pollers are not the function's
instances and outnumber ``maximumConcurrency``: while the sandbox runs one batch, its
poller already gathers the next (one batch ahead at most), which is invoked as soon as the
sandbox is free. A poller that gathered only after each invocation would make every
message that arrived meanwhile wait for that invocation plus a whole batching window.

Nothing is done to messages that were not deleted: they reappear when their visibility
timeout ends, with a higher ApproximateReceiveCount, and the queue's redrive policy
moves them to the DLQ after ``maxReceiveCount`` receives, exactly as in AWS.

The run stops when the queue (visible, in flight and delayed messages) has stayed empty
for ``idle_s`` with no poller holding a batch, or after ``max_s``. Idle detection can be
held back (``start(armed=False)`` then ``arm()``) while a producer is still sending.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local import sqs_event
from local.sandbox import FunctionConfig, Invocation, LogSink, Sandbox

LAMBDA_PAYLOAD_LIMIT = 6 * 1024 * 1024


@dataclass(frozen=True)
class MappingConfig:
    """The event source mapping's settings, validated as Lambda validates them."""

    queue_url: str
    queue_arn: str
    region: str
    batch_size: int = 10
    batching_window_s: float = 0.0
    report_batch_item_failures: bool = True  # functionResponseType: ReportBatchItemFailures
    poll_wait_s: int = 20
    max_payload_bytes: int = LAMBDA_PAYLOAD_LIMIT

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= 10_000:
            raise ValueError("batch size must be from 1 to 10000")
        if self.batch_size > 10 and self.batching_window_s < 1:
            raise ValueError("a batch size above 10 needs a batching window of at least 1 second (as in Lambda)")
        if not 0 <= self.batching_window_s <= 300:
            raise ValueError("the batching window must be from 0 to 300 seconds")
        if not 0 <= self.poll_wait_s <= 20:
            raise ValueError("the long-poll wait must be from 0 to 20 seconds")


@dataclass(frozen=True)
class StopPolicy:
    idle_s: float = 10.0
    max_s: float = 900.0


@dataclass(frozen=True)
class Delivered:
    """One message as one invocation saw it, with when it reached the queue and the poller.

    ``sent`` and ``first_received`` are SQS's ``SentTimestamp`` and
    ``ApproximateFirstReceiveTimestamp`` (epoch seconds, millisecond resolution);
    ``received`` is when this poller's ReceiveMessage returned it (this machine's clock).
    """

    message_id: str
    body: str
    receive_count: int
    sent: float | None = None
    first_received: float | None = None
    received: float | None = None


@dataclass(frozen=True)
class InvocationRecord:
    poller: int
    invocation: Invocation
    messages: tuple[Delivered, ...]
    acked: tuple[str, ...]  # message ids deleted from the queue
    failed: tuple[str, ...]  # message ids left to reappear
    finished: float  # epoch seconds, after the deletes
    response_problem: str | None = None  # why a returned response failed the whole batch
    delete_failures: int = 0
    # When the poller, its batch complete, called the function (epoch seconds). On a cold
    # start the init phase runs between this and ``invocation.started``; warm, they agree.
    invoked: float = 0.0

    @property
    def handler_start(self) -> float:
        return self.invocation.started

    @property
    def ended(self) -> float:
        """When the function's response (or its failure) came back."""
        return self.invocation.started + self.invocation.duration_s


@dataclass
class RunSummary:
    records: list[InvocationRecord]
    stop_reason: str
    started: float
    finished: float
    metrics: dict[str, float] = field(default_factory=dict)  # EMF metric sums from the function's log
    log_lines: int = 0
    non_json_lines: int = 0
    non_json_examples: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # pollers that died, with why

    @property
    def outcomes(self) -> Counter[str]:
        return Counter(r.invocation.outcome for r in self.records)

    @property
    def messages_received(self) -> int:
        return sum(len(r.messages) for r in self.records)

    @property
    def messages_acked(self) -> int:
        return sum(len(r.acked) for r in self.records)

    @property
    def messages_failed(self) -> int:
        return sum(len(r.failed) for r in self.records)


def interpret_response(ids: Sequence[str], invocation: Invocation, *,
                       report_failures: bool) -> tuple[set[str], set[str], str | None]:
    """(acknowledged ids, failed ids, problem): how Lambda reads a batch's outcome.

    With ReportBatchItemFailures, a null/empty response or an empty/null failure list is
    a complete success; an item without a valid ``itemIdentifier`` of this batch makes
    the whole batch fail.
    """
    everything = set(ids)
    if not invocation.ok:
        return set(), everything, None
    if not report_failures:
        return everything, set(), None
    result = invocation.result
    if result is None or result == {} or result == "":
        return everything, set(), None
    if not isinstance(result, dict):
        return set(), everything, f"response is a {type(result).__name__}, not an object"
    failures = result.get("batchItemFailures")
    if failures is None or failures == []:
        return everything, set(), None
    if not isinstance(failures, list):
        return set(), everything, "batchItemFailures is not a list"
    failed: set[str] = set()
    for item in failures:
        identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
        if not isinstance(identifier, str) or not identifier or identifier not in everything:
            return set(), everything, f"invalid batch item failure {item!r}"
        failed.add(identifier)
    return everything - failed, failed, None


def _epoch_ms(value: str | None) -> float | None:
    """An SQS timestamp attribute (epoch milliseconds, as a string) in epoch seconds."""
    return int(value) / 1000 if value else None


class _Poller(threading.Thread):
    def __init__(self, index: int, runner: EventSourceRunner) -> None:
        super().__init__(name=f"poller-{index}", daemon=True)
        self.index = index
        self.runner = runner
        self.mapping = runner.mapping
        self.sandbox = Sandbox(runner.function, runner.sink, label=f"sandbox-{index}")
        self._gathering = False  # holding received messages not yet handed to the sandbox
        self._carry: list[dict[str, Any]] = []
        # The sandbox is free (1) or running a batch (0); a gathered batch waits for it here.
        self._sandbox_free = threading.Semaphore(1)
        self._invoking = False
        self._handoff: queue.Queue[list[dict[str, Any]] | None] = queue.Queue(maxsize=1)
        self._received_at: dict[str, float] = {}  # receipt handle -> when ReceiveMessage returned it
        self.warm = threading.Event()  # set once polling starts (after the init phase, when provisioned)
        self.warmup: Invocation | None = None  # the warm-up invocation's outcome, when there was one

    def run(self) -> None:
        try:
            if self.runner.provisioned:
                self.sandbox.prewarm()
            if self.runner.warmup is not None:
                self.warmup = self.sandbox.invoke(self.runner.warmup(self.index))
            self.warm.set()
        except Exception as e:  # a poller that cannot go on stops the run, loudly
            self.runner.fail(f"{self.name}: {e.__class__.__name__}: {e}")
            self.sandbox.close()
            return
        invoker = threading.Thread(target=self._invoke_handed_off, name=f"{self.name}-invoke", daemon=True)
        invoker.start()
        try:
            while not self.runner.stopping.is_set():
                batch = self._collect()
                if batch and self._wait_for_the_sandbox():
                    self._invoking = True
                    self._handoff.put(batch)
                # Not invoked when the run stops first: those messages come back after their
                # visibility timeout, as with any poller that goes away.
                self._gathering = bool(self._carry)
        except Exception as e:
            self.runner.fail(f"{self.name}: {e.__class__.__name__}: {e}")
        finally:
            self._handoff.put(None)
            invoker.join()
            self.sandbox.close()

    @property
    def busy(self) -> bool:
        """Holding a batch, gathering or in the sandbox: the run is not idle."""
        return self._gathering or self._invoking

    def _wait_for_the_sandbox(self) -> bool:
        """Whether the sandbox is ours for the next batch (never once the run stops)."""
        while not self._sandbox_free.acquire(timeout=0.1):
            if self.runner.stopping.is_set():
                return False
        if self.runner.stopping.is_set():
            self._sandbox_free.release()
            return False
        return True

    def _invoke_handed_off(self) -> None:
        while (batch := self._handoff.get()) is not None:
            try:
                if not self.runner.stopping.is_set():  # aborted meanwhile: no fresh sandbox
                    self._invoke(batch)
            except Exception as e:
                self.runner.fail(f"{self.name}: {e.__class__.__name__}: {e}")
            finally:
                self._invoking = False
                self._sandbox_free.release()

    def _receive(self, *, count: int, wait: int) -> list[dict[str, Any]]:
        response = self.runner.sqs.receive_message(
            QueueUrl=self.mapping.queue_url, MaxNumberOfMessages=min(10, count), WaitTimeSeconds=wait,
            MessageSystemAttributeNames=sqs_event.SYSTEM_ATTRIBUTES,
            MessageAttributeNames=sqs_event.MESSAGE_ATTRIBUTES,
        )
        received = time.time()
        messages = list(response.get("Messages", []))
        for message in messages:
            self._received_at[message["ReceiptHandle"]] = received
        return messages

    def _collect(self) -> list[dict[str, Any]]:
        records, self._carry = self._carry, []
        size = sqs_event.event_size(records)
        window_end = time.monotonic() + self.mapping.batching_window_s
        while len(records) < self.mapping.batch_size and not self.runner.stopping.is_set():
            wanted = self.mapping.batch_size - len(records)
            if not records:
                messages = self._receive(count=wanted, wait=self.mapping.poll_wait_s)
                if not messages:
                    return []
                self._gathering = True
                window_end = time.monotonic() + self.mapping.batching_window_s
            else:
                remaining = window_end - time.monotonic()
                if remaining <= 0:
                    break
                messages = self._receive(count=wanted, wait=min(20, int(remaining)))
                if not messages:
                    if int(remaining) == 0:  # a short poll came back empty: do not spin
                        time.sleep(min(remaining, 0.1))
                    continue
            for message in messages:
                entry = sqs_event.record(message, queue_arn=self.mapping.queue_arn, region=self.mapping.region)
                entry_size = len(json.dumps(entry)) + 2
                if records and size + entry_size > self.mapping.max_payload_bytes:
                    self._carry.append(entry)  # next batch: Lambda never splits a message
                else:
                    records.append(entry)
                    size += entry_size
            if self._carry:
                break
        return records

    def _invoke(self, records: list[dict[str, Any]]) -> None:
        invoked = time.time()
        invocation = self.sandbox.invoke(sqs_event.event(records))
        ids = [r["messageId"] for r in records]
        acked, failed, problem = interpret_response(
            ids, invocation, report_failures=self.mapping.report_batch_item_failures)
        delete_failures = self._delete_acked([r for r in records if r["messageId"] in acked])
        record = InvocationRecord(
            poller=self.index,
            invocation=invocation,
            messages=tuple(self._delivered(r) for r in records),
            acked=tuple(i for i in ids if i in acked),
            failed=tuple(i for i in ids if i in failed),
            finished=time.time(),
            response_problem=problem,
            delete_failures=delete_failures,
            invoked=invoked,
        )
        self.runner.record(record)

    def _delivered(self, entry: Mapping[str, Any]) -> Delivered:
        attributes = entry["attributes"]
        return Delivered(entry["messageId"], entry["body"], int(attributes.get("ApproximateReceiveCount", 0)),
                         sent=_epoch_ms(attributes.get("SentTimestamp")),
                         first_received=_epoch_ms(attributes.get("ApproximateFirstReceiveTimestamp")),
                         received=self._received_at.pop(entry["receiptHandle"], None))

    def _delete_acked(self, records: list[dict[str, Any]]) -> int:
        failures = 0
        for start in range(0, len(records), 10):
            chunk = records[start:start + 10]
            response = self.runner.sqs.delete_message_batch(QueueUrl=self.mapping.queue_url, Entries=[
                {"Id": str(n), "ReceiptHandle": r["receiptHandle"]} for n, r in enumerate(chunk)])
            failures += len(response.get("Failed", []))
        return failures


class EventSourceRunner:
    """``concurrency`` pollers with a sandbox each, and a monitor that decides when to stop."""

    def __init__(self, sqs: Any, mapping: MappingConfig, function: FunctionConfig, *, concurrency: int = 1,
                 stop: StopPolicy = StopPolicy(), log_path: Path | None = None,
                 on_invocation: Callable[[InvocationRecord], None] | None = None,
                 monitor_interval_s: float = 0.5, provisioned: bool = False,
                 warmup: Callable[[int], Mapping[str, Any]] | None = None) -> None:
        """``provisioned``: each poller's sandbox runs its init phase before the first poll,
        as with provisioned concurrency; by default the first invocation is a cold start.
        ``warmup(poller index)``: an event each sandbox is invoked with once before the first
        poll, outside the queue and the records (a benchmark's warm-up invocation)."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.sqs = sqs
        self.mapping = mapping
        self.function = function
        self.concurrency = concurrency
        self.policy = stop
        self.sink = LogSink(log_path)
        self.on_invocation = on_invocation
        self.monitor_interval_s = monitor_interval_s
        self.provisioned = provisioned
        self.warmup = warmup
        self.stopping = threading.Event()
        self._armed = threading.Event()
        self._lock = threading.Lock()
        self._records: list[InvocationRecord] = []
        self._errors: list[str] = []
        self._stop_reason = "stopped"
        self._pollers: list[_Poller] = []
        self._monitor: threading.Thread | None = None
        self._started = 0.0

    # -- called by pollers --------------------------------------------------------------
    def record(self, record: InvocationRecord) -> None:
        with self._lock:
            self._records.append(record)
        if self.on_invocation is not None:
            self.on_invocation(record)

    def fail(self, reason: str) -> None:
        with self._lock:
            self._errors.append(reason)
        self.stop("poller failed")

    # -- control ------------------------------------------------------------------------
    def start(self, *, armed: bool = True) -> EventSourceRunner:
        self._started = time.time()
        if armed:
            self._armed.set()
        self._pollers = [_Poller(i, self) for i in range(self.concurrency)]
        for poller in self._pollers:
            poller.start()
        self._monitor = threading.Thread(target=self._watch, name="monitor", daemon=True)
        self._monitor.start()
        return self

    @property
    def pollers(self) -> tuple[_Poller, ...]:
        return tuple(self._pollers)

    def wait_warm(self, timeout: float | None = None) -> bool:
        """Whether every poller is polling (with ``provisioned``: its init phase done) in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return all(p.warm.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
                   for p in self._pollers)

    def arm(self) -> None:
        """Let the run stop once the queue stays empty (the producer is done)."""
        self._armed.set()

    def stop(self, reason: str = "stopped") -> None:
        with self._lock:
            if not self.stopping.is_set():
                self._stop_reason = reason
                self.stopping.set()

    def abort(self) -> None:
        """Stop now: SIGKILL every sandbox mid-invocation (their messages stay in the queue)."""
        self.stop("aborted")
        for poller in self._pollers:
            poller.sandbox.terminate()

    def wait(self, timeout: float | None = None) -> RunSummary:
        """Wait for the run to end (and every sandbox to be gone); the summary."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._monitor is not None:
            self._monitor.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        for poller in self._pollers:
            # A poller in a long poll returns within poll_wait_s; one mid-invocation within
            # the function's timeout.
            poller.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self.sink.close()
        with self._lock:
            return RunSummary(
                records=list(self._records), stop_reason=self._stop_reason, started=self._started,
                finished=time.time(), metrics=dict(self.sink.metrics), log_lines=self.sink.lines,
                non_json_lines=self.sink.non_json_lines, non_json_examples=list(self.sink.non_json_examples),
                errors=list(self._errors),
            )

    def run(self) -> RunSummary:
        self.start()
        try:
            return self.wait()
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> EventSourceRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.stopping.is_set() or any(p.is_alive() for p in self._pollers):
            self.abort()
            for poller in self._pollers:
                poller.join(timeout=30)

    # -- the monitor ----------------------------------------------------------------------
    def queue_depth(self) -> Mapping[str, int]:
        attributes = self.sqs.get_queue_attributes(QueueUrl=self.mapping.queue_url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed"])["Attributes"]
        return {name: int(value) for name, value in attributes.items()}

    def _watch(self) -> None:
        idle_since: float | None = None
        while not self.stopping.wait(self.monitor_interval_s):
            now = time.monotonic()
            if time.time() - self._started >= self.policy.max_s:
                self.stop("max time")
                break
            if not all(p.is_alive() for p in self._pollers):
                self.stop("poller ended")
                break
            if not self._armed.is_set():
                continue
            try:
                busy = any(self.queue_depth().values()) or any(p.busy for p in self._pollers)
            except Exception as e:  # the queue cannot be read: nothing to wait for
                self.fail(f"monitor: {e.__class__.__name__}: {e}")
                break
            if busy:
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since >= self.policy.idle_s:
                self.stop("queue empty")
                break
