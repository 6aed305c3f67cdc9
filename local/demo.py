"""The demo: the whole pipeline on one machine, verified, with a short report.

1. ``up``: the local stack (moto + SeaweedFS) on free loopback ports;
2. pollers start (Lambda's SQS event source mapping, :mod:`local.runner`), running the
   real ``handler.handler`` in sandboxes;
3. a realistic data set (:mod:`local.dataset`) is uploaded into the landing bucket; S3
   notifies the queue itself;
4. a few notifications the function already acknowledged are sent again, byte for byte,
   as S3's at-least-once delivery sometimes does: they must be skipped as duplicates;
5. when the queue has stayed empty for a while, every archive is read back and checked
   (:mod:`local.verify`), and the report is printed;
6. ``down``, also on Ctrl-C and on errors: no process is left running.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from local import latency, stack
from local.dataset import FileSpec, plan
from local.runner import EventSourceRunner, InvocationRecord, MappingConfig, RunSummary, StopPolicy
from local.sandbox import FunctionConfig
from local.verify import Uploaded, Verification, verify_archives

MB = 1_000_000


@dataclass(frozen=True)
class DemoOptions:
    objects: int = 400
    duplicates: int | None = None  # default: 5% of the objects, at least 2
    # None: as serverless.yml's local stage says (maximumConcurrency, batchSize,
    # maximumBatchingWindow, timeout).
    concurrency: int | None = None
    batch_size: int | None = None
    batching_window_s: float | None = None
    function_timeout_s: int | None = None
    upload_threads: int = 8
    seed: int = 20250614
    idle_s: float = 5.0
    max_s: float = 900.0
    poll_wait_s: int = 2  # short long-polls let the run end promptly once the queue is empty
    handler: str | None = None  # default: serverless.yml's
    extra_env: Mapping[str, str] = field(default_factory=dict)  # added to the function's environment
    task_root: Path = stack.REPO_ROOT
    state_dir: Path = stack.DEFAULT_STATE_DIR
    progress: bool = True
    keep: bool = False  # leave the stack running afterwards
    unnotified: int = 12  # objects uploaded with notifications off, then backfilled (0: skip that phase)

    @property
    def duplicate_count(self) -> int:
        return self.duplicates if self.duplicates is not None else max(2, self.objects // 20)


@dataclass
class DemoResult:
    uploads: dict[str, Uploaded]
    duplicates_sent: int
    summary: RunSummary | None
    verification: Verification | None
    timings: dict[str, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # upload -> acknowledged, seconds
    breakdown: dict[str, latency.Spread] = field(default_factory=dict)  # the wait, part by part (local.latency)
    settings: dict[str, Any] = field(default_factory=dict)
    server_pids: list[int] = field(default_factory=list)  # the stack's processes, for "nothing left running"
    queue_left: int = 0
    dlq_left: int = 0
    report: str = ""
    operations: Operations | None = None  # the operator tools' phase (see the end of this module)

    @property
    def ok(self) -> bool:
        return (self.verification is not None and self.verification.ok and self.summary is not None
                and not self.summary.errors and self.dlq_left == 0 and self.queue_left == 0
                and (self.operations is None or self.operations.ok))


class _Tracker:
    """Follows acknowledgements (from poller threads): progress, latencies, bodies to resend."""

    # Invocations in a row that acknowledge nothing before the demo gives up: a function
    # that fails everything would otherwise keep the run going until its maximum time.
    FAILING_RUN = 4

    def __init__(self, *, duplicates: int, bar: Any) -> None:
        self._lock = threading.Lock()
        self._wanted = duplicates
        self.bar = bar
        self.first_ack: dict[str, float] = {}
        self.stamps: dict[str, latency.Stamps] = {}  # key -> its way to the archive, at its first acknowledgement
        self.resend: list[str] = []
        self.enough = threading.Event()
        self.failing = 0
        self.runner: EventSourceRunner | None = None
        if duplicates == 0:
            self.enough.set()

    def on_invocation(self, record: InvocationRecord) -> None:
        from aggregator.base.errors import MalformedMessage
        from aggregator.base.events import parse_body

        acked = set(record.acked)
        with self._lock:
            for message in record.messages:
                if message.message_id not in acked:
                    continue
                try:
                    parsed = parse_body(message.body)
                except MalformedMessage:
                    continue
                for ref in parsed.objects:
                    self.first_ack.setdefault(ref.key, record.finished)
                    if ref.key not in self.stamps and ref.event_time is not None and message.sent is not None:
                        self.stamps[ref.key] = latency.Stamps(
                            uploaded=ref.event_time.timestamp(), sent=message.sent, invoked=record.invoked,
                            handler_start=record.handler_start, end=record.ended)
                if parsed.objects and len(self.resend) < self._wanted and message.receive_count == 1:
                    self.resend.append(message.body)
            if len(self.resend) >= self._wanted:
                self.enough.set()
            self.failing = 0 if acked else self.failing + 1
            reason = None
            if record.invocation.outcome == "init_error":
                reason = "the function cannot even be imported (init error)"
            elif self.failing >= self.FAILING_RUN and not self.first_ack:
                reason = f"the function failed {self.FAILING_RUN} invocations in a row and archived nothing"
        self.bar.update(len(acked))
        if reason and self.runner is not None:
            self.runner.stop(reason)
            self.enough.set()


def run_demo(options: DemoOptions, *, out: TextIO = sys.stdout, say: Callable[[str], None] | None = None) -> DemoResult:
    from tqdm import tqdm

    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    timings: dict[str, float] = {}
    clock = time.monotonic()
    state = stack.up(stack.StackConfig(function_timeout_s=options.function_timeout_s), state_dir=options.state_dir,
                     say=say)
    timings["stack up"] = time.monotonic() - clock
    result = DemoResult(uploads={}, duplicates_sent=0, summary=None, verification=None, timings=timings,
                        server_pids=[p.pid for p in state.processes.values()])
    try:
        _run(options, state, result, tqdm, say)
        result.report = format_report(options, result)
        print(result.report, file=out, flush=True)
    finally:
        if not options.keep:
            clock = time.monotonic()
            stack.down(state_dir=options.state_dir)
            timings["stack down"] = time.monotonic() - clock
            say(f"stack down in {timings['stack down']:.1f} s; no process left running")
        else:
            say(f"stack left running: `python -m local down --state-dir {options.state_dir}` stops it")
    return result


def _run(options: DemoOptions, state: stack.StackState, result: DemoResult, tqdm: Any,
         say: Callable[[str], None]) -> None:
    resources, timings, fn = state.resources, result.timings, state.function
    concurrency = options.concurrency or fn["max_concurrency"]
    specs = plan(options.objects, seed=options.seed)
    duplicates = min(options.duplicate_count, options.objects)
    sqs = state.aws_client("sqs", max_pool=concurrency + 4)
    s3 = state.aws_client("s3", max_pool=options.upload_threads + 4)
    # Messages to acknowledge: one per upload, the re-sent duplicates, S3's test event.
    expected_messages = options.objects + duplicates + 1
    bar = tqdm(total=expected_messages, desc="archived ", unit="msg", disable=not options.progress, position=1,
               leave=True, ncols=_columns())
    tracker = _Tracker(duplicates=duplicates, bar=bar)
    mapping = MappingConfig(queue_url=resources["queue_url"], queue_arn=resources["queue_arn"], region=state.region,
                            batch_size=options.batch_size or fn["batch_size"],
                            batching_window_s=_first(options.batching_window_s, fn["batching_window_s"]),
                            report_batch_item_failures=fn["report_batch_item_failures"],
                            poll_wait_s=options.poll_wait_s)
    function = FunctionConfig(handler=options.handler or fn["handler"], name=fn["name"], timeout_s=fn["timeout_s"],
                              memory_mb=fn["memory_mb"], region=state.region, env={**state.env, **options.extra_env},
                              task_root=options.task_root)
    log_path = Path(options.state_dir) / "function.log"
    log_path.unlink(missing_ok=True)
    runner = EventSourceRunner(sqs, mapping, function, concurrency=concurrency,
                               stop=StopPolicy(idle_s=options.idle_s, max_s=options.max_s), log_path=log_path,
                               on_invocation=tracker.on_invocation)
    tracker.runner = runner
    with runner, bar:
        runner.start(armed=False)
        clock = time.monotonic()
        first_upload = time.time()
        result.uploads = _upload(s3, resources["landing_bucket"], specs, threads=options.upload_threads,
                                 progress=options.progress, tqdm=tqdm)
        timings["upload"] = time.monotonic() - clock
        # Re-send bodies the function has already acknowledged: true duplicates of what S3 sent.
        tracker.enough.wait(timeout=max(60.0, 3 * fn["timeout_s"]))
        for body in tracker.resend[:duplicates]:
            sqs.send_message(QueueUrl=resources["queue_url"], MessageBody=body)
            result.duplicates_sent += 1
        runner.arm()
        summary = runner.wait()
        bar.refresh()
    result.summary = summary
    result.settings = {"concurrency": concurrency, "batch size": mapping.batch_size,
                       "batching window": f"{mapping.batching_window_s:g} s", "timeout": f"{fn['timeout_s']} s",
                       "visibility timeout": f"{fn['visibility_timeout_s']} s"}
    last_ack = max((r.finished for r in summary.records), default=time.time())
    timings["ingest"] = last_ack - first_upload
    result.latencies = [tracker.first_ack[key] - upload.uploaded_at for key, upload in result.uploads.items()
                        if key in tracker.first_ack]
    result.breakdown = latency.breakdown(tracker.stamps[key] for key in result.uploads if key in tracker.stamps)
    say(f"run ended ({summary.stop_reason}) after {summary.finished - summary.started:.1f} s; verifying")

    for label, url in (("queue", resources["queue_url"]), ("dlq", resources["dlq_url"])):
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        left = sum(int(v) for v in attributes.values())
        setattr(result, f"{label}_left", left)

    clock = time.monotonic()
    minio = state.minio_client()
    listed = sum(len(page.get("Contents", [])) for page in
                 minio.get_paginator("list_objects_v2").paginate(
                     Bucket=resources["archive_bucket"], Prefix=state.env.get("ARCHIVE_PREFIX", "archives") + "/"))
    with tqdm(total=listed, desc="verified ", unit="archive", disable=not options.progress,
              ncols=_columns()) as verify_bar:
        result.verification = verify_archives(
            minio=minio, archive_bucket=resources["archive_bucket"], prefix=state.env.get("ARCHIVE_PREFIX", "archives"),
            source_s3=s3, source_bucket=resources["landing_bucket"], expected=result.uploads,
            on_archive=lambda: verify_bar.update(1))
    timings["verify"] = time.monotonic() - clock
    if options.unnotified:
        clock = time.monotonic()
        result.operations = run_operations(options, state, mapping=mapping, function=function,
                                           concurrency=concurrency, say=say)
        timings["operations"] = time.monotonic() - clock


def _upload(s3: Any, bucket: str, specs: list[FileSpec], *, threads: int, progress: bool,
            tqdm: Any) -> dict[str, Uploaded]:
    """PutObject every file with ``threads`` workers and at most 2x that many bodies in memory."""
    uploads: dict[str, Uploaded] = {}

    def put(spec: FileSpec) -> Uploaded:
        body = spec.content()
        response = s3.put_object(Bucket=bucket, Key=spec.key, Body=body)
        return Uploaded(key=spec.key, size=len(body), sha256=hashlib.sha256(body).hexdigest(),
                        etag=response["ETag"].strip('"'), version_id=response.get("VersionId"),
                        uploaded_at=time.time())

    with ThreadPoolExecutor(max_workers=threads) as pool, \
            tqdm(total=len(specs), desc="uploaded ", unit="obj", disable=not progress, position=0,
                 ncols=_columns()) as bar:
        pending: set[Future[Uploaded]] = set()
        for spec in specs:
            if len(pending) >= 2 * threads:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    upload = future.result()
                    uploads[upload.key] = upload
                    bar.update(1)
            pending.add(pool.submit(put, spec))
        for future in pending:
            upload = future.result()
            uploads[upload.key] = upload
            bar.update(1)
    return uploads


def _columns() -> int:
    # A terminal that reports no size (some CI ptys) would get empty bars.
    columns = shutil.get_terminal_size().columns
    return columns if columns >= 40 else 100


def _first(value: float | None, default: float) -> float:
    return default if value is None else value


def format_report(options: DemoOptions, result: DemoResult) -> str:
    summary, verification = result.summary, result.verification
    assert summary is not None and verification is not None
    bytes_in = sum(u.size for u in result.uploads.values())
    bytes_out = verification.bytes_out
    ingest = result.timings.get("ingest", 0.0)
    outcomes = summary.outcomes
    sizes = [len(r.messages) for r in summary.records]
    metric = summary.metrics
    lines = [
        f"Demo: {len(result.uploads)} objects -> {len(verification.archives)} archives in MinIO: "
        + ("VERIFIED" if result.ok else "FAILED"),
        f"  objects in          {len(result.uploads)} ({bytes_in / MB:.2f} MB, largest "
        f"{max((u.size for u in result.uploads.values()), default=0) / MB:.2f} MB)",
        f"  notifications       {summary.messages_acked} acknowledged ({len(result.uploads)} uploads, "
        f"{result.duplicates_sent} duplicates re-sent, S3's test event)",
        f"  archives out        {len(verification.archives)} ({bytes_out / MB:.2f} MB), "
        f"{verification.objects_archived} objects",
        f"  duplicates skipped  {_metric(metric, 'DuplicatesSkipped')} ({result.duplicates_sent} re-sent on purpose"
        + ("; the rest are redeliveries of objects already archived)"
           if metric.get("DuplicatesSkipped", 0) > result.duplicates_sent else ")"),
        f"  compression ratio   {bytes_in / bytes_out:.2f}x" if bytes_out else "  compression ratio   -",
        f"  throughput          {verification.objects_archived / ingest:.1f} objects/s, "
        f"{bytes_in / MB / ingest:.2f} MB/s (first upload to last acknowledgement: {ingest:.1f} s)"
        if ingest > 0 else "  throughput          -",
    ]
    if result.latencies:
        lines.append(f"  upload -> archived  p50 {latency.percentile(result.latencies, 50):.2f} s, "
                     f"p99 {latency.percentile(result.latencies, 99):.2f} s, max {max(result.latencies):.2f} s "
                     "(client's upload to the runner's deletes)")
    if result.breakdown:
        lines.append(f"  the wait, split     S3 eventTime -> SentTimestamp -> poller invokes -> handler -> response "
                     f"({result.breakdown[latency.TOTAL].count} objects)")
        lines += latency.table_lines(result.breakdown, indent="    ")
    lines += [
        f"  invocations         {len(summary.records)} on {result.settings.get('concurrency')} pollers: "
        + ", ".join(f"{count} {name}" for name, count in sorted(outcomes.items()))
        + f"; batch size mean {statistics.fmean(sizes) if sizes else 0:.1f}, max {max(sizes, default=0)}; "
        f"{sum(r.invocation.cold_start for r in summary.records)} cold starts",
        f"  batch item failures {summary.messages_failed} messages left for redelivery; "
        f"queue {result.queue_left}, DLQ {result.dlq_left} messages left",
        "  handler metrics     " + (", ".join(f"{k} {_number(v)}" for k, v in sorted(metric.items())) or "none seen"),
        f"  function log        {summary.log_lines} lines, "
        + ("all JSON" if not summary.non_json_lines else f"{summary.non_json_lines} NOT JSON, e.g. "
           f"{summary.non_json_examples[0]!r}"),
        "  timings             " + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items()),
        "  settings            " + ", ".join(f"{k} {v}" for k, v in result.settings.items()),
    ]
    if summary.errors:
        lines.append("  runner errors       " + "; ".join(summary.errors))
    failed = next((r.invocation for r in summary.records if r.invocation.error), None)
    if failed is not None and failed.error is not None:
        lines.append(f"  first failure       {failed.outcome}: {failed.error.get('errorType')}: "
                     f"{str(failed.error.get('errorMessage'))[:300]}")
    if summary.stop_reason not in ("queue empty",):
        lines.append(f"  run stopped         {summary.stop_reason}")
    if verification.ok:
        lines.append("  verification        OK: every object in exactly one archive; checksums, POSIX tar, "
                     "manifests and bytes match the sources")
    else:
        lines.append(f"  verification        FAILED: {len(verification.problems)} problems")
        lines += [f"    - {problem}" for problem in verification.problems[:20]]
    if result.operations is not None:
        lines += ["", *result.operations.report_lines()]
    return "\n".join(lines)


def _metric(metrics: Any, name: str) -> str:
    return _number(metrics[name]) if name in metrics else "n/a (no metric)"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


# -- operator tools: a backfill of un-notified uploads, then a reconcile of everything ----------

# Keys with the characters S3 encodes in notifications, so the backfill's encoding is shown working.
_UNNOTIFIED_KEYS = ("unnotified/report {i:02d}.csv", "unnotified/ünïcode/δ {i:02d}+plus.json",
                    "unnotified/deep/a/b/{i:02d}.log")
_SHOWN_LINES = 8


@dataclass
class ToolRun:
    """One operator command as the demo ran it, with its real output."""

    argv: list[str]
    status: int
    expected: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.status == self.expected

    def transcript(self) -> list[str]:
        shown = ["$ aggregator-tools " + " ".join(_shell_word(a) for a in self.argv)]
        for text in (self.stdout, self.stderr):
            lines = text.splitlines()
            if len(lines) <= _SHOWN_LINES:
                shown += lines
                continue
            # The head, and the tail (where a command's summary is).
            head, tail = _SHOWN_LINES // 2, _SHOWN_LINES // 2 - 1
            shown += [*lines[:head], f"... ({len(lines) - head - tail} more lines)", *lines[-tail:]]
        shown.append(f"(exit {self.status}" + ("" if self.ok else f", expected {self.expected}: UNEXPECTED") + ")")
        return shown


@dataclass
class Operations:
    unnotified: int = 0
    runs: list[ToolRun] = field(default_factory=list)
    backfill_runs: list[RunSummary] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(run.ok for run in self.runs)

    def report_lines(self) -> list[str]:
        lines = [f"Operator tools: {self.unnotified} objects uploaded with notifications off, found by reconcile, "
                 f"backfilled twice, archived once; final reconcile " + ("OK" if self.ok else "FAILED")]
        for attempt, summary in enumerate(self.backfill_runs, 1):
            archived, skipped = summary.metrics.get("ObjectsArchived", 0), summary.metrics.get("DuplicatesSkipped", 0)
            lines.append(f"  backfill {attempt} flowed  {summary.messages_acked} messages acknowledged in "
                         f"{len(summary.records)} invocations: ObjectsArchived {_number(archived)}, "
                         f"DuplicatesSkipped {_number(skipped)}, {summary.messages_failed} item failures")
        lines += [f"  problem             {problem}" for problem in self.problems]
        for run in self.runs:
            lines += ["", *run.transcript()]
        return lines


def _shell_word(word: str) -> str:
    import shlex

    return shlex.quote(word)


def run_operations(options: DemoOptions, state: stack.StackState, *, mapping: MappingConfig,
                   function: FunctionConfig, concurrency: int, say: Callable[[str], None]) -> Operations:
    """Upload objects S3 does not notify, find them, backfill them, prove everything archived."""
    import os
    import subprocess

    resources = state.resources
    bucket, queue_url = resources["landing_bucket"], resources["queue_url"]
    work = Path(options.state_dir) / "operations"
    work.mkdir(parents=True, exist_ok=True)
    ops = Operations()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_"))}, **state.env}

    def tool(*argv: str, expected: int) -> ToolRun:
        done = subprocess.run([sys.executable, "-m", "aggregator.tools", *argv], env=env, cwd=options.task_root,
                              capture_output=True, text=True, timeout=600)
        run = ToolRun(list(argv), done.returncode, expected, done.stdout, done.stderr)
        ops.runs.append(run)
        say(f"aggregator-tools {argv[0]}: exit {run.status}")
        return run

    s3 = state.aws_client("s3")
    saved = s3.get_bucket_notification_configuration(Bucket=bucket)
    saved.pop("ResponseMetadata", None)
    say(f"notifications off; uploading {options.unnotified} objects S3 will not announce")
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={})
    try:
        for i in range(options.unnotified):
            key = _UNNOTIFIED_KEYS[i % len(_UNNOTIFIED_KEYS)].format(i=i)
            s3.put_object(Bucket=bucket, Key=key, Body=f"un-notified object {i}\n".encode() * (i + 1))
    finally:
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=saved)
    ops.unnotified = options.unnotified

    before, after = work / "before.jsonl", work / "after.jsonl"
    tool("reconcile", "--bucket", bucket, "--prefix", "unnotified/", "--report", str(before), expected=1)
    tool("backfill", "--report", str(before), "--queue-url", queue_url, expected=0)
    sqs = state.aws_client("sqs", max_pool=concurrency + 4)
    # Twice on purpose, each run left to flow through the function: the second must archive
    # nothing. (Both at once would put the same objects into concurrent invocations, which
    # split the work and leave the losers' messages to their visibility timeout.)
    for attempt in (1, 2):
        tool("backfill", "--report", str(before), "--queue-url", queue_url, "--apply", "--rate", "50", expected=0)
        runner = EventSourceRunner(sqs, mapping, function, concurrency=concurrency,
                                   stop=StopPolicy(idle_s=options.idle_s, max_s=options.max_s),
                                   log_path=work / f"function-{attempt}.log")
        with runner:
            runner.start()
            summary = runner.wait()
        ops.backfill_runs.append(summary)
        say(f"backfill {attempt}: {summary.messages_acked} messages acknowledged, "
            f"ObjectsArchived {_number(summary.metrics.get('ObjectsArchived', 0))}, "
            f"DuplicatesSkipped {_number(summary.metrics.get('DuplicatesSkipped', 0))}")

    archived_per_run = [run.metrics.get("ObjectsArchived", 0) for run in ops.backfill_runs]
    if archived_per_run != [options.unnotified, 0]:
        ops.problems.append(f"backfill runs archived {archived_per_run} objects, expected "
                            f"[{options.unnotified}, 0]")
    final = tool("reconcile", "--bucket", bucket, "--report", str(after), expected=0)
    lines = [json.loads(line) for line in after.read_text().splitlines()] if after.exists() else []
    backfilled = [line for line in lines if line["key"].startswith("unnotified/")]
    if len(backfilled) != options.unnotified or any(line["state"] != "archived" for line in backfilled):
        ops.problems.append(f"the final reconcile lists {len(backfilled)} un-notified objects, "
                            f"not all archived: {final.stderr.splitlines()[:3]}")
    archives = sorted({line["archive"] for line in backfilled if line["archive"]})
    archive_bucket = resources["archive_bucket"]
    if archives:
        tool("verify", *(f"s3://{archive_bucket}/{key}" for key in archives), expected=0)
        tool("extract", f"s3://{archive_bucket}/{archives[0]}", str(work / "extracted"), expected=0)
    return ops
