"""Robustness to a poisoning site, through the whole platform.

One of the four UCI hospitals sends sign-flipped updates scaled by 10 (deploy/attacks.py, a
Flower ClientApp mod acting on what the site sends). Each strategy runs the demo's job
(15 rounds x 100 local steps) clean and with each hospital in turn as the attacker, seeds
42-46, over an in-process Grid, with every site training in its sandbox. Reported: the mean of
the four centres' test accuracy (the attacker's centre included: its patients still need the
model).

A robust rule that works by leaving the attacker out loses that hospital's data, so the table
also gives the reference for it, measured: the demo's FedAvg with the attacker's updates
withheld (the site still evaluates). How far that row falls below the clean run is what the
attacker's data is worth to the demo's FedAvg; a rule that weighs the three honest sites
differently can land above or below it.

    python benchmarks/poisoning.py [--seeds 42 43 44 45 46] [--rounds 15]
        [--attackers cleveland hungarian switzerland va] [--only NAME ...]

``--only`` reruns the named strategies (substrings of the names below) for the attackers
given, and FedAvg clean; every other measurement is carried over from the previous result
file when it used the same seeds and rounds, marked with the commit it was measured at.
Runs can share the two cores: each writes its own ``--output`` file, and ``--table-only
--merge A B`` makes the table of their measurements.
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
from flwr.app import Context, Error, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable, Mod

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import RESULTS, machine, markdown_table, write_result

from deploy.attacks import Poisoning, poisoning_mod
from deploy.inprocess import run_inprocess_job
from paroma.demo import DEMO_STRATEGY, build_demo_sites, demo_job
from paroma.jobspec import parse_job_spec

SITES = ("cleveland", "hungarian", "switzerland", "va")
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
}
BASELINE = "FedAvg (demo job)"
# Not a strategy a job can choose: the demo's FedAvg that never receives the attacker's updates.
CEILING = "Reference: FedAvg (demo job) without the attacker's updates"
CLEAN = "clean"


def withheld_mod(site: str) -> Mod:
    """A ClientApp mod under which ``site`` answers every train instruction with an error:
    its update never reaches the aggregator (it still evaluates the global model)."""

    def mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(message, context)
        if message.metadata.message_type != MessageType.TRAIN or reply.has_error():
            return reply
        record = reply.content.config_records.get("site")
        if record is None or str(record.get("site-id", "")) != site:
            return reply
        return Message(
            Error(code=0, reason=f"{site}'s update withheld (benchmark reference)"), reply_to=message
        )

    return mod


def run(sites: list[Path], strategy: dict[str, Any], seed: int, rounds: int, mods: list[Mod] | None) -> float:
    doc = demo_job(rounds, seed=seed).to_dict()
    doc["strategy"] = strategy
    result = run_inprocess_job(parse_job_spec(doc), sites, mods=mods)
    if result.status != "completed":
        raise RuntimeError(f"job failed: {result.reason}")
    return result.rounds[-1].mean_accuracy


def _previous(
    args: argparse.Namespace, path: Path
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, str]]]:
    """A previous result file's accuracies per row and condition (``clean`` or the attacker),
    with the commit each was measured at, if it measured the same job."""
    if not path.exists():
        return {}, {}
    old = json.loads(path.read_text())
    if old.get("seeds") != args.seeds or old.get("rounds") != args.rounds:
        print(f"  {path}: other seeds or rounds, not carried over", flush=True)
        return {}, {}
    commit = old.get("machine", {}).get("commit", "")
    values: dict[str, dict[str, list[float]]] = {}
    where: dict[str, dict[str, str]] = {}
    for name, row in old.get("strategies", {}).items():
        if "runs" in row:
            runs = row["runs"]
            at = row.get("measured_at", {})
        else:  # one attacker per file, as earlier versions wrote it
            runs = {CLEAN: row["clean"], old["attack"]["site"]: row["poisoned"]}
            at = {k: row.get("measured_at", commit) for k in runs}
        values[name] = dict(runs)
        where[name] = {k: at.get(k, commit) if isinstance(at, dict) else at for k in runs}
    return values, where


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45, 46])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--attackers", nargs="+", default=list(SITES), choices=SITES)
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        help="rows to rerun (name substrings; 'ceiling' for the reference row)",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=[],
        help="result files (same seeds and rounds) whose measurements are carried over, later ones first",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "poisoning.json")
    parser.add_argument(
        "--table-only", action="store_true", help="run nothing: the table of the --merge files' measurements"
    )
    args = parser.parse_args()
    rows_all = [*STRATEGIES, CEILING]
    chosen = [
        name for name in rows_all
        if args.only is None or name == BASELINE
        or any(o.lower() in name.lower() or (o.lower() == "ceiling" and name == CEILING) for o in args.only)
    ]  # fmt: skip
    if args.table_only:
        chosen = []
    logging.getLogger("flwr").setLevel(logging.ERROR)
    started = time.perf_counter()
    commit = machine()["commit"]
    values: dict[str, dict[str, list[float]]] = {}
    where: dict[str, dict[str, str]] = {}
    # carried over: the output's previous measurements, then the merged files' (later win)
    for source in ([args.output] if args.only else []) + list(args.merge):
        more, at = _previous(args, source)
        for name in more:
            values.setdefault(name, {}).update(more[name])
            where.setdefault(name, {}).update(at[name])
    with tempfile.TemporaryDirectory() as tmp:
        sites = build_demo_sites(Path(tmp))
        for name in chosen:
            strategy = STRATEGIES.get(name, DEMO_STRATEGY)
            runs = values.setdefault(name, {})
            at = where.setdefault(name, {})
            # The clean run: FedAvg's always (the baseline of this run), another's when not carried.
            fresh = name == BASELINE or CLEAN not in runs
            conditions = ([CLEAN] if name in STRATEGIES and fresh else []) + list(args.attackers)
            for condition in conditions:
                if condition == CLEAN:
                    mods = None
                elif name == CEILING:
                    mods = [withheld_mod(condition)]
                else:
                    mods = [poisoning_mod([Poisoning(condition, "sign-flip", 10.0)])]
                runs[condition] = [run(sites, strategy, s, args.rounds, mods) for s in args.seeds]
                at[condition] = commit
                print(f"  {name}, {condition}: {np.mean(runs[condition]):.4f}", flush=True)
    reference = float(np.mean(values[BASELINE][CLEAN]))
    present = [s for s in SITES if any(s in values.get(n, {}) for n in rows_all)]
    table_rows, summary = [], {}
    for name in rows_all:
        if name not in values:
            continue
        runs = values[name]
        means = {k: float(np.mean(v)) for k, v in runs.items()}
        cells: list[Any] = [name, f"{means[CLEAN]:.4f}" if CLEAN in means else "–"]
        for site in present:
            cells.append(
                f"{means[site]:.4f} ({100 * (means[site] - reference):+.1f})" if site in means else "–"
            )
        attacked = [means[s] - reference for s in present if s in means]
        cells.append(f"{100 * min(attacked):+.1f}" if attacked else "–")
        cells.append(sum(1 for d in attacked if d >= -0.02))
        cells.append(", ".join(sorted(set(where.get(name, {}).values()))))
        table_rows.append(cells)
        summary[name] = {"runs": runs, "means": means, "measured_at": where.get(name, {})}
    table = markdown_table(
        ["strategy", "clean", *[f"{s} attacks (pts vs clean FedAvg)" for s in present],
         "worst pts", "attackers within 2 pts", "measured at commit"],
        table_rows,
    )  # fmt: skip
    print()
    print(table)
    print(
        f"\nattack: the attacker sends global - 10 x its update delta from round 1; clean FedAvg "
        f"{reference:.4f}; seeds {args.seeds}; {time.perf_counter() - started:.0f} s"
    )
    payload = {
            "attack": {"sites": present, "kind": "sign-flip", "scale": 10.0},
            "rounds": args.rounds,
            "seeds": args.seeds,
            "clean_fedavg": reference,
            "strategies": summary,
            "table_markdown": table,
            "seconds": time.perf_counter() - started,
    }  # fmt: skip
    path = write_result("poisoning", payload, args.output)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
