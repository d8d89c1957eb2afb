"""Local training loops shared by the built-in training plans.

FLamby's protocol: a fixed number of local steps (mini-batches), the loader reshuffling at
each pass over the data, the last partial batch kept. FedProx's proximal term
(mu/2 * ||w - w_global||^2, Li et al. 2020) is added when ``proximal_mu`` > 0.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn


def _optimizer(model: nn.Module, hyper: Mapping[str, Any]) -> torch.optim.Optimizer:
    name = str(hyper.get("optimizer", "sgd")).lower()
    lr = float(hyper.get("lr", 0.01)) * float(hyper.get("lr_decay", 1.0)) ** max(
        int(hyper.get("round", 1)) - 1, 0
    )
    # The L2 penalty applies to weight matrices only, never to biases: a penalised intercept
    # would pull every site's prevalence towards 0.5.
    weight_decay = float(hyper.get("weight_decay", 0.0))
    weights = [p for p in model.parameters() if p.ndim > 1]
    others = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": weights, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(hyper.get("momentum", 0.0)))
    raise ValueError(f"optimizer {name!r} is not one of sgd, adam")


def train_binary(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    hyper: Mapping[str, Any],
) -> dict[str, float]:
    """Train a model whose output is a probability, with binary cross-entropy."""
    steps = int(hyper.get("local_steps", 100))
    batch = int(hyper.get("batch_size", 4))
    mu = float(hyper.get("proximal_mu", 0.0))
    optimizer = _optimizer(model, hyper)
    loss_fn = nn.BCELoss()
    global_params = [p.detach().clone() for p in model.parameters()] if mu > 0 else []
    n = len(y)
    if n == 0:
        return {"train_loss": 0.0, "local_steps": 0.0}
    y = y.reshape(-1, 1)
    model.train()
    total, done = 0.0, 0
    # One shuffled loader per site for the whole job, as in FLamby: round r continues the
    # stream of batches where round r-1 stopped (derived again here, so that no state has
    # to survive between rounds).
    stream = _batches(n, batch, int(hyper.get("stream_seed", hyper.get("seed", 0))))
    skip = (int(hyper.get("round", 1)) - 1) * steps if "stream_seed" in hyper else 0
    for idx in itertools.islice(stream, skip, skip + steps):
        optimizer.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        if mu > 0:
            prox = sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_params, strict=True))
            loss = loss + (mu / 2.0) * prox
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
        done += 1
    return {"train_loss": total / max(done, 1), "local_steps": float(done)}


def _batches(n: int, batch: int, seed: int) -> Iterator[torch.Tensor]:
    """Mini-batch indices forever: a new permutation at each pass, the last batch partial."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch):
            yield order[start : start + batch]


@torch.no_grad()
def evaluate_binary(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Loss and accuracy at threshold 0.5 (FLamby's metric)."""
    if len(y) == 0:
        return {"loss": 0.0, "accuracy": 0.0}
    model.eval()
    prob = model(x).reshape(-1).clamp(1e-7, 1 - 1e-7)
    loss = nn.functional.binary_cross_entropy(prob, y.reshape(-1))
    accuracy = ((prob >= 0.5).float() == y.reshape(-1)).float().mean()
    return {"loss": float(loss), "accuracy": float(accuracy)}
