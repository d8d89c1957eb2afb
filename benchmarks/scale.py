"""Scale: 10, 25, 50 and 100 synthetic sites x 1,000 patients on the in-process runtime.

Builds the largest federation once (clinical_node.datasets.synthetic; each site's bundle in
one transaction, the default realistic consent mix; kept in --workdir, outside the
repository, and reused by later runs), then for each size runs the FLamby heart-disease job
over the first N sites in a fresh process, every site training in its sandbox, and measures
the time of each round and the peak memory of the whole process tree (the runtime and the
sandbox workers: the sum of their proportional set sizes, sampled every 0.5 s). The first
round includes starting the sites' sandbox workers; later rounds are the steady state.

Each site's sandbox worker holds about 200 MB; --max-workers caps how many stay alive at once
(deploy/worker_budget.py): beyond that many sites, the sites outside the first max-workers - 1
restart their worker for every train and every evaluation.
The baseline is the smallest size measured in the same run: the table gives how time per
round and memory grow relative to it, per site.

    python benchmarks/scale.py [--sites 10 25 50 100] [--patients 1000] [--rounds 3]
        [--local-steps 10] [--max-workers 60] [--workdir /tmp/paroma-scale]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import RESULTS, markdown_table, write_result

ROOT = Path(__file__).resolve().parent.parent
RESULTS_FILE = RESULTS / "scale.json"


def _build_one(args: tuple[str, int, int, int]) -> str:
    from clinical_node.datasets.synthetic import site_id
    from deploy.sites import DataSource, build_site
    from protection_layer import ConsentMix

    root, index, patients, seed = args
    folder = Path(root) / site_id(index)
    if (folder / ".complete").is_file():
        return str(folder)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    build_site(
        folder, site_id(index), f"Synthetic site {index + 1}", DataSource("synthetic", patients=patients),
        ConsentMix(), index=index, seed=seed,
    )  # fmt: skip
    (folder / ".complete").write_text("built\n")
    return str(folder)


def build_federation(root: Path, sites: int, patients: int, seed: int, workers: int) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    jobs = [(str(root), i, patients, seed) for i in range(sites)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        folders = [Path(f) for f in pool.map(_build_one, jobs)]
    print(f"  {sites} sites ready in {root} ({time.perf_counter() - started:.0f} s)", flush=True)
    return folders


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def run_one(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run size ``n`` in a child process and sample its tree's memory."""
    command = [sys.executable, __file__, "--one", str(n), "--workdir", str(args.workdir)]
    command += ["--rounds", str(args.rounds), "--local-steps", str(args.local_steps)]
    command += ["--max-workers", str(args.max_workers), "--patients", str(args.patients)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    peak = [0, 0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            pids = _tree(child.pid)
            total = sum(_pss_kib(p) for p in pids)
            if total > peak[0]:
                peak[0], peak[1] = total, len(pids)
            done.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = child.communicate()
    done.set()
    sampler.join()
    if child.returncode != 0:
        raise RuntimeError(f"{n} sites: the run failed (exit {child.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_pss_mib"] = peak[0] / 1024
    result["peak_processes"] = peak[1]
    return result


def one(n: int, args: argparse.Namespace) -> None:
    from clinical_node.datasets.synthetic import site_id
    from deploy.inprocess import run_inprocess_job
    from deploy.worker_budget import worker_budget_mod
    from paroma.demo import demo_job
    from paroma.jobspec import parse_job_spec

    logging.getLogger("flwr").setLevel(logging.ERROR)
    sites = [args.workdir / "sites" / site_id(i) for i in range(n)]
    doc = demo_job(args.rounds).to_dict()
    doc["training"]["local_steps"] = args.local_steps
    doc["min_sites"] = max(2, n // 2)
    job = parse_job_spec(doc)
    resolved = [str(s.resolve()) for s in sites]
    started = time.perf_counter()
    result = run_inprocess_job(job, sites, mods=[worker_budget_mod(resolved, args.max_workers)])
    total = time.perf_counter() - started
    if result.status != "completed":
        raise SystemExit(f"{n} sites: job {result.status}: {result.reason}")
    # A round that went on without some sites (min_sites) is no measurement of n sites.
    failed = {
        f"round {r.server_round} {site}: {s.error}"
        for r in result.rounds
        for site, s in r.sites.items()
        if s.error
    } | {
        f"round {r.server_round}: {len(r.sites)} of {n} sites answered"
        for r in result.rounds
        if len(r.sites) < n
    }
    if failed:
        raise SystemExit(f"{n} sites: {len(failed)} failure(s), e.g. {'; '.join(sorted(failed)[:3])}")
    rounds = [r.seconds for r in result.rounds]
    print(
        json.dumps(
            {
                "sites": n,
                "permitted_patients": sum(
                    s.cohort.get("permit", 0) for s in result.rounds[-1].sites.values()
                ),
                "round_seconds": rounds,
                "admission_and_setup_seconds": total - sum(rounds),
                "final_mean_accuracy": result.rounds[-1].mean_accuracy,
                "sites_answering": len(result.rounds[-1].sites),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sites", type=int, nargs="+", default=[10, 25, 50, 100])
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--max-workers", type=int, default=60)
    parser.add_argument("--build-workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/paroma-scale"))
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the sizes already in results/scale.json with the same settings",
    )
    parser.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workdir = args.workdir.resolve()
    if args.one:
        one(args.one, args)
        return
    started = time.perf_counter()
    print(f"building {max(args.sites)} synthetic sites x {args.patients} patients…", flush=True)
    build_started = time.perf_counter()
    build_federation(args.workdir / "sites", max(args.sites), args.patients, args.seed, args.build_workers)
    build_s = time.perf_counter() - build_started
    results: list[dict[str, Any]] = []
    if args.resume and RESULTS_FILE.is_file():
        previous = json.loads(RESULTS_FILE.read_text())
        same = all(previous.get(k) == getattr(args, k) for k in ("rounds", "local_steps", "max_workers"))
        if same and previous.get("patients_per_site") == args.patients:
            results = [r for r in previous.get("results", []) if r["sites"] in args.sites]
            print(f"  kept {[r['sites'] for r in results]} from {RESULTS_FILE}", flush=True)
    table = _table(results, args.patients) if results else ""
    # In the order given: the first is the baseline, and a run cut short keeps the sizes it reached.
    for n in args.sites:
        if any(r["sites"] == n for r in results):
            continue
        print(f"  running {n} sites…", flush=True)
        results.append(run_one(n, args))
        r = results[-1]
        print(
            f"    rounds {[round(s, 1) for s in r['round_seconds']]} s, peak {r['peak_pss_mib']:.0f} MiB",
            flush=True,
        )
        table = _table(results, args.patients)
        # Written after every size, so that a long run leaves what it has measured.
        write_result(
            "scale",
            {
                "sites": args.sites,
                "measured": [x["sites"] for x in results],
                "complete": len(results) == len(args.sites),
                "patients_per_site": args.patients,
                "rounds": args.rounds,
                "local_steps": args.local_steps,
                "max_workers": args.max_workers,
                "build_seconds": build_s,
                "results": results,
                "table_markdown": table,
                "seconds": time.perf_counter() - started,
            },
        )
    print()
    print(table)
    print(
        f"\n{args.rounds} rounds x {args.local_steps} local steps, at most {args.max_workers} sandbox "
        f"workers alive; building the sites took {build_s:.0f} s; {time.perf_counter() - started:.0f} s in all"
    )
    print(f"wrote {RESULTS_FILE}")


def _steady(r: dict[str, Any]) -> float:
    later = r["round_seconds"][1:] or r["round_seconds"]
    return float(sum(later) / len(later))


def _table(results: list[dict[str, Any]], patients: int) -> str:
    base = results[0]
    rows = []
    for r in results:
        scale = r["sites"] / base["sites"]
        rows.append(
            [
                r["sites"],
                r["sites"] * patients,
                f"{r['round_seconds'][0]:.1f}",
                f"{_steady(r):.1f}",
                f"{_steady(r) / r['sites']:.3f}",
                f"{_steady(r) / _steady(base):.2f} ({scale:.1f}x sites)",
                f"{r['peak_pss_mib']:.0f}",
                f"{r['peak_pss_mib'] / r['sites']:.0f}",
                f"{r['peak_pss_mib'] / base['peak_pss_mib']:.2f}",
                f"{r['final_mean_accuracy']:.3f}",
            ]
        )
    return markdown_table(
        [
            "sites", "patients", "round 1 (s)", "later rounds (s)", "s per site-round",
            "time vs smallest", "peak memory (MiB)", "MiB per site", "memory vs smallest", "accuracy",
        ],
        rows,
    )  # fmt: skip


if __name__ == "__main__":
    main()
