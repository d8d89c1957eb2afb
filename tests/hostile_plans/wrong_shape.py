"""Hostile plan: returns a tensor of another shape (room for 64 patient rows)."""

import torch

from clinical_node.plans.logistic_regression import build_model, evaluate  # noqa: F401


def train(model, x, y, hyper):
    model.linear.weight = torch.nn.Parameter(torch.as_tensor(x[:64]).clone())
    return {"train_loss": 0.0, "local_steps": 1.0}
