"""What a million objects cost: the project's handler against the seed design, counted.

Run alone (starts its own servers, ~30 s):

    .venv/bin/python -m benchmarks.cost [--objects 500] [--json FILE] [--egress-usd-per-gb 0.02]

and inside the benchmarks (``test_gate.py``: the ``cost per million objects / seed`` entry).

One run, both designs, the same objects, every request counted on the wire by
:mod:`benchmarks.cost_proxy` (a process in front of moto and of the S3 server) and
priced by :mod:`benchmarks.cost_model` with ``benchmarks/prices.json``:

* **project**: the real ``handler.handler`` in a Lambda-like child process
  (:class:`tests.support.invoke.Function`) with the environment a deployment gives it, its
  stdout/stderr kept (CloudWatch Logs) and each invocation timed from handler start to
  end (billed duration at serverless.yml's ``memorySize``). A warm-up invocation first
  (the container's first: it reads the secret); then the batch (new objects); then the
  same batch delivered again (duplicates).
* **seed**: the seed design as issue 15 describes it: one conditional PutItem per object
  (``attribute_not_exists``, 1 WRU; boto3, 16 threads), then
  :func:`benchmarks.reference_seed.archive_like_the_seed` (boto3 GETs, tar + gzip, put +
  copy_object) for the objects that were new; timed the same way; its second delivery
  writes the same PutItems, which all fail their condition (and still cost).

Both designs get the same SQS lines (the queue carries the same events either way:
:func:`benchmarks.cost_model.sqs_requests_for`) and the same Secrets Manager line (an
upper bound: one GetSecretValue per invocation; the project's cache reads it once per
container and 5 minutes). The seed reference writes no log lines, so its log line is 0.
The Lambda duration billed is each invocation's own CPU time (the function's process and
its reaped children, from /proc; the seed's from getrusage), not its wall time here: the
wall time against these servers is mostly theirs (moto serves ~350 conditional PutItems
a second, DynamoDB answers one in a few ms) and depends on how each design's requests
queue on moto, so it would judge moto, not the design (with the one-PutItem claims the
project's wall time per object was 1.5x the seed's only because its PutItems wait on
moto). On Lambda the billed duration is at least the CPU time at up to one vCPU; waits on
DynamoDB and S3 add to it for both designs. The wall time is kept in the JSON
(``lambda_wall_ms``) and shown in the table's note.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import boto3
from botocore.config import Config

from aggregator.base.events import ObjectRef
from aggregator.base.names import object_id
from benchmarks import harness
from benchmarks.cost_model import Prices, Usage, billed_ms, gb_seconds, s3_price_class, sqs_requests_for
from benchmarks.cost_proxy import ProxyProcess
from benchmarks.reference_seed import archive_like_the_seed
from tests.support.s3events import messages, redelivered, sqs_event

REPO = Path(__file__).resolve().parents[1]
COST_OBJECTS = 500
WARMUP_OBJECTS = 20
SEED_WORKERS = 16
TTL_SECONDS = 1_296_000
DESIGNS = ("project", "seed")
PHASES = ("new", "duplicate")


def configured_memory_mb(path: Path = REPO / "serverless.yml") -> int:
    """The function's memorySize in serverless.yml's default params."""
    match = re.search(r"^\s+memorySize:\s*(\d+)\s*$", path.read_text(), flags=re.MULTILINE)
    if not match:
        raise ValueError(f"no memorySize in {path}")
    return int(match.group(1))


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and of its reaped children (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        text = stat.read()
    fields = text[text.rfind(")") + 2:].split()  # from field 3 (state) on
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


def event_body(ref: ObjectRef) -> str:
    """One SQS body as S3 sends it (a notification with one ObjectCreated record), now."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return json.dumps({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": harness.REGION, "eventTime": now,
        "eventName": "ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": ref.bucket, "arn": f"arn:aws:s3:::{ref.bucket}"},
               "object": {"key": quote_plus(ref.key), "size": ref.size, "eTag": ref.etag,
                          "sequencer": ref.sequencer}},
    }]})


@dataclass
class Invocation:
    """What one invocation used, as counted."""

    calls: dict[str, dict[str, Any]]
    duration_s: float  # wall time, handler start to end
    cpu_s: float  # the function's own CPU time: what the Lambda line bills
    log_bytes: int = 0
    log_lines: int = 0
    archived: int = 0


