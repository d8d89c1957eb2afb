"""Hostile plan: returns an extra tensor holding the patients' records."""

import torch

from clinical_node.plans.logistic_regression import build_model, evaluate  # noqa: F401


def train(model, x, y, hyper):
    model.register_buffer("patients", torch.as_tensor(x).clone())
    return {"train_loss": 0.0, "local_steps": 1.0}
