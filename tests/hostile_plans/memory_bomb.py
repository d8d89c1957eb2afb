"""Hostile plan: grabs memory until something stops it."""

from clinical_node.plans.logistic_regression import build_model, evaluate  # noqa: F401


def train(model, x, y, hyper):
    # Large steps of calloc'd memory (bytes(n) does not write its pages): the address-space
    # limit stops it within a few allocations, before any CPU time is spent zero-filling
    # pages, so the CPU-time limit cannot be hit first on a busy machine.
    hoard = []
    while True:
        hoard.append(bytes(1024 * 1024 * 1024))
