"""Renders saved benchmark JSON into a Markdown table and a PNG chart.

    python -m benchmarks.render benchmarks/results/full.json --gate benchmarks/results/gate-full.json

writes ``full.md`` and ``full.png`` beside the JSON (``--out`` to choose the stem). Input:
pytest-benchmark's ``--benchmark-json`` output (the figures are in each benchmark's
``extra_info``) and, optionally, the gate's JSON (``BENCH_GATE_JSON``). The chart shows
objects/s and client CPU per object for each small-object configuration (the CPU targets
drawn as lines), peak RSS growth of the large-object cases and, when the gate's JSON
carries the cost run (:mod:`benchmarks.cost`), $ per million objects line by line for the
project and the seed design.

``--readme README.md`` also rewrites the README's performance section between its
``<!-- bench:begin -->`` and ``<!-- bench:end -->`` markers from the same JSON, stamped
with its date, so that the README, the chart and the table never disagree. ``--cost FILE``
takes the cost figures from ``python -m benchmarks.cost --json FILE`` when the gate's JSON
has none.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.cost import markdown as cost_markdown

# Columns: (heading, extra_info keys tried in order, format).
COLUMNS: list[tuple[str, tuple[str, ...], str]] = [
    ("objects", ("objects",), "{:,.0f}"),
    ("objects/s", ("objects_per_s",), "{:,.0f}"),
    ("MB/s", ("MB_per_s",), "{:,.1f}"),
    ("CPU ms/object", ("cpu_ms_per_object",), "{:.3f}"),
    ("peak RSS MiB", ("peak_rss_MiB",), "{:,.0f}"),
    ("RSS growth MiB", ("rss_growth_MiB",), "{:,.0f}"),
    ("compression", ("compression_ratio", "ratio"), "{:.2f}x"),
    ("DynamoDB calls/object", ("dynamodb_calls_per_object", "calls_per_object"), "{:.3f}"),
]
CPU_TARGETS = {"engine": 0.4, "handler": 0.7}
RSS_TARGET_MIB = 64


def _cost_lines(cost_document: dict[str, Any]) -> list[str]:
    """The bill's lines that cost anything in either design, in the table's order."""
    designs = cost_document["designs"]
    names = list(designs["project"]["new"]["lines"])
    return [n for n in names if any(designs[d]["new"]["lines"][n]["usd_per_million"] > 0 for d in designs)]


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


GROUP_ORDER = ("seed-reference", "engine-codec", "engine-fetch-scaling", "handler", "cheap-source", "memory")


def label(bench: dict[str, Any]) -> str:
    """``group: parameters``; the test's name stands for a group name that is a sentence."""
    match = re.search(r"\[(.+)\]$", bench["name"])
    function = re.sub(r"^test_", "", bench["name"].split("[")[0])
    what = match.group(1) if match else function
    group = bench.get("group") or function
    if len(group) > 24:
        group = function
    return f"{group}: {what}" if group != what else what


