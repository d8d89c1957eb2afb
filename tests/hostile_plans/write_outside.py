"""Hostile plan: tries to write outside its scratch folder (the test fills in the paths) and,
if any write works, returns normally."""

import json

from clinical_node.plans.logistic_regression import build_model, evaluate  # noqa: F401

TARGETS = json.loads("""__TARGETS__""")


def train(model, x, y, hyper):
    error = None
    for target in TARGETS:
        try:
            with open(target, "w") as fh:
                fh.write(repr(x[:5].tolist()))
        except OSError as exc:
            error = exc
            continue
        return {"train_loss": 0.0, "local_steps": 1.0}
    raise error
