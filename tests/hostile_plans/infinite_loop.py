"""Hostile plan: an infinite loop (burns CPU)."""

from clinical_node.plans.logistic_regression import build_model, evaluate  # noqa: F401


def train(model, x, y, hyper):
    n = 0
    while True:
        n += 1