def ordered(benchmarks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ours first (seed, engine, handler, cheap server, memory), then the others by name."""
    def key(bench: dict[str, Any]) -> tuple[int, str, str]:
        group = bench.get("group") or ""
        rank = GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER)
        return rank, group, bench["name"]

    return sorted(benchmarks, key=key)


def cell(info: dict[str, Any], keys: tuple[str, ...], fmt: str) -> str:
    for key in keys:
        value = info.get(key)
        if isinstance(value, int | float) and not (value == 0 and fmt.endswith("x")):  # 0x: nothing stored
            return fmt.format(value)
    return ""


def seed_rate(benchmarks: Sequence[dict[str, Any]]) -> float | None:
    for bench in benchmarks:
        if bench["name"] == "test_seed_reference[gzip-6]":
            rate = bench["extra_info"].get("objects_per_s")
            return float(rate) if rate else None
    return None


def markdown(document: dict[str, Any], gate: dict[str, Any] | None) -> str:
    benchmarks = ordered(document["benchmarks"])
    machine = document.get("machine_info", {})
    lines = [
        f"Measured {document.get('datetime', '')[:19].replace('T', ' ')} UTC on "
        f"{machine.get('cpu', {}).get('brand_raw', machine.get('processor', 'unknown CPU'))}, "
        f"{machine.get('cpu', {}).get('count', '?')} cores, Python {machine.get('python_version', '?')}; "
        "servers on the same cores (loopback).",
        "",
    ]
    if gate:
        lines += ["| target | measured | verdict | detail |", "|---|---|---|---|"]
        for name, row in gate["targets"].items():
            sense = row.get("sense") or (">=" if row["unit"] == "x" else "<=")
            lines.append(f"| {name} {sense} {row['target']:g} {row['unit']} | {row['measured']:.3g} {row['unit']} "
                         f"| {'pass' if row['passed'] else '**FAIL**'} | {row['detail']} |")
        lines.append("")
    seed = seed_rate(benchmarks)
    head = ["configuration", *(c[0] for c in COLUMNS)] + (["vs seed"] if seed else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for bench in benchmarks:
        info = bench.get("extra_info", {})
        row = [label(bench), *(cell(info, keys, fmt) for _, keys, fmt in COLUMNS)]
        if seed:
            rate = info.get("objects_per_s")
            small = info.get("objects", 0) >= 100 and "memory" not in (bench.get("group") or "")
            row.append(f"{rate / seed:.1f}x" if rate and small else "")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "objects/s and MB/s: best round; CPU ms/object: median round (client process and its fetch "
              "children; servers excluded); RSS: this process's peak over the rounds (memory cases: a fresh "
              "process per case, growth over its own baseline). 'vs seed': objects/s over the seed reference "
              "(gzip-6), same run."]
    cost_document = (gate or {}).get("cost")
    if cost_document:
        lines += ["", "## What a million objects cost", "", cost_markdown(cost_document).rstrip("\n")]
    return "\n".join(lines) + "\n"


def _info(benchmarks: Sequence[dict[str, Any]], name: str) -> dict[str, Any]:
    return next((b.get("extra_info", {}) for b in benchmarks if b["name"] == name), {})


README_BEGIN = "<!-- bench:begin -->"
README_END = "<!-- bench:end -->"


def readme_section(document: dict[str, Any], gate: dict[str, Any] | None) -> str:
    """The README's performance table, targets and bill, from the same JSON as the chart."""
    benchmarks = document["benchmarks"]
    machine = document.get("machine_info", {})
    cpu = machine.get("cpu", {}).get("brand_raw", machine.get("processor", "unknown CPU"))
    date = document.get("datetime", "")[:10]
    seed = _info(benchmarks, "test_seed_reference[gzip-6]")
    engine = _info(benchmarks, "test_engine_codec[zstd-3]")
    handler = _info(benchmarks, "test_handler_full_path")
    big = _info(benchmarks, "test_large_objects_rss[1GiB]")
    small_big = _info(benchmarks, "test_large_objects_rss[256MiB]")

    def rate(info: dict[str, Any]) -> str:
        value = info.get("objects_per_s")
        return f"{value:,.0f}" if value else "n/a"

    def cpu_ms(info: dict[str, Any]) -> str:
        value = info.get("cpu_ms_per_object")
        return f"{value:.2f} ms" if value else "n/a"

    others = [_info(benchmarks, f"test_engine_codec[{codec}]") for codec in ("zstd-1", "gzip-6", "none")]
    versus = (f" ({engine['objects_per_s'] / seed['objects_per_s']:.1f}×)"
              if engine.get("objects_per_s") and seed.get("objects_per_s") else "")
    lines = [
        README_BEGIN,
        "<!-- generated by `make bench` (benchmarks/render.py --readme) from benchmarks/results/full.json and "
        "gate-full.json: edit the renderer, not this section -->",
        f"Measured with `make bench` on **{date}** ({cpu}, {machine.get('cpu', {}).get('count', '?')} cores, "
        f"Python {machine.get('python_version', '?')}). Every server ran on the same cores over loopback: "
        "SeaweedFS (the MinIO stand-in) as source and target, moto for DynamoDB and Secrets Manager. Client CPU "
        "counts our process and its fetch processes, never the servers. Ratios are measured side by side in the "
        "same run. Full table: [benchmarks/results/full.md](benchmarks/results/full.md).",
        "",
        "| 2,000 × 8 KiB objects, SeaweedFS → SeaweedFS | objects/s | client CPU per object |",
        "|---|---|---|",
        f"| seed design (boto3 thread pool, tarfile + gzip, put + copy_object) | {rate(seed)} | {cpu_ms(seed)} |",
        f"| engine, zstd-3 (fetch, tar, compress, hash, spool, publish) | {rate(engine)}{versus} | {cpu_ms(engine)} |",
        f"| engine, zstd-1 / gzip-6 / none | {' / '.join(rate(i) for i in others)} | "
        f"{' / '.join(cpu_ms(i).removesuffix(' ms') for i in others)} ms |",
        f"| whole handler with claims (moto DynamoDB) | {rate(handler)} (limited by moto) | {cpu_ms(handler)}, "
        f"{handler.get('dynamodb_calls_per_object', 0):.2f} DynamoDB calls per object |",
        f"| 16 × 64 MiB (1 GiB), zstd-3 | {big.get('MB_per_s', 0):,.0f} MB/s | peak RSS "
        f"+{big.get('rss_growth_MiB', 0):.0f} MiB (+{small_big.get('rss_growth_MiB', 0):.0f} MiB at 256 MiB) |",
        "",
    ]
    if gate:
        lines += [f"The gate's targets in that run ({gate.get('mode', '?')} mode, {gate.get('datetime', '')[:10]}):",
                  "", "| target | measured | verdict |", "|---|---|---|"]
        for name, row in gate["targets"].items():
            sense = row.get("sense") or (">=" if row["unit"] == "x" else "<=")
            lines.append(f"| {name} {sense} {row['target']:g} {row['unit']} | {row['measured']:.3g} {row['unit']} | "
                         f"{'pass' if row['passed'] else 'not met'} |")
        lines.append("")
    cost_document = (gate or {}).get("cost")
    if cost_document:
        lines += ["### What a million objects cost", "", cost_markdown(cost_document).rstrip("\n"), ""]
    lines += ["![benchmarks](benchmarks/results/full.png)", README_END]
    return "\n".join(lines)


def update_readme(path: Path, section: str) -> None:
    text = path.read_text()
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(f"{path}: no {README_BEGIN} ... {README_END} section to update")
    path.write_text(text[:start] + section + text[end + len(README_END):])


def chart(document: dict[str, Any], path: Path, cost_document: dict[str, Any] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benchmarks = ordered(document["benchmarks"])
    small = [b for b in benchmarks if "objects_per_s" in b.get("extra_info", {})
             and b["extra_info"].get("objects", 0) >= 100 and "cpu_ms_per_object" in b["extra_info"]
             and "memory" not in (b.get("group") or "")]
    memory = [b for b in benchmarks
              if "rss_growth_MiB" in b.get("extra_info", {}) and "memory" in (b.get("group") or "")]
    rows = len(small)
    cost_lines = _cost_lines(cost_document) if cost_document else []
    figure = plt.figure(figsize=(13, 0.32 * rows + 2.6 + (0.4 * len(memory) + 1.2 if memory else 0)
                                 + (0.3 * len(cost_lines) + 1.6 if cost_lines else 0)))
    heights: list[float] = [rows, max(1, len(memory)) * 1.2] if memory else [rows]
    if cost_lines:
        heights.append(max(2, len(cost_lines)))
    grid = figure.add_gridspec(len(heights), 2, height_ratios=heights, width_ratios=[1.2, 1])
    names = [label(b) for b in small]
    groups = [b.get("group") or "" for b in small]
    palette = {"seed-reference": "#c44e52", "handler": "#8172b2", "cheap-source": "#55a868"}
    colours = [palette.get(g, "#4c72b0" if g.startswith("engine") else "#999999") for g in groups]
    throughput = figure.add_subplot(grid[0, 0])
    throughput.barh(names, [b["extra_info"]["objects_per_s"] for b in small], color=colours)
    throughput.invert_yaxis()
    throughput.set_xlabel("objects/s, best round (higher is better)")
    throughput.grid(axis="x", alpha=0.3)
    cpu = figure.add_subplot(grid[0, 1], sharey=throughput)
    cpu.barh(names, [b["extra_info"]["cpu_ms_per_object"] for b in small], color=colours)
    for (name, target), style in zip(CPU_TARGETS.items(), ("--", ":"), strict=True):
        cpu.axvline(target, color="black", linestyle=style, linewidth=1, label=f"{name} target {target} ms")
    cpu.legend(loc="lower right", fontsize=8)
    cpu.set_xlabel("client CPU ms per object, median round (lower is better)")
    cpu.tick_params(labelleft=False)
    cpu.grid(axis="x", alpha=0.3)
    if memory:
        rss = figure.add_subplot(grid[1, :])
        rss_names = [f"{label(b)} ({b['extra_info'].get('input_MiB', 0):,.0f} MiB in)" for b in memory]
        rss.barh(rss_names, [b["extra_info"]["rss_growth_MiB"] for b in memory], color="#dd8452")
        rss.axvline(RSS_TARGET_MIB, color="black", linestyle="--", linewidth=1, label=f"target {RSS_TARGET_MIB} MiB")
        rss.legend(loc="lower right", fontsize=8)
        rss.invert_yaxis()
        rss.set_xlabel("peak RSS growth, MiB, fresh process per case (lower is better)")
        rss.grid(axis="x", alpha=0.3)
    if cost_document and cost_lines:
        bill = figure.add_subplot(grid[len(heights) - 1, :])
        positions = list(range(len(cost_lines)))
        for offset, design, colour in ((-0.2, "project", "#8172b2"), (0.2, "seed", "#c44e52")):
            phase = cost_document["designs"][design]["new"]
            bill.barh([p + offset for p in positions],
                      [phase["lines"][name]["usd_per_million"] for name in cost_lines], height=0.4, color=colour,
                      label=f"{design}: ${phase['usd_per_million']:.2f} per million objects")
        bill.set_yticks(positions, cost_lines)
        bill.invert_yaxis()
        bill.legend(loc="lower right", fontsize=8)
        bill.set_xlabel(f"$ per million objects, {cost_document['prices']['region']} prices of "
                        f"{cost_document['prices']['date']}; counted {cost_document['measured_at'][:10]}: "
                        f"project / seed {cost_document['ratio']:.2f}x (target <= 1.0)")
        bill.grid(axis="x", alpha=0.3)
    figure.suptitle(f"s3-minio-aggregator benchmarks, {document.get('datetime', '')[:10]}, 8 KiB objects\n"
                    "red: seed reference   blue: engine   purple: handler with claims   green: cheap in-memory source"
                    "   grey: fetch and component benchmarks", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="pytest-benchmark --benchmark-json output")
    parser.add_argument("--gate", type=Path, help="the gate's JSON (BENCH_GATE_JSON)")
    parser.add_argument("--out", type=Path, help="output path without suffix (default: beside the JSON)")
    parser.add_argument("--readme", type=Path, help="rewrite this README's bench section from the same JSON")
    parser.add_argument("--cost", type=Path, help="python -m benchmarks.cost --json output, if the gate has none")
    args = parser.parse_args(argv)
    document = load(args.json)
    gate = load(args.gate) if args.gate and args.gate.exists() else None
    if args.cost and args.cost.exists() and gate is not None and not gate.get("cost"):
        gate["cost"] = load(args.cost)
    out = args.out or args.json.with_suffix("")
    out.with_suffix(".md").write_text(markdown(document, gate))
    chart(document, out.with_suffix(".png"), (gate or {}).get("cost"))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.png')}")
    if args.readme:
        update_readme(args.readme, readme_section(document, gate))
        print(f"updated {args.readme}")


if __name__ == "__main__":
    main()
