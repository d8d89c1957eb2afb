"""Secure path engine: speed, exactness against networkx baselines, re-routing, memory.

    .venv/bin/python benchmarks/pce.py [--quick]

For GEANT (40 nodes), Kdl (754) and a 10,000-node synthetic backbone, each with CVEs from the
shipped NVD data on a fifth of the nodes, it times single requests in three regimes: threshold 0
(least delay, CSPF), threshold 50 with a loose delay bound (most secure path), and threshold 50
with a tight bound (1.1 x the fastest path's delay: the label-setting search). Baselines from
networkx on the same pruned graphs: Dijkstra for threshold 0, and for the secure objective Yen's
k-shortest simple paths in (security cost, delay) order (nx.shortest_simple_paths), filtered on
the delay bound: the first feasible one is optimal (exact, but exponential in the worst case, so
it gets a time budget per request). Every answer is checked against the baseline's objective value. Then 1,000 paths that
all cross one node are installed and that node gets a critical CVE: the time to recompute the
indices and re-route is measured. Peak memory comes from tracemalloc in a separate pass.

Prints a table and writes benchmarks/results/pce.json. Numbers are for the machine it runs on.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import math
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import networkx as nx

from interconnect.pce.cve import Vulnerability
from interconnect.pce.engine import SecurePathEngine
from interconnect.pce.loaders import load_topology
from interconnect.pce.nvd import NvdClient
from interconnect.pce.routing import NoPath, PathRequest, Route
from interconnect.pce.security import Exposure
from interconnect.pce.synthetic import synthetic_topology
from interconnect.pce.topology import Topology

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(os.environ.get("PAROMA_BENCHMARK_RESULTS") or ROOT / "benchmarks" / "results") / "pce.json"
BANDWIDTH = 100.0
THRESHOLD = 50.0
BASELINE_BUDGET_S = 1.0  # per request: Yen's search is exponential in the worst case


def catalogue() -> list[Vulnerability]:
    nvd = NvdClient()
    out = []
    for cve_id in sorted(nvd.offline.records):
        try:
            out.append(nvd.lookup(cve_id))
        except Exception:  # noqa: S112 - the one unscored record
            continue
    return out


def scenario(topology: Topology, cves: list[Vulnerability], seed: int) -> list[Exposure]:
    rng = random.Random(seed)
    exposures = []
    for node in topology.nodes:
        if rng.random() < 0.2:
            for cve in rng.sample(cves, rng.choice([1, 1, 2])):
                exposures.append(Exposure(node.id, cve, rng.choice([1.0, 1.0, 2.0, 5.0])))
    return exposures


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall time of one call with the garbage collector held off, as timeit does: a full
    collection of the benchmark's own heap (networkx graphs, 10,000-node topologies) would
    otherwise land in a random request."""
    gc.disable()
    try:
        start = time.perf_counter()
        value = fn()
        return time.perf_counter() - start, value
    finally:
        gc.enable()


def summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "median_ms": statistics.median(ordered) * 1e3,
        "p95_ms": ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)] * 1e3,
        "max_ms": ordered[-1] * 1e3,
    }


class Baseline:
    """networkx graphs of the usable network (all links have the bandwidth here: the engine's
    own pruning is exercised by the tests); parallel links keep the fastest."""

    def __init__(self, engine: SecurePathEngine) -> None:
        state = engine.state
        self.state = state
        self.delay_graph = nx.Graph()
        for li, (a, b) in enumerate(state.link_ends):
            if state.available(li) < BANDWIDTH:
                continue
            if not self.delay_graph.has_edge(a, b) or self.delay_graph[a][b]["delay"] > state.delay[li]:
                self.delay_graph.add_edge(a, b, delay=state.delay[li])
        eligible = [i for i, si in enumerate(state.security_index) if si >= THRESHOLD]
        secure = self.delay_graph.subgraph(eligible)
        # Cost of entering v, on the arc u -> v: directed.
        self.cost_graph = nx.DiGraph()
        for a, b, data in secure.edges(data=True):
            nanoseconds = round(data["delay"] * 1000)
            for u, v in ((a, b), (b, a)):
                self.cost_graph.add_edge(
                    u,
                    v,
                    cost=state.cost[v],
                    delay=data["delay"],
                    lexicographic=state.cost[v] * 2**40 + nanoseconds,
                )

    def least_delay(self, s: int, d: int) -> float | None:
        try:
            return float(nx.dijkstra_path_length(self.delay_graph, s, d, weight="delay"))
        except nx.NetworkXNoPath:
            return None

    def most_secure(
        self, s: int, d: int, max_delay: float, budget_s: float
    ) -> tuple[int, float] | str | None:
        """(cost, delay) of the best path, None if there is none, "gave up" past the time budget.

        Yen's k-shortest simple paths on the integer weight cost * 2**40 + delay in nanoseconds,
        i.e. in (security cost, delay) order: the first path within the delay bound is the
        optimum (up to the nanosecond rounding of the delays)."""
        if s not in self.cost_graph or d not in self.cost_graph:
            return None
        deadline = time.perf_counter() + budget_s
        try:
            for path in nx.shortest_simple_paths(self.cost_graph, s, d, weight="lexicographic"):
                delay = 0.0
                for u, v in itertools.pairwise(path):
                    delay += self.cost_graph[u][v]["delay"]
                if delay <= max_delay:
                    return sum(self.state.cost[v] for v in path), delay
                if time.perf_counter() > deadline:
                    return "gave up"
        except nx.NetworkXNoPath:
            return None
        return None


