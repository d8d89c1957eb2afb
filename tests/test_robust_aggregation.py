"""Outlier-filtered FedAvg: on honest updates it is the job's FedAvg exactly; a sign-flipped,
scaled update from one site is left out and the rest averaged with FedAvg's weights. Also the
benchmark report builder (benchmarks/run_all.py) on result files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from aggregator.robust import OutlierFilteredFedAvg, outlier_verdict
from aggregator.strategies import SizeDampedFedAvg, StrategyError, build_strategy
from deploy.attacks import Poisoning
from deploy.inprocess import InProcessGrid
from paroma.wire import from_record, to_record

ROOT = Path(__file__).resolve().parent.parent


def test_the_far_off_update_is_the_one_left_out() -> None:
    rng = np.random.default_rng(3)
    honest = [rng.normal(0, 1, 20) for _ in range(3)]
    attacker = -10 * rng.normal(0, 1, 20)
    verdict = outlier_verdict([honest[0], attacker, honest[1], honest[2]], 2.5, 1)
    assert verdict.kept == [0, 2, 3]
    assert verdict.scores[1] == max(verdict.scores) > 2.5
    assert outlier_verdict([*honest, honest[0] * 1.1], 2.5, 1).kept == [0, 1, 2, 3]
    # never more than num_malicious_nodes, and no verdict without a majority
    assert len(outlier_verdict([honest[0], attacker, 2 * attacker, honest[1]], 2.5, 1).kept) == 3
    assert outlier_verdict([honest[0], attacker], 2.5, 1).kept == [0, 1]


def _reply(node: int, weights: dict[str, np.ndarray], n: int) -> Message:
    instruction = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    instruction.metadata.__dict__["_src_node_id"] = 0
    return Message(
        RecordDict({"arrays": to_record(weights), "metrics": MetricRecord({"num-examples": n})}),
        reply_to=instruction,
    )


def test_filtered_fedavg_is_fedavg_without_the_poisoned_update() -> None:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    rng = np.random.default_rng(5)
    model = {"w": rng.normal(0, 1, (1, 13)).astype(np.float32), "b": np.zeros(1, np.float32)}
    sizes = [199, 172, 30, 90]
    updates = [
        {k: v + rng.normal(0, 0.1, v.shape).astype(np.float32) for k, v in model.items()} for _ in sizes
    ]
    params = {"weight_exponent": 0.875, "outlier_factor": 2.5}
    grid = InProcessGrid(None, 4)  # type: ignore[arg-type]
    config = ConfigRecord({})

    def aggregate(strategy: object, replies: list[Message]) -> dict[str, np.ndarray]:
        list(strategy.configure_train(1, to_record(model), config, grid))  # type: ignore[attr-defined]
        arrays, _ = strategy.aggregate_train(1, replies)  # type: ignore[attr-defined]
        assert arrays is not None
        return from_record(arrays)

    replies = [_reply(i + 1, u, n) for i, (u, n) in enumerate(zip(updates, sizes, strict=True))]
    filtered = build_strategy("filteredfedavg", params, 4)
    assert isinstance(filtered, OutlierFilteredFedAvg)
    plain = SizeDampedFedAvg(weight_exponent=0.875, min_available_nodes=4, min_train_nodes=4)
    clean_filtered, clean_plain = aggregate(filtered, replies), aggregate(plain, replies)
    for k in model:
        np.testing.assert_array_equal(clean_filtered[k], clean_plain[k])
    assert filtered.left_out[1] == []

    flipped = Poisoning("cleveland", "sign-flip", 10.0).apply(model, updates[0], seed=1)
    poisoned = [_reply(1, flipped, sizes[0]), *replies[1:]]
    result = aggregate(filtered, poisoned)
    honest = aggregate(plain, replies[1:])
    for k in model:
        np.testing.assert_allclose(result[k], honest[k], rtol=1e-6)
    assert filtered.left_out[1] == [1]
    with pytest.raises(StrategyError, match="outlier_factor"):
        build_strategy("filteredfedavg", {"outlier_factor": 0.5}, 4)


def test_benchmark_report_shows_each_table_its_baseline_and_machine(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import run_all

    results = ROOT / "benchmarks" / "results" / "quick-test-report"
    results.mkdir(parents=True, exist_ok=True)
    try:
        machine = {"cpu": "Test CPU", "cores": 2, "commit": "abc1234", "date": "2026-12-01T00:00:00+00:00"}
        (results / "secagg.json").write_text(
            json.dumps(
                {"machine": machine, "table_markdown": "| a | b |\n|---|---|\n| 1 | 2 |", "seconds": 3}
            )
        )
        (results / "newcomer.json").write_text(json.dumps({"machine": "Linux", "speed_ms": 1.5}))
        benchmarks = run_all.known() | {"newcomer": run_all.Benchmark("newcomer", "Newcomer", "none")}
        text = run_all.report(results, benchmarks, {"pce": (False, 2.0)}, quick=True)
    finally:
        for f in results.iterdir():
            f.unlink()
        results.rmdir()
    assert "## Secure aggregation (SecAgg+)" in text and "| 1 | 2 |" in text
    assert "baseline: the same rounds with plain FedAvg in the same run" in text
    assert "Machine: Test CPU; 2 cores; commit abc1234" in text and "the run took 3 s" in text
    assert "| speed_ms | 1.5000 |" in text
    assert "**The run failed**" in text and "Quick run" in text
    assert text.count("No result yet.") == len(benchmarks) - 2
