"""Runs one engine case in a fresh interpreter and reports its own peak RSS growth.

Started by :func:`run_in_child` as ``python -m benchmarks.rss_child`` with a JSON job on
stdin; prints one JSON line. A fresh process per case, because a process's high-water mark
only ever rises: a case measured after a bigger one would read that one's peak. The child
reads ``VmHWM`` from its own ``/proc/self/status`` (a parent's ``ru_maxrss`` of a child
counts the parent's pages from before the exec).

Baselines: ``warm`` is after a small warm-up archive (CRT event loops, zstd context,
connection pools and thread stacks exist, as in a warm Lambda container); ``cold`` is
after the imports and client construction only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aggregator.base.events import ObjectRef
from benchmarks import harness

ROOT = Path(__file__).resolve().parent.parent


def run_in_child(job: dict[str, Any], *, timeout: float = 600, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``job`` in a fresh interpreter; return what it reported."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.rss_child"], input=json.dumps(job).encode(),
                          capture_output=True, cwd=ROOT, timeout=timeout, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"rss child failed ({done.returncode}): {done.stderr.decode(errors='replace')[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


def _refs(items: list[dict[str, Any]]) -> list[ObjectRef]:
    return [ObjectRef(bucket=i["bucket"], key=i["key"], size=i["size"], etag=i["etag"], version_id=None,
                      sequencer=i["sequencer"]) for i in items]


def main() -> None:
    job = json.load(sys.stdin)
    server = harness.S3Server(job["endpoint_url"], job["access_key"], job["secret_key"])
    source = server.source_config()
    minio = server.minio_client()
    config = harness.EngineConfig(**job["config"])
    cold_rss = harness.proc_status_kib("VmRSS")
    warmup = _refs(job["warmup"])
    if warmup:
        harness.run_engine(warmup, source=source, minio=minio, bucket=job["bucket"], config=config, prefix="warmup")
    rss_before = harness.proc_status_kib("VmRSS")
    hwm_before = harness.proc_status_kib("VmHWM")
    cpu0, wall0 = harness.cpu_seconds(), time.perf_counter()
    result = harness.run_engine(_refs(job["refs"]), source=source, minio=minio, bucket=job["bucket"], config=config)
    wall, cpu = time.perf_counter() - wall0, harness.cpu_seconds() - cpu0
    hwm_after = harness.proc_status_kib("VmHWM")
    print(json.dumps({
        "key": result.key, "archived": result.archived, "input_bytes": result.input_bytes,
        "stored_bytes": result.stored_bytes, "sha256_hex": result.sha256_hex, "wall": wall, "cpu": cpu,
        "cold_rss_kib": cold_rss, "rss_before_kib": rss_before, "hwm_before_kib": hwm_before,
        "hwm_after_kib": hwm_after,
        # Peak during the case over the resident set just before it (not over an earlier peak).
        "growth_kib": hwm_after - rss_before, "cold_growth_kib": hwm_after - cold_rss,
    }))


if __name__ == "__main__":
    main()
