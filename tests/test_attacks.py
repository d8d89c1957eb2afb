"""Scripted poisoning: the attack's arithmetic, and a short federation in which a poisoning
site ruins FedAvg while MultiKrum keeps the model close to the clean one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deploy.attacks import AttackError, Poisoning, poisoning_mod
from deploy.inprocess import run_inprocess_job
from paroma.demo import demo_job
from paroma.jobspec import parse_job_spec


def test_attack_arithmetic() -> None:
    sent = {"w": np.array([1.0, 2.0], dtype=np.float32)}
    honest = {"w": np.array([1.5, 1.0], dtype=np.float32)}
    flipped = Poisoning("a", "sign-flip", 10.0).apply(sent, honest, seed=1)["w"]
    np.testing.assert_allclose(flipped, [1.0 - 10 * 0.5, 2.0 - 10 * -1.0])
    scaled = Poisoning("a", "scale", 3.0).apply(sent, honest, seed=1)["w"]
    np.testing.assert_allclose(scaled, [1.0 + 1.5, 2.0 - 3.0])
    noisy = Poisoning("a", "noise", noise_std=0.1).apply(sent, honest, seed=1)["w"]
    assert (
        noisy.dtype == np.float32
        and not np.allclose(noisy, honest["w"])
        and np.abs(noisy - honest["w"]).max() < 1
    )
    with pytest.raises(AttackError, match="not one of"):
        Poisoning("a", "bribe")
    with pytest.raises(AttackError):
        Poisoning("a", scale=-1)


def _final(sites: list[Path], strategy: dict, poisoned: bool) -> float:
    doc = demo_job(2, seed=42).to_dict()
    doc["strategy"] = strategy
    mods = [poisoning_mod([Poisoning("cleveland", "sign-flip", 10.0)])] if poisoned else None
    result = run_inprocess_job(parse_job_spec(doc), sites, mods=mods)
    assert result.status == "completed", result.reason
    return result.rounds[-1].mean_accuracy


@pytest.mark.slow
def test_poisoning_site_ruins_fedavg_but_not_multikrum(uci_sites: Path) -> None:
    sites = sorted(p for p in uci_sites.iterdir() if (p / "site.toml").exists())
    fedavg = {"name": "fedavg", "params": {"weight_exponent": 0.875}}
    multikrum = {"name": "multikrum", "params": {"num_malicious_nodes": 1, "num_nodes_to_select": 3}}
    clean = _final(sites, fedavg, poisoned=False)
    assert _final(sites, fedavg, poisoned=True) < clean - 0.15
    assert _final(sites, multikrum, poisoned=True) > clean - 0.05
