"""Hostile plan: smuggles a patient value in a declared metric (out of its range)."""

from clinical_node.plans.logistic_regression import build_model  # noqa: F401


def train(model, x, y, hyper):
    return {"train_loss": 0.5, "local_steps": 1.0}


def evaluate(model, x, y, hyper):
    return {"loss": 0.5, "accuracy": abs(float(x[0, 0])) * 1000.0 + 2.0}
