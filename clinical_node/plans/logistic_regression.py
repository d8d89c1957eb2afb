"""Training plan: logistic regression (FLamby's Fed-Heart-Disease baseline: Linear + sigmoid,
binary cross-entropy)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from clinical_node.plans.local_training import evaluate_binary, train_binary

PLAN_NAME = "logistic-regression"
PLAN_API = 1
METRICS = ("train_loss", "local_steps", "loss", "accuracy")


class LogisticRegression(nn.Module):
    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(x))


def build_model(n_features: int, hyper: Mapping[str, Any]) -> nn.Module:
    return LogisticRegression(n_features)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, hyper: Mapping[str, Any]) -> dict[str, float]:
    return train_binary(model, x, y, hyper)


def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, hyper: Mapping[str, Any]
) -> dict[str, float]:
    return evaluate_binary(model, x, y)
