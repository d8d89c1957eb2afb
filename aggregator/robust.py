"""Outlier-filtered FedAvg: a robust aggregate that is FedAvg itself when no site misbehaves.

Coordinate-wise medians and trimmed means (FedMedian, FedTrimmedAvg) and Krum's single
choice are robust to a poisoning site but give up the sites' weighting and, on sites as
unequal as the heart-disease hospitals, lose about ten points of accuracy even without an
attack. Here each round's updates are compared as differences to the global model:
a site whose difference lies much farther from the coordinate-wise median difference than
the sites typically do (more than ``outlier_factor`` times the median of those distances,
a robust z-score in the manner of Rousseeuw & Croux's median absolute deviation) is left
out of the round, and the others are averaged exactly as the job's FedAvg weighs them
(``n ** weight_exponent``). A scaled or sign-flipped update from a minority of sites is far
from the median and goes; a clean round keeps every site, so the model is FedAvg's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from .strategies import SizeDampedFedAvg


@dataclass(frozen=True)
class OutlierVerdict:
    """Which updates a round keeps, with each one's distance to the median difference in
    units of the median of those distances."""

    kept: list[int]
    scores: list[float]


def outlier_verdict(deltas: Sequence[np.ndarray], outlier_factor: float, max_outliers: int) -> OutlierVerdict:
    """Keep every update except at most ``max_outliers`` whose distance to the coordinate-wise
    median difference exceeds ``outlier_factor`` times the median distance (farthest first)."""
    if len(deltas) < 3:
        # With one or two sites there is no majority to tell an outlier by.
        return OutlierVerdict(list(range(len(deltas))), [0.0] * len(deltas))
    stacked = np.stack([np.asarray(d, dtype=np.float64).ravel() for d in deltas])
    centre = np.median(stacked, axis=0)
    distances = np.linalg.norm(stacked - centre, axis=1)
    typical = float(np.median(distances))
    if typical <= 0.0:
        scores = [0.0 if d == 0.0 else float("inf") for d in distances]
    else:
        scores = [float(d / typical) for d in distances]
    ranked = sorted(range(len(deltas)), key=lambda i: -scores[i])
    dropped = {i for i in ranked[:max_outliers] if scores[i] > outlier_factor}
    return OutlierVerdict([i for i in range(len(deltas)) if i not in dropped], scores)


class OutlierFilteredFedAvg(SizeDampedFedAvg):
    """FedAvg (site weights ``n ** weight_exponent``) over the updates ``outlier_verdict``
    keeps; at most ``num_malicious_nodes`` are left out per round."""

    def __init__(self, *, outlier_factor: float = 3.0, num_malicious_nodes: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if outlier_factor <= 1.0:
            raise ValueError(f"outlier_factor {outlier_factor} must be > 1")
        if num_malicious_nodes < 0:
            raise ValueError(f"num_malicious_nodes {num_malicious_nodes} must be >= 0")
        self.outlier_factor = outlier_factor
        self.num_malicious_nodes = num_malicious_nodes
        self._global: dict[str, np.ndarray] = {}
        self.left_out: dict[int, list[int]] = {}  # round -> node ids left out

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = {name: array.numpy() for name, array in arrays.items()}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid = [r for r in replies if not r.has_error()]
        if len(valid) < 3 or not self._global:
            return super().aggregate_train(server_round, valid)
        deltas = []
        for reply in valid:
            arrays = reply.content.array_records[self.arrayrecord_key]
            deltas.append(
                np.concatenate(
                    [
                        (arrays[name].numpy().astype(np.float64) - value).ravel()
                        for name, value in self._global.items()
                    ]
                )
            )
        verdict = outlier_verdict(deltas, self.outlier_factor, self.num_malicious_nodes)
        self.left_out[server_round] = [
            valid[i].metadata.src_node_id for i in range(len(valid)) if i not in verdict.kept
        ]
        arrays_out, metrics = super().aggregate_train(server_round, [valid[i] for i in verdict.kept])
        if metrics is not None:
            metrics["sites-left-out"] = len(valid) - len(verdict.kept)
            metrics["max-outlier-score"] = max(verdict.scores)
        return arrays_out, metrics