def bench_topology(
    label: str, topology: Topology, cves: list[Vulnerability], requests: int, seed: int
) -> list[dict[str, Any]]:
    engine = SecurePathEngine(topology, scenario(topology, cves, seed))
    baseline = Baseline(engine)
    state = engine.state
    rng = random.Random(seed + 1)
    pairs = [tuple(rng.sample(range(len(state.node_ids)), 2)) for _ in range(requests)]
    rows = []
    for regime in ("threshold 0 (least delay)", "threshold 50, loose delay", "threshold 50, tight delay"):
        ours, theirs = [], []
        agree = checked = gave_up = no_path = 0
        for s, d in pairs:
            fastest = baseline.least_delay(s, d)
            if fastest is None:
                continue
            threshold = 0.0 if regime.startswith("threshold 0") else THRESHOLD
            bound = 60_000_000.0 if "tight" not in regime else max(1.0, fastest * 1.1)
            request = PathRequest("b", state.node_ids[s], state.node_ids[d], BANDWIDTH, bound, threshold)
            seconds, answer = timed(lambda request=request: engine.compute(request))
            ours.append(seconds)
            if isinstance(answer, NoPath):
                no_path += 1
            if threshold == 0.0:
                seconds, expected = timed(lambda s=s, d=d: baseline.least_delay(s, d))
                theirs.append(seconds)
                checked += 1
                agree += isinstance(answer, Route) and math.isclose(
                    answer.delay_us, expected or -1, rel_tol=1e-9
                )
                continue
            seconds, expected_secure = timed(
                lambda s=s, d=d, bound=bound: baseline.most_secure(s, d, bound, BASELINE_BUDGET_S)
            )
            theirs.append(seconds)
            if expected_secure == "gave up":
                gave_up += 1
                continue
            checked += 1
            if expected_secure is None:
                agree += isinstance(answer, NoPath)
            elif isinstance(answer, Route):
                cost = sum(state.cost[state.node(n)] for n in answer.nodes)
                exp_cost, exp_delay = expected_secure  # type: ignore[misc]
                agree += cost == exp_cost and math.isclose(answer.delay_us, exp_delay, rel_tol=1e-9)
        rows.append(
            {
                "topology": label,
                "nodes": len(topology.nodes),
                "links": len(topology.links),
                "regime": regime,
                "requests": len(ours),
                "no_path": no_path,
                "engine": summary(ours),
                "baseline": "networkx Dijkstra"
                if regime.startswith("threshold 0")
                else "networkx Yen k-shortest",
                "baseline_ms": summary(theirs),
                "checked": checked,
                "agree": agree,
                "baseline_gave_up": gave_up,
            }
        )
    return rows


def bench_reroute(
    label: str, topology: Topology, cves: list[Vulnerability], count: int, seed: int
) -> dict[str, Any]:
    """Install ``count`` paths crossing the busiest node, then give that node a critical CVE."""
    engine = SecurePathEngine(topology, scenario(topology, cves, seed))
    state = engine.state
    rng = random.Random(seed + 2)
    graph = nx.Graph([(a, b) for a, b in state.link_ends])
    hub = max(
        nx.betweenness_centrality(graph, k=min(200, len(graph)), seed=seed).items(), key=lambda kv: kv[1]
    )[0]
    hub_id = state.node_ids[hub]
    installed = attempts = 0
    while installed < count and attempts < 200 * count:
        attempts += 1
        s, d = rng.sample(range(len(state.node_ids)), 2)
        request = PathRequest(
            f"p{installed}", state.node_ids[s], state.node_ids[d], 1.0, 60_000_000.0, THRESHOLD
        )
        answer = engine.compute(request)
        if isinstance(answer, Route) and hub_id in answer.nodes[1:-1]:
            engine.install(request)
            installed += 1
    critical = max(cves, key=lambda v: v.base_score)
    seconds, report = timed(lambda: engine.add_vulnerability(hub_id, critical))
    # networkx, for scale: the same paths recomputed by Dijkstra in (cost, delay) order (no delay
    # bound, no reservations, no SI recomputation: less work than the engine does).
    baseline = Baseline(engine)
    starts = [(state.node(p.request.source), state.node(p.request.destination)) for p in engine.paths()]

    def recompute() -> None:
        for s, d in starts:
            with contextlib.suppress(nx.NetworkXNoPath, nx.NodeNotFound):
                nx.dijkstra_path(baseline.cost_graph, s, d, weight="lexicographic")

    baseline_seconds, _ = timed(recompute)
    return {
        "topology": label,
        "installed": installed,
        "node": hub_id,
        "cve": f"{critical.cve_id} ({critical.base_score})",
        "rerouted": len(report.rerouted),
        "unchanged": len(report.unchanged),
        "unroutable": len(report.unroutable),
        "engine_s": seconds,
        "baseline": "networkx Dijkstra x installed (no delay bound)",
        "baseline_s": baseline_seconds,
    }


