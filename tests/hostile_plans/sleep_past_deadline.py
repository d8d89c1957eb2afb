"""Hostile plan: sleeps past the round's deadline (uses no CPU)."""

import time

from clinical_node.plans.logistic_regression import build_model, evaluate  # noqa: F401


def train(model, x, y, hyper):
    time.sleep(3600)
    return {"train_loss": 0.0, "local_steps": 1.0}
