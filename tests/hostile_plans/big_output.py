"""Hostile plan: writes a 10 GB output file."""

from clinical_node.plans.logistic_regression import build_model, evaluate  # noqa: F401


def train(model, x, y, hyper):
    block = b"\0" * (16 * 1024 * 1024)
    with open("output.bin", "wb") as fh:
        for _ in range(640):
            fh.write(block)
    return {"train_loss": 0.0, "local_steps": 1.0}
