"""Every benchmark, one report: runs each script of benchmarks/ and writes BENCHMARKS.md with
each one's table, its baseline (measured in the same run) and the machine it ran on.

    python benchmarks/run_all.py              # every script, full sizes (an hour or more)
    python benchmarks/run_all.py --quick      # reduced sizes; results in benchmarks/results/quick/
    python benchmarks/run_all.py --collect    # no run: BENCHMARKS.md from benchmarks/results/*.json
    python benchmarks/run_all.py --only pce secagg

Scripts are found by name (every benchmarks/*.py but this one and _common.py), so a new
benchmark is picked up as it lands; ``BENCHMARKS`` below gives the known ones their title,
their baseline, their reduced sizes and how their JSON becomes a table. A script without an
entry runs with ``--quick`` if its ``--help`` offers it, and its JSON is shown through its
``table_markdown`` or, lacking that, its top-level numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _common import markdown_table  # noqa: E402

RESULTS = HERE / "results"
QUICK_RESULTS = RESULTS / "quick"
REPORT = ROOT / "BENCHMARKS.md"


@dataclass(frozen=True)
class Benchmark:
    name: str  # the script's stem and its JSON's
    title: str
    baseline: str
    quick_args: tuple[str, ...] = ()
    render: Callable[[dict[str, Any]], str] | None = None
    args: tuple[str, ...] = field(default_factory=tuple)


def _ms(value: float) -> str:
    return f"{value:.3f} ms"


def _consent(d: dict[str, Any]) -> str:
    base = d.get("per_resource_baseline", {})
    rows = [
        ["patients / resources", f"{d['patients']:,} / {sum(d.get('resources', {}).values()):,}"],
        ["cold decision, embedded regorus", f"{d['cold_s']:.2f} s"],
        ["warm, no consent changed", f"{d['warm_unchanged_s'] * 1000:.1f} ms"],
        [
            f"warm after {d.get('warm_churn_patients', 0):,} patients changed consent",
            f"{d['warm_churn_s'] * 1000:.1f} ms",
        ],
        ["cold through the OPA REST API (batched)", f"{d.get('cold_opa_batched_s', float('nan')):.2f} s"],
        [
            f"baseline: one OPA query per resource ({base.get('sampled', 0):,} timed)",
            f"{base.get('extrapolated_s', float('nan')):,.0f} s extrapolated ({base.get('per_query_ms', 0):.2f} ms/query)",
        ],
        [
            "speed-up of the cold decision over the baseline",
            f"{d.get('speedup_cold_vs_per_resource', 0):.0f}x",
        ],
        ["peak RSS", f"{d.get('rss_peak_mb', 0):.0f} MB"],
    ]
    return markdown_table(["measurement", "result"], rows)


def _pce(d: dict[str, Any]) -> str:
    rows = [
        [
            f"{r['topology']} ({r['nodes']} nodes), {r['regime']}",
            _ms(r["engine"]["median_ms"]),
            _ms(r["engine"]["p95_ms"]),
            f"{r['baseline']}: {_ms(r['baseline_ms']['median_ms'])}",
            f"{r['agree']}/{r['checked']}",
        ]
        for r in d.get("single_request", [])
    ]
    table = markdown_table(
        ["one request", "engine median", "engine p95", "baseline median", "same cost as the baseline"], rows
    )
    reroutes = [
        [
            f"{r['topology']}: {r['cve']} on {r['node']}, {r['installed']} paths installed",
            f"{r['engine_s'] * 1000:.0f} ms ({r['rerouted']} rerouted)",
            f"{r['baseline']}: {r['baseline_s'] * 1000:.0f} ms",
        ]
        for r in d.get("reroute", [])
    ]
    if reroutes:
        table += "\n\n" + markdown_table(["after a new vulnerability", "engine", "baseline"], reroutes)
    return table


def _sandbox(d: dict[str, Any]) -> str:
    inproc = d.get("in_process_round_median_s", float("nan"))
    rows = [["in process (baseline, no sandbox)", "yes", f"{inproc * 1000:.1f} ms", "-", "-"]]
    for b in d.get("backends", []):
        if not b.get("available"):
            rows.append([b["backend"], "no", "-", "-", "-"])
            continue
        rows.append(
            [
                b["backend"],
                "yes",
                f"{b['round_median_s'] * 1000:.1f} ms",
                f"{b['overhead_median_s'] * 1000:.1f} ms",
                f"{b['cold_start_s']:.2f} s",
            ]
        )
    return markdown_table(["backend", "available", "round median", "overhead per round", "cold start"], rows)


BENCHMARKS = [
    Benchmark(
        "heart_disease",
        "Model quality: FLamby Fed-Heart-Disease",
        "FLamby's published numbers for the same protocol, and pooled and local training run here",
        ("--seeds", "42", "--rounds", "3"),
    ),
    Benchmark(
        "consent",
        "Consent enforcement at scale",
        "one OPA query per resource through opa-python-client, timed on a sample in the same run",
        ("--patients", "2000", "--sample", "200", "--cache", "/tmp/paroma-bench-consent-quick"),
        _consent,
    ),
    Benchmark(
        "sandbox",
        "Training sandbox overhead",
        "the same round in process, without a sandbox, in the same run",
        ("--rounds", "5"),
        _sandbox,
    ),
    Benchmark(
        "pce",
        "Secure path engine",
        "networkx (Dijkstra, Yen's k-shortest paths) on the same requests in the same run",
        ("--quick",),
        _pce,
    ),
    Benchmark(
        "poisoning",
        "Robustness to a poisoning site",
        "clean FedAvg (the demo's job) with the same seeds in the same run",
        ("--seeds", "42", "--rounds", "3"),
    ),
    Benchmark(
        "secagg",
        "Secure aggregation (SecAgg+)",
        "the same rounds with plain FedAvg in the same run",
        ("--quick",),
    ),
    Benchmark(
        "transport",
        "Transport over the relays",
        "direct TLS between the same endpoints in the same run; the simulation's transfer estimate",
        ("--mb", "20", "--repeats", "2", "--cve-repeats", "2"),
    ),
    Benchmark(
        "federation_round",
        "Multi-process federation round",
        "the same job on Flower's simulation runtime in the same run",
        ("--rounds", "1", "--local-steps", "5"),
    ),
    Benchmark(
        "scale",
        "Scale: 10 to 100 synthetic sites",
        "the smallest size of the same run",
        ("--sites", "4", "8", "--patients", "200", "--rounds", "2", "--workdir", "/tmp/paroma-scale-quick"),
    ),
    Benchmark(
        "discovery",
        "Feasibility and catalogue",
        "each site's cohort decision, timed in the same run",
        ("--repeat", "2"),
    ),
]


def known() -> dict[str, Benchmark]:
    found = {b.name: b for b in BENCHMARKS}
    for script in sorted(HERE.glob("*.py")):
        if script.stem in found or script.stem in ("run_all", "_common") or script.stem.startswith("test_"):
            continue
        found[script.stem] = Benchmark(
            script.stem, script.stem.replace("_", " ").capitalize(), "see the script"
        )
    return found


def _offers_quick(script: Path) -> bool:
    try:
        out = subprocess.run(
            [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        return False
    return "--quick" in out.stdout


def run(benchmark: Benchmark, quick: bool, results: Path) -> tuple[bool, float]:
    script = HERE / f"{benchmark.name}.py"
    args = list(benchmark.quick_args if quick else benchmark.args)
    if quick and not benchmark.quick_args and _offers_quick(script):
        args = ["--quick"]
    env = {**os.environ, "PAROMA_BENCHMARK_RESULTS": str(results), "PYTHONPATH": str(ROOT)}
    print(f"== {benchmark.name}: {' '.join(['python', str(script.relative_to(ROOT)), *args])}", flush=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(script), *args], cwd=ROOT, env=env, check=False)
    return done.returncode == 0, time.perf_counter() - start


def _machine(d: dict[str, Any]) -> str:
    m = d.get("machine")
    if isinstance(m, dict):
        parts = [
            m.get("cpu", ""),
            f"{m.get('cores') or m.get('cpus')} cores" if (m.get("cores") or m.get("cpus")) else "",
            f"{m['memory_gib']} GiB" if "memory_gib" in m else "",
            m.get("platform", ""),
            f"Python {m['python']}" if "python" in m else "",
            f"load {', '.join(f'{x:.1f}' for x in m['load'])}" if "load" in m else "",
            f"commit {m['commit']}" if m.get("commit") else "",
            m.get("date", "") or d.get("date", ""),
        ]
        return "; ".join(p for p in parts if p)
    return "; ".join(str(p) for p in (m, d.get("python"), d.get("date")) if p)


def _generic(d: dict[str, Any]) -> str:
    if isinstance(d.get("table_markdown"), str):
        return str(d["table_markdown"])
    rows = [[k, v] for k, v in d.items() if isinstance(v, int | float | str) and k not in ("date",)]
    return markdown_table(["measurement", "result"], rows)


def report(
    results: Path, benchmarks: dict[str, Benchmark], outcome: dict[str, tuple[bool, float]], quick: bool
) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python benchmarks/run_all.py"
        + (" --quick" if quick else "")
        + "` from the JSON files in "
        + f"`{results.relative_to(ROOT)}/`. Each table's baseline was measured in the same run as the "
        "table, on the machine named under it; re-run a script to measure your own machine.",
        "",
    ]
    if quick:
        lines += [
            "**Quick run: reduced sizes, for a smoke test, not for comparison with the full runs.**",
            "",
        ]
    for name in sorted(
        benchmarks,
        key=lambda n: [b.name for b in BENCHMARKS].index(n) if n in [b.name for b in BENCHMARKS] else 99,
    ):
        b = benchmarks[name]
        path = results / f"{name}.json"
        lines += [f"## {b.title}", ""]
        lines += [f"`benchmarks/{name}.py` · baseline: {b.baseline}", ""]
        if name in outcome and not outcome[name][0]:
            lines += [
                f"**The run failed** (exit status non-zero after {outcome[name][1]:.0f} s); see its output.",
                "",
            ]
        if not path.exists():
            lines += ["No result yet.", ""]
            continue
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            lines += [f"Unreadable result {path.name}: {exc}", ""]
            continue
        try:
            table = (b.render or _generic)(data)
        except (KeyError, TypeError, ValueError) as exc:
            table = _generic(data) + f"\n\n(the usual table could not be built: {type(exc).__name__} {exc})"
        took = (
            f"; the run took {data['seconds']:.0f} s" if isinstance(data.get("seconds"), int | float) else ""
        )
        lines += [table, "", f"Machine: {_machine(data)}{took}.", ""]
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", action="store_true", help="reduced sizes, results in benchmarks/results/quick/"
    )
    mode.add_argument(
        "--collect", action="store_true", help="only build BENCHMARKS.md from the existing results"
    )
    parser.add_argument("--only", nargs="+", default=None, help="benchmarks to run (script names)")
    parser.add_argument("--out", type=Path, default=REPORT)
    args = parser.parse_args()
    benchmarks = known()
    unknown = set(args.only or []) - set(benchmarks)
    if unknown:
        parser.error(f"no benchmark named {', '.join(sorted(unknown))}; known: {', '.join(benchmarks)}")
    results = QUICK_RESULTS if args.quick else RESULTS
    results.mkdir(parents=True, exist_ok=True)
    outcome: dict[str, tuple[bool, float]] = {}
    if not args.collect:
        for name in args.only or list(benchmarks):
            outcome[name] = run(benchmarks[name], args.quick, results)
    text = report(results, benchmarks, outcome, args.quick)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, args.out)
    failed = [n for n, (ok, _) in outcome.items() if not ok]
    print(f"wrote {args.out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
