"""Robustness to a poisoning site, through the whole platform.

One of the four UCI hospitals sends sign-flipped updates scaled by 10 (deploy/attacks.py, a
Flower ClientApp mod acting on what the site sends). Each strategy runs the demo's job
(15 rounds x 100 local steps) clean and poisoned, seeds 42-46, over an in-process Grid, with
every site training in its sandbox. Reported: the mean of the four centres' test accuracy.

    python benchmarks/poisoning.py [--seeds 42 43 44 45 46] [--attacker cleveland] [--rounds 15]
                                   [--only NAME ...]

``--only`` reruns the named strategies (substrings of the names below) and the FedAvg
baseline; the other strategies' rows are carried over from the previous result file, each
marked with the commit it was measured at.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import RESULTS, markdown_table, write_result

from deploy.attacks import Poisoning, poisoning_mod
from deploy.inprocess import run_inprocess_job
from paroma.demo import DEMO_STRATEGY, build_demo_sites, demo_job
from paroma.jobspec import parse_job_spec

STRATEGIES: dict[str, dict[str, Any]] = {
    "FedAvg (demo job)": DEMO_STRATEGY,
    "FedMedian": {"name": "fedmedian"},
    "FedTrimmedAvg (beta 0.25)": {"name": "fedtrimmedavg", "params": {"beta": 0.25}},
    "Krum (f=1)": {"name": "krum", "params": {"num_malicious_nodes": 1}},
    "MultiKrum (f=1, keep 3)": {
        "name": "multikrum",
        "params": {"num_malicious_nodes": 1, "num_nodes_to_select": 3},
    },
    "Outlier-filtered FedAvg (f=1, factor 2.5)": {
        "name": "filteredfedavg",
        "params": {"weight_exponent": 0.875, "outlier_factor": 2.5, "num_malicious_nodes": 1},
    },
    "Outlier-filtered FedAvg (f=1, factor 2.0)": {
        "name": "filteredfedavg",
        "params": {"weight_exponent": 0.875, "outlier_factor": 2.0, "num_malicious_nodes": 1},
    },
}
BASELINE = "FedAvg (demo job)"


def run(
    sites: list[Path], strategy: dict[str, Any], seed: int, rounds: int, attack: Poisoning | None
) -> float:
    doc = demo_job(rounds, seed=seed).to_dict()
    doc["strategy"] = strategy
    result = run_inprocess_job(parse_job_spec(doc), sites, mods=[poisoning_mod([attack])] if attack else None)
    if result.status != "completed":
        raise RuntimeError(f"job failed: {result.reason}")
    return result.rounds[-1].mean_accuracy


def _previous(rerun: set[str], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The previous result file's rows for the strategies not rerun, if it measured the same job."""
    path = RESULTS / "poisoning.json"
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    if old.get("seeds") != args.seeds or old.get("rounds") != args.rounds:
        return {}
    commit = old.get("machine", {}).get("commit", "")
    return {
        name: {**row, "measured_at": row.get("measured_at", commit)}
        for name, row in old.get("strategies", {}).items()
        if name not in rerun
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45, 46])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--attacker", default="cleveland")
    parser.add_argument("--only", nargs="+", default=None, help="strategies to rerun (name substrings)")
    parser.add_argument(
        "--keep-baseline", action="store_true", help="with --only: take FedAvg's rows from the previous file"
    )
    args = parser.parse_args()
    chosen = {
        name: s
        for name, s in STRATEGIES.items()
        if args.only is None
        or (name == BASELINE and not args.keep_baseline)
        or any(o.lower() in name.lower() for o in args.only)
    }
    logging.getLogger("flwr").setLevel(logging.ERROR)
    attack = Poisoning(args.attacker, "sign-flip", 10.0)
    started = time.perf_counter()
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sites = build_demo_sites(Path(tmp))
        for name, strategy in chosen.items():
            results[name] = {
                "clean": [run(sites, strategy, s, args.rounds, None) for s in args.seeds],
                "poisoned": [run(sites, strategy, s, args.rounds, attack) for s in args.seeds],
            }
            print(f"  {name}: done", flush=True)
    rows, summary = [], {}
    carried = _previous(set(chosen), args) if args.only else {}
    fedavg_clean = (
        float(np.mean(results[BASELINE]["clean"])) if BASELINE in results else carried[BASELINE]["clean_mean"]
    )
    for name in STRATEGIES:
        if name in results:
            r = results[name]
            clean, poisoned = float(np.mean(r["clean"])), float(np.mean(r["poisoned"]))
            summary[name] = {
                "clean": r["clean"],
                "poisoned": r["poisoned"],
                "clean_mean": clean,
                "poisoned_mean": poisoned,
            }
            label = name
        elif name in carried:
            summary[name] = carried[name]
            clean, poisoned = summary[name]["clean_mean"], summary[name]["poisoned_mean"]
            label = f"{name} (commit {summary[name]['measured_at']})"
        else:
            continue
        rows.append(
            [
                label,
                clean,
                poisoned,
                f"{100 * (poisoned - clean):+.1f}",
                f"{100 * (poisoned - fedavg_clean):+.1f}",
            ]
        )
    table = markdown_table(
        ["strategy", "clean", f"{args.attacker} poisoned", "points vs own clean", "points vs clean FedAvg"],
        rows,
    )
    print()
    print(table)
    print(f"\nattack: {args.attacker} sends global - 10 x its update delta from round 1; "
          f"seeds {args.seeds}; {time.perf_counter() - started:.0f} s")  # fmt: skip
    path = write_result(
        "poisoning",
        {
            "attack": {"site": args.attacker, "kind": "sign-flip", "scale": 10.0},
            "rounds": args.rounds,
            "seeds": args.seeds,
            "strategies": summary,
            "table_markdown": table,
            "seconds": time.perf_counter() - started,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
