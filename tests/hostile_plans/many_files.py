"""Hostile plan: fills the disk with many files, each under the file-size limit."""

from clinical_node.plans.logistic_regression import build_model, evaluate  # noqa: F401


def train(model, x, y, hyper):
    block = b"\1" * (8 * 1024 * 1024)
    for i in range(1280):
        with open(f"part-{i}.bin", "wb") as fh:
            fh.write(block)
    return {"train_loss": 0.0, "local_steps": 1.0}
