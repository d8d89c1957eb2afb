"""Training plan: a small multi-layer perceptron for binary classification
(one hidden ReLU layer, ``hidden`` units, default 16)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from clinical_node.plans.local_training import evaluate_binary, train_binary

PLAN_NAME = "mlp"
PLAN_API = 1
METRICS = ("train_loss", "local_steps", "loss", "accuracy")


class MLP(nn.Module):
    def __init__(self, n_features: int, hidden: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(n_features, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.out(torch.relu(self.hidden(x))))


def build_model(n_features: int, hyper: Mapping[str, Any]) -> nn.Module:
    return MLP(n_features, int(hyper.get("hidden", 16)))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, hyper: Mapping[str, Any]) -> dict[str, float]:
    return train_binary(model, x, y, hyper)


def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, hyper: Mapping[str, Any]
) -> dict[str, float]:
    return evaluate_binary(model, x, y)
