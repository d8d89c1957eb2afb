"""Round time with and without secure aggregation (SecAgg+), the plain round measured in the
same run as the baseline.

1. The demo's job (logistic regression, 100 local steps) on the four UCI hospitals over an
   in-process Grid, every site training in its sandbox: mean seconds per round, plain FedAvg
   and SecAgg+, and how far apart the two final models are (quantisation error).
2. The protocol alone, at model sizes the heart-disease model does not reach: N sites whose
   ClientApp returns a random update of the given size at once (no training), so that the
   round time is the protocol's: key agreement, Shamir shares, masking and unmasking.

    python benchmarks/secagg.py [--rounds 3] [--sites 4] [--sizes 1000 100000 1000000] [--quick]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import markdown_table, write_result
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from aggregator.secure_aggregation import SecAggPlusSettings, aggregate_secure_round, run_secure_train_round
from aggregator.strategies import build_strategy
from clinical_node.secure_aggregation import secure_aggregation_mod
from deploy.inprocess import InProcessGrid, run_inprocess_job
from paroma.demo import build_demo_sites, demo_job
from paroma.jobspec import parse_job_spec
from paroma.wire import from_record, to_record


def federation(
    sites: list[Path], rounds: int, secure: bool
) -> tuple[list[float], dict[str, np.ndarray], float]:
    doc = demo_job(rounds, seed=42).to_dict()
    doc["privacy"]["secure_aggregation"] = secure
    result = run_inprocess_job(parse_job_spec(doc), sites)
    if result.status != "completed" or result.weights is None:
        raise RuntimeError(f"job failed: {result.reason}")
    return [r.seconds for r in result.rounds], result.weights, result.rounds[-1].mean_accuracy


def _instant_client(size: int) -> ClientApp:
    """A site that answers a train message at once with a random update of ``size`` numbers."""
    app = ClientApp(mods=[secure_aggregation_mod])

    @app.train()
    def train(message: Message, context: Context) -> Message:
        weights = from_record(message.content.array_records["arrays"])
        rng = np.random.default_rng(context.node_id)
        update = {k: (v + rng.normal(0, 0.01, v.shape)).astype(v.dtype) for k, v in weights.items()}
        return Message(
            RecordDict(
                {
                    "arrays": to_record(update),
                    "metrics": MetricRecord({"num-examples": 100 + context.node_id}),
                    "site": ConfigRecord({"site-id": f"site-{context.node_id}"}),
                }
            ),
            reply_to=message,
        )

    return app


def protocol_round(n_sites: int, size: int, secure: bool, repeats: int) -> float:
    doc = demo_job(1).to_dict()
    doc["privacy"]["secure_aggregation"] = secure
    job = parse_job_spec(doc)
    grid = InProcessGrid(_instant_client(size), n_sites)
    grid.take_serverapp_identity()
    arrays = to_record({"w": np.zeros(size, dtype=np.float32)})
    config = ConfigRecord({"job": job.to_json(), "server-round": 1})
    times = []
    for server_round in range(1, repeats + 1):
        strategy = build_strategy("fedavg", {}, n_sites)
        start = time.perf_counter()
        messages = strategy.configure_train(server_round, arrays, config, grid)
        if secure:
            secure_round = run_secure_train_round(grid, messages, server_round, SecAggPlusSettings())
            aggregate_secure_round(strategy, server_round, arrays, secure_round)
        else:
            strategy.aggregate_train(server_round, list(grid.send_and_receive(messages)))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sites", type=int, default=4, help="sites in the protocol-only rounds")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 rounds, sizes 1000 and 100000, 2 repeats")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.sizes, args.repeats = 2, [1_000, 100_000], 2
    for name in ("flwr", "paroma.sandbox"):
        logging.getLogger(name).setLevel(logging.ERROR)
    started = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        sites = build_demo_sites(Path(tmp))
        plain_times, plain_weights, plain_acc = federation(sites, args.rounds, secure=False)
        secure_times, secure_weights, secure_acc = federation(sites, args.rounds, secure=True)
    gap = max(float(np.max(np.abs(plain_weights[k] - secure_weights[k]))) for k in plain_weights)
    # round 1 includes each sandbox worker's start; the later rounds are the steady state
    plain_round = statistics.mean(plain_times[1:] or plain_times)
    secure_round = statistics.mean(secure_times[1:] or secure_times)
    rows: list[list[Any]] = [
        [
            "UCI heart disease, 4 sites, 100 local steps (14 parameters)",
            f"{plain_round:.2f} s",
            f"{secure_round:.2f} s",
            f"{secure_round / plain_round:.2f}x",
        ]
    ]
    protocol: dict[str, Any] = {}
    for size in args.sizes:
        plain = protocol_round(args.sites, size, secure=False, repeats=args.repeats)
        masked = protocol_round(args.sites, size, secure=True, repeats=args.repeats)
        protocol[str(size)] = {"plain_s": plain, "secagg_s": masked}
        rows.append(
            [
                f"protocol only, {args.sites} sites, {size:,} parameters",
                f"{plain * 1000:.1f} ms",
                f"{masked * 1000:.1f} ms",
                f"{masked / plain:.1f}x",
            ]
        )
    table = markdown_table(["round", "FedAvg (baseline)", "SecAgg+ FedAvg", "ratio"], rows)
    print(table)
    print(
        f"\nfinal models of the two federations differ by at most {gap:.2e} per parameter "
        f"(accuracy {plain_acc:.4f} plain, {secure_acc:.4f} SecAgg+); "
        f"{time.perf_counter() - started:.0f} s"
    )
    path = write_result(
        "secagg",
        {
            "rounds": args.rounds,
            "federation": {
                "plain_round_s": plain_times,
                "secagg_round_s": secure_times,
                "plain_mean_steady_s": plain_round,
                "secagg_mean_steady_s": secure_round,
                "max_weight_difference": gap,
                "plain_mean_accuracy": plain_acc,
                "secagg_mean_accuracy": secure_acc,
            },
            "protocol_only": {"sites": args.sites, "sizes": protocol},
            "settings": SecAggPlusSettings().__dict__,
            "table_markdown": table,
            "seconds": time.perf_counter() - started,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
