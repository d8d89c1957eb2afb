"""Hostile plan: grabs memory until something stops it."""

from clinical_node.plans.logistic_regression import build_model, evaluate  # noqa: F401


def train(model, x, y, hyper):
    # Large steps: the address-space limit stops it within a few allocations, long before
    # zero-filling pages uses up the CPU-time limit on a busy machine.
    hoard = []
    while True:
        hoard.append(bytearray(1024 * 1024 * 1024))
