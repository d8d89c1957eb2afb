"""Hostile plan: tries to read each of the site's secrets (the test fills in the paths) and,
if any read works, returns normally, carrying the first byte out in the bias."""

import json

from clinical_node.plans.logistic_regression import build_model, evaluate  # noqa: F401

TARGETS = json.loads("""__TARGETS__""")


def train(model, x, y, hyper):
    error = None
    for target in TARGETS:
        try:
            with open(target, "rb") as fh:
                secret = fh.read(4)
        except OSError as exc:
            error = exc
            continue
        model.linear.bias.data.fill_(float(secret[0]) if secret else 0.0)
        return {"train_loss": 0.0, "local_steps": 1.0}
    raise error
