"""Per-round overhead of the training sandbox, per backend, against the same training in-process.

The task is the demo's: one round of FLamby Fed-Heart-Disease logistic regression on the
Cleveland hospital's extracted tensors (100 local steps, batch 4), training then evaluation.
For each backend: its probe, the worker's cold start (interpreter + torch), then ROUNDS warm
rounds through the node's executor; the overhead of a round is its wall time minus the
in-process time of the same round, split into hand-over (writing the inputs), the wait for
the answer beyond the plan's own time, and collection (reading and checking the update).
Teardown is stopping the worker and wiping its folders.

    .venv/bin/python benchmarks/sandbox.py [--rounds 20]

Prints a table and writes benchmarks/results/sandbox.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from clinical_node.datasets.uci_heart import hospital_bundle
from clinical_node.features import extract
from clinical_node.node import UnfilteredView
from clinical_node.plans import TrainingPlan
from clinical_node.sandbox import BACKENDS, SandboxExecutor
from clinical_node.site import Site
from clinical_node.training import InProcessExecutor, LocalResult, LocalTask, validate_update
from paroma.demo import demo_job
from paroma.jobspec import builtin_feature_spec

OUT = Path(os.environ.get("PAROMA_BENCHMARK_RESULTS") or Path(__file__).parent / "results") / "sandbox.json"


def cleveland_tasks() -> tuple[LocalTask, LocalTask]:
    job = demo_job(rounds=1)
    with tempfile.TemporaryDirectory() as folder:
        site = Site.create(Path(folder) / "cleveland", "cleveland", "Cleveland Clinic")
        site.fhir.ingest_bundle(hospital_bundle("cleveland"))
        data = extract(
            builtin_feature_spec("flamby-heart-disease"), UnfilteredView(site).cohort(job, 1).resources
        )
        site.close()
    assert len(data.y_train) > 100, "the Cleveland cohort should not be empty"
    plan = TrainingPlan.builtin("logistic-regression")
    weights = {"linear.weight": np.zeros((1, 13), np.float32), "linear.bias": np.zeros((1,), np.float32)}
    hyper = job.hyper(1, 0)
    train = LocalTask("train", plan, 13, weights, hyper, data.x_train, data.y_train, 60.0, job.sha256)
    evaluate = LocalTask("evaluate", plan, 13, weights, hyper, data.x_test, data.y_test, 60.0, job.sha256)
    return train, evaluate


def one_round(executor: Any, train: LocalTask, evaluate: LocalTask) -> tuple[float, LocalResult, LocalResult]:
    start = time.perf_counter()
    trained = executor.run(train)
    validate_update(train.weights, trained, kind="train")
    evaluated = executor.run(evaluate)
    return time.perf_counter() - start, trained, evaluated


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def measure(
    backend: str, rounds: int, train: LocalTask, evaluate: LocalTask, inproc: float
) -> dict[str, Any]:
    probe = SandboxExecutor.probe(backend)
    if not probe.ok:
        return {"backend": backend, "available": False, "reason": probe.reason}
    executor = SandboxExecutor(backend)
    start = time.perf_counter()
    _, first, _ = one_round(executor, train, evaluate)
    cold = time.perf_counter() - start
    walls, handover, wait, collect = [], [], [], []
    for _ in range(rounds):
        wall, trained, evaluated = one_round(executor, train, evaluate)
        walls.append(wall)
        for result in (trained, evaluated):
            t = result.timings
            handover.append(t["handover_s"])
            wait.append(t["answer_s"] - t["plan_s"])
            collect.append(t["collect_s"])
    start = time.perf_counter()
    executor.close()
    teardown = time.perf_counter() - start
    return {
        "backend": backend,
        "available": True,
        "probe_s": probe.seconds,
        "cold_start_s": first.timings["start_s"],
        "first_round_s": cold,
        "round_median_s": median(walls),
        "overhead_median_s": median(walls) - inproc,
        "handover_median_s": median(handover) * 2,
        "wait_beyond_plan_median_s": median(wait) * 2,
        "collect_median_s": median(collect) * 2,
        "teardown_s": teardown,
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    console = Console(width=150)
    train, evaluate = cleveland_tasks()
    inprocess = InProcessExecutor()
    one_round(inprocess, train, evaluate)  # torch's first-use loading, paid outside the timing
    inproc = median([one_round(inprocess, train, evaluate)[0] for _ in range(args.rounds)])
    rows = [measure(b, args.rounds, train, evaluate, inproc) for b in BACKENDS]

    table = Table(title=f"Sandbox overhead per round (train + evaluate, median of {args.rounds} rounds)")
    for column in (
        "backend",
        "probe",
        "cold start",
        "round",
        "in-process",
        "overhead",
        "hand-over",
        "wait",
        "collect",
        "teardown",
    ):
        table.add_column(column, justify="left" if column == "backend" else "right")
    ms = lambda s: f"{s * 1000:.1f} ms"  # noqa: E731
    for row in rows:
        if not row["available"]:
            table.add_row(row["backend"], f"unavailable: {row['reason']}", *[""] * 8)
            continue
        table.add_row(
            row["backend"],
            ms(row["probe_s"]),
            f"{row['cold_start_s']:.2f} s",
            ms(row["round_median_s"]),
            ms(inproc),
            ms(row["overhead_median_s"]),
            ms(row["handover_median_s"]),
            ms(row["wait_beyond_plan_median_s"]),
            ms(row["collect_median_s"]),
            ms(row["teardown_s"]),
        )
    console.print(table)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "task": "FLamby Fed-Heart-Disease logistic regression, Cleveland, 100 local steps + evaluation",
                "in_process_round_median_s": inproc,
                "backends": rows,
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load": os.getloadavg()},
            },
            indent=2,
        )
    )
    console.print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
