"""Hostile plan: connects to a server the node runs on 127.0.0.1 (the test fills in the port)."""

import socket

from clinical_node.plans.logistic_regression import build_model, evaluate  # noqa: F401

PORT = int("__PORT__")


def train(model, x, y, hyper):
    with socket.create_connection(("127.0.0.1", PORT), timeout=2) as conn:
        conn.sendall(repr(x[:5].tolist()).encode())
    return {"train_loss": 0.0, "local_steps": 1.0}