@dataclass
class CostReport:
    objects: int
    memory_mb: int
    prices: Prices
    sqs: dict[str, int]
    runs: dict[str, dict[str, Invocation]] = field(default_factory=dict)  # design -> phase -> invocation
    cold: Invocation | None = None
    measured_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def secrets_per_invocation(self) -> int:
        """Upper bound for both designs: the project's first (cold) invocation's reads."""
        cold = self.cold.calls if self.cold else {}
        return max(1, sum(int(row["requests"]) for key, row in cold.items() if key.startswith("secretsmanager ")))

    def usage(self, design: str, phase: str) -> Usage:
        run = self.runs[design][phase]
        usage = Usage(objects=self.objects)
        for key, row in run.calls.items():
            service, operation = key.split(" ", 1)
            usage.calls[key] = row["requests"]
            if service == "dynamodb":
                usage.wru += row["wru"]
                usage.rru += row["rru"]
            elif service == "s3":
                price_class = s3_price_class(operation)
                if price_class == "get":
                    usage.s3_get += row["requests"]
                elif price_class == "put":
                    usage.s3_put += row["requests"]
            elif service == "minio":
                usage.egress_bytes += row["request_bytes"]
        usage.sqs_requests = sum(self.sqs.values())
        usage.lambda_requests = 1
        usage.lambda_billed_ms = billed_ms(run.cpu_s)
        usage.lambda_wall_ms = billed_ms(run.duration_s)
        usage.lambda_gb_s = gb_seconds(usage.lambda_billed_ms, self.memory_mb)
        usage.secrets_calls = self.secrets_per_invocation()
        usage.log_bytes = run.log_bytes
        return usage

    def usd_per_million(self, design: str, phase: str = "new") -> float:
        return self.usage(design, phase).usd_per_million(self.prices)

    @property
    def ratio(self) -> float:
        """The project's bill per new object over the seed's: the gate's figure."""
        return self.usd_per_million("project") / self.usd_per_million("seed")

    def units(self, design: str, phase: str) -> tuple[float, float]:
        usage = self.usage(design, phase)
        return usage.wru / self.objects, usage.rru / self.objects

    def to_json(self) -> dict[str, Any]:
        return {
            "measured_at": self.measured_at, "objects": self.objects, "memory_mb": self.memory_mb,
            "prices": {"region": self.prices.region, "date": self.prices.date, "usd": self.prices.usd},
            "sqs_model": self.sqs, "secrets_per_invocation": self.secrets_per_invocation(),
            "project_cold_invocation": {key: row["requests"]
                                        for key, row in (self.cold.calls if self.cold else {}).items()},
            "ratio": round(self.ratio, 4),
            "designs": {design: {phase: {**self.usage(design, phase).to_json(self.prices),
                                         "duration_s": round(run.duration_s, 4), "cpu_s": round(run.cpu_s, 4),
                                         "log_lines": run.log_lines,
                                         "archived": run.archived}
                                 for phase, run in phases.items()}
                        for design, phases in self.runs.items()},
        }

    def markdown(self) -> str:
        return markdown(self.to_json())


def markdown(document: dict[str, Any]) -> str:
    """The line-by-line table from :meth:`CostReport.to_json`'s document (render.py uses it too)."""
    project, seed = document["designs"]["project"]["new"], document["designs"]["seed"]["new"]
    lines = [
        f"$ per million 8 KiB objects, {document['prices']['region']} prices of {document['prices']['date']} "
        f"(benchmarks/prices.json), measured {document['measured_at'][:16].replace('T', ' ')} UTC on "
        f"{document['objects']} objects in one invocation per design, {document['memory_mb']} MB:",
        "",
        "| line | project per object | project $/M objects | seed per object | seed $/M objects |",
        "|---|---|---|---|---|",
    ]
    for name, row in project["lines"].items():
        other = seed["lines"][name]
        lines.append(f"| {name} | {_quantity(row['per_object'])} | {row['usd_per_million']:.4f} | "
                     f"{_quantity(other['per_object'])} | {other['usd_per_million']:.4f} |")
    lines.append(f"| **total** | | **{project['usd_per_million']:.4f}** | | **{seed['usd_per_million']:.4f}** |")
    wall = {design: document["designs"][design]["new"].get("lambda_wall_ms", 0) / document["objects"]
            for design in DESIGNS}
    cpu = {design: document["designs"][design]["new"].get("lambda_billed_ms", 0) / document["objects"]
           for design in DESIGNS}
    lines += ["", f"Project / seed: **{document['ratio']:.2f}x** (target <= 1.0). Lambda duration billed at "
              f"the function's own CPU time per object: project {cpu['project']:.2f} ms, seed "
              f"{cpu['seed']:.2f} ms (wall time here, mostly the local servers': {wall['project']:.1f} and "
              f"{wall['seed']:.1f} ms).", "",
              "| DynamoDB request units per object | project WRU | project RRU | seed WRU | seed RRU |",
              "|---|---|---|---|---|"]
    for phase in PHASES:
        p, s = document["designs"]["project"][phase], document["designs"]["seed"][phase]
        n = document["objects"]
        lines.append(f"| {phase} | {p['wru'] / n:.3f} | {p['rru'] / n:.3f} | {s['wru'] / n:.3f} | {s['rru'] / n:.3f} |")
    lines += ["", "Requests counted on the wire (new objects): "
              + "; ".join(f"project {k} {v}" for k, v in project["calls"].items()) + "; "
              + "; ".join(f"seed {k} {v}" for k, v in seed["calls"].items()) + "."]
    return "\n".join(lines) + "\n"


