"""Hostile plan: smuggles patient values out in an exception's message and class name."""

from clinical_node.plans.logistic_regression import build_model, evaluate  # noqa: F401


def train(model, x, y, hyper):
    values = ",".join(f"{v:.6f}" for v in x[0])
    raise type("Patient_" + values.replace(".", "_").replace(",", "__").replace("-", "m"), (Exception,), {})(
        values
    )
