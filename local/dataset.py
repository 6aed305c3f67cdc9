"""The demo's files: what a landing bucket of many small objects looks like.

Mostly small JSON readings and CSV/log fragments (compressible), some medium files, a few
of several MB (half of them random bytes that do not compress), and keys that are easy
to get wrong: spaces, ``+``, ``%``, ``&``, accents, CJK, Cyrillic and emoji. Everything is
derived from a seed, so a run can be repeated; bodies are generated on demand, one at a
time, never all held in memory.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB

_SITES = ("north-yard", "south-dock", "plant-7", "warehouse-b")
_WORDS = ("temperature", "pressure", "valve", "pump", "ok", "warning", "sensor", "flow", "batch", "order",
          "shipment", "pallet", "scan", "door", "open", "closed", "reading", "retry", "latency", "checkpoint")
_KEY_STYLES = (
    # (weight, template): {i} keeps every key unique, {site}/{day} make it look real.
    (40, "sensors/{site}/{day}/reading-{i:05d}.json"),
    (15, "logs/app-{n}/{day}/part-{i:05d}.log"),
    (10, "exports/{site}/report {i} final.csv"),
    (5, "exports/{site}/Q3 summary (copy {i}).csv"),
    (5, "données/été/relevé-{i:05d}.json"),
    (5, "日本/東京/センサー-{i:05d}.json"),
    (5, "кириллица/файл {i}.txt"),
    (5, "emoji/🚀 launch-{i:05d}.json"),
    (5, "odd/a+b=c & d {i}.txt"),
    (5, "odd/100% done #{i}.txt"),
)


@dataclass(frozen=True)
class FileSpec:
    index: int
    key: str
    size: int
    kind: str  # json | csv | log | text | binary
    seed: int

    def content(self) -> bytes:
        rng = random.Random(self.seed)
        if self.kind == "binary":
            return rng.randbytes(self.size)
        make = {"json": _json_line, "csv": _csv_line, "log": _log_line}.get(self.kind, _text_line)
        parts: list[str] = []
        length = 0
        if self.kind == "csv":
            parts.append("timestamp,site,metric,value,status\n")
            length = len(parts[0])
        while length < self.size:
            line = make(rng, self.index)
            parts.append(line)
            length += len(line.encode())
        return "".join(parts).encode()[: self.size]


def _json_line(rng: random.Random, index: int) -> str:
    return json.dumps({"device": f"dev-{index % 97:03d}", "seq": rng.randrange(10**6),
                       "metric": rng.choice(_WORDS), "value": round(rng.uniform(-40, 120), 3),
                       "unit": "°C", "ok": rng.random() > 0.05}, ensure_ascii=False) + "\n"


def _csv_line(rng: random.Random, index: int) -> str:
    return (f"2025-06-{rng.randint(1, 30):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z,"
            f"{rng.choice(_SITES)},{rng.choice(_WORDS)},{rng.uniform(0, 1000):.2f},{rng.choice(_WORDS)}\n")


def _log_line(rng: random.Random, index: int) -> str:
    level = rng.choices(("INFO", "DEBUG", "WARN", "ERROR"), weights=(70, 20, 8, 2))[0]
    return f"2025-06-14 12:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d} {level} worker-{index % 8} " + \
        " ".join(rng.choices(_WORDS, k=rng.randint(4, 12))) + "\n"


def _text_line(rng: random.Random, index: int) -> str:
    return " ".join(rng.choices(_WORDS, k=rng.randint(5, 15))) + ".\n"


def plan(count: int, *, seed: int = 20250614) -> list[FileSpec]:
    """``count`` files; at least one of several MB once there are 50 or more."""
    if count < 1:
        raise ValueError("count must be at least 1")
    rng = random.Random(seed)
    large = max(1, count // 100) if count >= 50 else 0
    styles = [template for weight, template in _KEY_STYLES for _ in range(weight)]
    specs = []
    for i in range(count):
        template = rng.choice(styles)
        key = template.format(i=i, site=rng.choice(_SITES), day=f"2025-06-{1 + i % 28:02d}", n=i % 5)
        roll = rng.random()
        if i < large:
            size, kind = rng.randint(int(1.2 * MIB), 4 * MIB), "binary" if i % 2 else "log"
        elif roll < 0.08:
            size, kind = rng.randint(64 * KIB, 512 * KIB), rng.choice(("binary", "csv", "log"))
        elif roll < 0.28:
            size, kind = rng.randint(8 * KIB, 64 * KIB), rng.choice(("csv", "log", "text"))
        else:
            size, kind = rng.randint(200, 8 * KIB), "json" if key.endswith(".json") else "text"
        specs.append(FileSpec(index=i, key=key, size=size, kind=kind, seed=rng.randrange(2**32)))
    rng.shuffle(specs)  # big files are not all uploaded first
    return specs