def peak_memory(cves: list[Vulnerability], nodes: int) -> dict[str, Any]:
    tracemalloc.start()
    topology = synthetic_topology(nodes, seed=7)
    engine = SecurePathEngine(topology, scenario(topology, cves, 7))
    after_build = tracemalloc.get_traced_memory()[0]
    rng = random.Random(8)
    for _ in range(5):
        s, d = rng.sample(engine.state.node_ids, 2)
        engine.compute(PathRequest("m", s, d, BANDWIDTH, 60_000_000.0, THRESHOLD))
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "topology": topology.name,
        "engine_mb": after_build / 2**20,
        "peak_mb": peak / 2**20,
        "current_mb": current / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    args = parser.parse_args()
    scale = 0.2 if args.quick else 1.0
    cves = catalogue()
    started = time.perf_counter()
    single: list[dict[str, Any]] = []
    single += bench_topology("GEANT", load_topology("geant"), cves, int(400 * scale), seed=11)
    single += bench_topology("Kdl", load_topology("kdl"), cves, int(100 * scale), seed=12)
    single += bench_topology(
        "synthetic", synthetic_topology(10_000, seed=13), cves, max(4, int(20 * scale)), seed=13
    )
    reroute = [
        bench_reroute("GEANT", load_topology("geant"), cves, int(1000 * scale), seed=21),
        bench_reroute("Kdl", load_topology("kdl"), cves, int(1000 * scale), seed=22),
    ]
    memory = peak_memory(cves, 10_000)
    result = {
        "python": sys.version.split()[0],
        "machine": f"{platform.system()} {platform.machine()} {platform.processor() or ''}".strip(),
        "networkx": nx.__version__,
        "single_request": single,
        "reroute": reroute,
        "memory": memory,
        "seconds": time.perf_counter() - started,
        "quick": args.quick,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print_tables(result)
    print(f"\nwrote {RESULTS} ({result['seconds']:.0f} s)")


def print_tables(result: dict[str, Any]) -> None:
    print("Single request (bandwidth 100 Mbit/s), engine vs networkx baseline, milliseconds")
    header = f"{'topology':<10} {'nodes':>6} {'regime':<28} {'n':>4} {'median':>8} {'p95':>8} {'max':>8}   {'baseline':<24} {'median':>9} {'p95':>9}  agree"
    print(header)
    print("-" * len(header))
    for r in result["single_request"]:
        e, b = r["engine"], r["baseline_ms"]
        agree = f"{r['agree']}/{r['checked']}" + (
            f" (+{r['baseline_gave_up']} gave up)" if r["baseline_gave_up"] else ""
        )
        print(
            f"{r['topology']:<10} {r['nodes']:>6} {r['regime']:<28} {r['requests']:>4} {e['median_ms']:>8.3f} "
            f"{e['p95_ms']:>8.3f} {e['max_ms']:>8.3f}   {r['baseline']:<24} {b['median_ms']:>9.3f} {b['p95_ms']:>9.3f}  {agree}"
        )
    print("\nRe-routing after one node's SI drops (critical CVE on the busiest node)")
    for r in result["reroute"]:
        print(
            f"{r['topology']:<6} {r['installed']} paths through {r['node']}: {r['engine_s'] * 1e3:.1f} ms "
            f"({r['rerouted']} moved, {r['unchanged']} kept, {r['unroutable']} unroutable); "
            f"networkx Dijkstra for the same paths {r['baseline_s'] * 1e3:.1f} ms"
        )
    m = result["memory"]
    print(
        f"\nMemory ({m['topology']}): engine {m['engine_mb']:.1f} MiB, peak {m['peak_mb']:.1f} MiB (tracemalloc)"
    )


if __name__ == "__main__":
    main()
