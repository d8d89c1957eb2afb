"""Hostile plan: returns NaN weights."""

from clinical_node.plans.logistic_regression import build_model, evaluate  # noqa: F401


def train(model, x, y, hyper):
    model.linear.weight.data.fill_(float("nan"))
    return {"train_loss": 0.0, "local_steps": 1.0}
