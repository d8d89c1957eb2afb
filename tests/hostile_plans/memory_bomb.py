"""Hostile plan: grabs memory until something stops it."""

from clinical_node.plans.logistic_regression import build_model, evaluate  # noqa: F401


def train(model, x, y, hyper):
    hoard = []
    while True:
        hoard.append(bytearray(256 * 1024 * 1024))