def _quantity(value: float) -> str:
    if value == 0:
        return "0"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.4g}"


# -- the run -----------------------------------------------------------------------------------

def _aws(service: str, url: str, **config: Any) -> Any:
    session: Any = boto3.session.Session()
    return session.client(service, endpoint_url=url, region_name=harness.REGION, aws_access_key_id="testing",
                          aws_secret_access_key="testing",
                          config=Config(retries={"mode": "standard", "total_max_attempts": 3}, **config))


@contextmanager
def _table(moto_url: str) -> Iterator[str]:
    from tests.support.tables import create_claims_table

    client = _aws("dynamodb", moto_url)
    name = f"cost-{uuid.uuid4().hex[:8]}"
    create_claims_table(client, name)
    try:
        yield name
    finally:
        client.delete_table(TableName=name)


def _project(proxy: ProxyProcess, s3: harness.S3Server, moto_url: str, refs: Sequence[ObjectRef],
             warmup: Sequence[ObjectRef], *, memory_mb: int, log_dir: Path
             ) -> tuple[Invocation, dict[str, Invocation]]:
    from tests.support.invoke import Function

    secrets = _aws("secretsmanager", moto_url)
    secret_id = f"cost/minio-{uuid.uuid4().hex[:8]}"
    secrets.create_secret(Name=secret_id, SecretString=json.dumps({
        "endpoint_url": proxy.url("s3"), "access_key": s3.access_key, "secret_key": s3.secret_key,
        "bucket": harness.TARGET_BUCKET, "region": s3.region}))
    with _table(moto_url) as table:
        env = {
            "IDEMPOTENCY_TABLE_NAME": table, "MINIO_SECRET_ID": secret_id, "ARCHIVE_PREFIX": "cost",
            "COMPRESSION": "zstd", "COMPRESSION_LEVEL": "3", "ENVIRONMENT": "dev", "LOG_LEVEL": "INFO",
            "POWERTOOLS_SERVICE_NAME": "aggregator", "POWERTOOLS_METRICS_NAMESPACE": "S3MinioAggregator",
            "AWS_REGION": harness.REGION, "AWS_DEFAULT_REGION": harness.REGION,
            "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "AWS_ENDPOINT_URL_S3": proxy.url("s3"), "AWS_ENDPOINT_URL_DYNAMODB": proxy.url("json"),
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": proxy.url("json"), "AWS_ENDPOINT_URL_SQS": proxy.url("json"),
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb),
        }
        batch = messages([event_body(ref) for ref in refs])
        with Function(env, log_dir=log_dir, name="cost") as function:
            cold = _invoke(proxy, function, messages([event_body(ref) for ref in warmup]), len(warmup))
            phases = {"new": _invoke(proxy, function, batch, len(refs)),
                      "duplicate": _invoke(proxy, function, redelivered(batch), 0)}
    return cold, phases


def _invoke(proxy: ProxyProcess, function: Any, batch: Sequence[Any], archived: int) -> Invocation:
    calls: dict[str, dict[str, Any]] = {}
    with proxy.phase(calls):
        cpu0 = process_cpu_seconds(function.process.pid)
        result = function.invoke(sqs_event(batch), timeout_s=600)
        cpu = process_cpu_seconds(function.process.pid) - cpu0
    if result.outcome != "ok" or result.failed_ids:
        raise AssertionError(f"handler invocation {result.outcome}: {result.error or ''} "
                             f"{len(result.failed_ids)} failed; log tail: {result.log_lines()[-5:]}")
    points = {entry["point"]: entry["t"] for entry in result.trace}
    duration = points["handler.end"] - points["handler.start"]
    lines = result.log_lines()
    return Invocation(calls=calls, duration_s=duration, cpu_s=cpu,
                      log_bytes=sum(len(line.encode()) + 1 for line in lines), log_lines=len(lines),
                      archived=archived)


