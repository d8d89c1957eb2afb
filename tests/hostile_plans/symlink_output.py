"""Hostile plan: swaps the worker's update file for a symlink to a site file (the test
fills in the path), hoping the node (root) reads it and sends it on."""

import os

import numpy

from clinical_node.plans.logistic_regression import build_model, evaluate  # noqa: F401

TARGET = "__TARGET__"


def _link(file, *args, **kwargs):
    name = file.name
    file.close()
    os.unlink(name)
    os.symlink(TARGET, name)


def train(model, x, y, hyper):
    numpy.savez = _link
    return {"train_loss": 0.0, "local_steps": 1.0}
