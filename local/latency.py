"""How long each object waits from upload to archive, split where the time goes.

Each object's wait is cut at four instants, every one recorded on this machine's clock
(the local stack's servers run here too, so the clocks agree):

1. **uploaded**: the S3 notification's ``eventTime`` (the S3 server's clock);
2. **sent**: the SQS ``SentTimestamp`` of the message carrying that notification;
3. **invoked**: when the runner's poller, its batch complete (batch size, batching
   window or payload limit), called the function;
4. **handler start** and **end**: when the runtime handed the event to the handler and
   when the response came back (the runner's :class:`local.sandbox.Invocation`). On a
   cold start the environment's init phase sits between *invoked* and *handler start*;
   warm, the two are the same instant.

So the parts, which sum to the total by construction, are:

* ``S3 -> queue``: uploaded -> sent (the local stack's own share);
* ``queue -> start``: sent -> invoked (the poller's long poll, the batching window, and
  any backlog while every poller is busy);
* ``cold start``: invoked -> handler start (0 when warm);
* ``invocation``: handler start -> end (claim, fetch, archive, publish, commit).

Percentiles are the inclusive (linear) ones of :func:`statistics.quantiles`.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

PARTS = ("S3 -> queue", "queue -> start", "cold start", "invocation")
TOTAL = "total"


@dataclass(frozen=True)
class Stamps:
    """One object's instants, epoch seconds (see the module docstring)."""

    uploaded: float
    sent: float
    invoked: float
    handler_start: float
    end: float

    def parts(self) -> dict[str, float]:
        return {
            "S3 -> queue": self.sent - self.uploaded,
            "queue -> start": self.invoked - self.sent,
            "cold start": self.handler_start - self.invoked,
            "invocation": self.end - self.handler_start,
        }

    @property
    def total(self) -> float:
        return self.end - self.uploaded


@dataclass(frozen=True)
class Spread:
    p50: float
    p99: float
    max: float
    count: int

    def to_json(self) -> dict[str, float]:
        return {"p50": round(self.p50, 4), "p99": round(self.p99, 4), "max": round(self.max, 4),
                "count": self.count}


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (1 <= q <= 99), inclusive method; the value itself for one value."""
    if not values:
        raise ValueError("no values")
    if len(values) == 1:
        return float(values[0])
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[round(q) - 1]


def spread(values: Sequence[float]) -> Spread:
    return Spread(p50=percentile(values, 50), p99=percentile(values, 99), max=max(values), count=len(values))


def breakdown(stamps: Iterable[Stamps]) -> dict[str, Spread]:
    """p50/p99/max of each part and of the total, over every object."""
    stamps = list(stamps)
    if not stamps:
        return {}
    columns: dict[str, list[float]] = {name: [] for name in (*PARTS, TOTAL)}
    for stamp in stamps:
        for name, value in stamp.parts().items():
            columns[name].append(value)
        columns[TOTAL].append(stamp.total)
    return {name: spread(values) for name, values in columns.items()}


def problems(stamps: Iterable[Stamps], *, tolerance_s: float = 0.0) -> list[str]:
    """Objects whose instants are out of order (a negative part): a clock or bookkeeping error."""
    found = []
    for n, stamp in enumerate(stamps):
        negative = {name: value for name, value in stamp.parts().items() if value < -tolerance_s}
        if negative:
            found.append(f"object {n}: " + ", ".join(f"{name} {value:.4f} s" for name, value in negative.items()))
    return found


def table_lines(result: Mapping[str, Spread], *, indent: str = "  ") -> list[str]:
    """A fixed-width table: one row per part, then the total."""
    if not result:
        return [f"{indent}(no object to measure)"]
    width = max(len(name) for name in result)
    lines = [f"{indent}{'':{width}}  {'p50':>7}  {'p99':>7}  {'max':>7}"]
    for name, row in result.items():
        lines.append(f"{indent}{name:{width}}  {row.p50:6.2f}s  {row.p99:6.2f}s  {row.max:6.2f}s")
    return lines