def _seed(proxy: ProxyProcess, s3: harness.S3Server, moto_url: str, refs: Sequence[ObjectRef]
          ) -> dict[str, Invocation]:
    s3_client = harness.S3Server(proxy.url("s3"), s3.access_key, s3.secret_key, s3.region).client(
        max_pool=SEED_WORKERS)
    phases: dict[str, Invocation] = {}
    with _table(moto_url) as table:
        dynamodb = _aws("dynamodb", proxy.url("json"), max_pool_connections=SEED_WORKERS)

        def claim(ref: ObjectRef) -> bool:
            """The seed's claim: one conditional PutItem; False for a duplicate."""
            try:
                dynamodb.put_item(TableName=table, ConditionExpression="attribute_not_exists(ObjectID)",
                                  Item={"ObjectID": {"S": object_id(ref)},
                                        "ExpiresAt": {"N": str(int(time.time()) + TTL_SECONDS)}})
            except dynamodb.exceptions.ConditionalCheckFailedException:
                return False
            return True

        for phase in PHASES:
            calls: dict[str, dict[str, Any]] = {}
            with proxy.phase(calls):
                start, cpu0 = time.perf_counter(), harness.cpu_seconds()
                with ThreadPoolExecutor(SEED_WORKERS) as pool:
                    new = [ref for ref, fresh in zip(refs, pool.map(claim, refs), strict=True) if fresh]
                if new:
                    archive_like_the_seed(s3_client, new, bucket=harness.TARGET_BUCKET,
                                          key=f"seed-cost/{harness.unique_prefix('seed')}.tar.gz")
                duration, cpu = time.perf_counter() - start, harness.cpu_seconds() - cpu0
            phases[phase] = Invocation(calls=calls, duration_s=duration, cpu_s=cpu, archived=len(new))
        if phases["new"].archived != len(refs) or phases["duplicate"].archived:
            raise AssertionError(f"seed claims: {phases['new'].archived} new, {phases['duplicate'].archived} "
                                 "archived again")
    return phases


def measure(*, s3: harness.S3Server, moto_url: str, refs: Sequence[ObjectRef], warmup: Sequence[ObjectRef],
            prices: Prices | None = None, memory_mb: int | None = None, log_dir: Path | None = None) -> CostReport:
    """Both designs on ``refs`` (the project first warmed up on ``warmup``), counted."""
    prices = prices or Prices.load()
    memory_mb = memory_mb or configured_memory_mb()
    sqs = sqs_requests_for(len(event_body(ref).encode()) for ref in refs)
    report = CostReport(objects=len(refs), memory_mb=memory_mb, prices=prices, sqs=sqs)
    with ProxyProcess(json_upstream=moto_url, s3_upstream=s3.endpoint_url,
                      minio_buckets={harness.TARGET_BUCKET}) as proxy, \
            tempfile.TemporaryDirectory(prefix="cost-") as scratch:
        report.cold, report.runs["project"] = _project(proxy, s3, moto_url, refs, warmup, memory_mb=memory_mb,
                                                       log_dir=log_dir or Path(scratch))
        report.runs["seed"] = _seed(proxy, s3, moto_url, refs)
    _check(report)
    return report


_ARCHIVE_WRITES = ("minio PutObject", "minio CompleteMultipartUpload")


def _check(report: CostReport) -> None:
    """Refuse a bill that cannot be right: units not worked out, or archives where none belong."""
    for design, phases in report.runs.items():
        for phase, run in phases.items():
            unparsed = sum(int(row.get("unparsed", 0)) for row in run.calls.values())
            if unparsed:
                raise AssertionError(f"{design} {phase}: {unparsed} DynamoDB requests not understood: {run.calls}")
            archives = sum(int(run.calls.get(key, {}).get("requests", 0)) for key in _ARCHIVE_WRITES)
            if (archives == 0) == (phase == "new"):
                raise AssertionError(f"{design} {phase}: {archives} archive writes to MinIO; expected "
                                     f"{'some' if phase == 'new' else 'none'}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="$ per million objects, project against the seed design")
    parser.add_argument("--objects", type=int, default=COST_OBJECTS)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument("--egress-usd-per-gb", type=float, default=None,
                        help="data out to on-premise MinIO, $/GB (default: prices.json, Direct Connect)")
    parser.add_argument("--memory-mb", type=int, default=None, help="default: serverless.yml's memorySize")
    args = parser.parse_args(argv)
    from tests.support.servers import MotoServer, SeaweedS3

    prices = Prices.load(egress_usd_per_gb=args.egress_usd_per_gb)
    with SeaweedS3(access_key=harness.ACCESS_KEY, secret_key=harness.SECRET_KEY) as seaweed, MotoServer() as moto:
        s3 = harness.S3Server(seaweed.endpoint_url)
        client = s3.client()
        harness.ensure_bucket(client, harness.TARGET_BUCKET)
        bodies = harness.small_bodies(args.objects + WARMUP_OBJECTS)
        refs = harness.seed_small(client, harness.SOURCE_BUCKET, harness.unique_prefix("cost"), bodies)
        report = measure(s3=s3, moto_url=moto.endpoint_url, refs=refs[:args.objects],
                         warmup=refs[args.objects:], prices=prices, memory_mb=args.memory_mb)
    sys.stdout.write(report.markdown())
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
