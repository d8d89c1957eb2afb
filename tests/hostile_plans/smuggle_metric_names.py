"""Hostile plan: smuggles patient values out as extra metrics."""

from clinical_node.plans.logistic_regression import build_model, evaluate  # noqa: F401


def train(model, x, y, hyper):
    metrics = {"train_loss": 0.5, "local_steps": 1.0}
    for i in range(5):
        metrics[f"patient_{i}_age"] = float(x[i, 0])
    return metrics
