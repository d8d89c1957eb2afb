"""The sandbox-worker budget of large simulations: never more workers alive than the budget,
and exactly ``sites - (budget - 1)`` restarts per pass whatever order the strategy samples
the sites in."""

from __future__ import annotations

import random

import pytest

from deploy.worker_budget import WorkerBudget


def _passes(sites: int, budget: int, passes: int, seed: int) -> tuple[int, list[int]]:
    """Simulate ``passes`` shuffled passes; the peak of live workers and restarts per pass."""
    rng = random.Random(seed)
    policy = WorkerBudget(budget)
    live: set[str] = set()
    peak, restarts = 0, []
    for _ in range(passes):
        order = [f"site-{i}" for i in range(sites)]
        rng.shuffle(order)
        started = 0
        for site in order:
            if site not in live:
                live.add(site)
                started += 1
            peak = max(peak, len(live))
            for folder, sha in policy.answered(site, "job"):
                assert sha == "job"
                live.discard(folder)
        restarts.append(started)
    return peak, restarts


@pytest.mark.parametrize(("sites", "budget"), [(10, 40), (50, 40), (100, 40), (7, 1), (5, 5)])
def test_budget_holds_and_restarts_do_not_depend_on_the_order(sites: int, budget: int) -> None:
    peak, restarts = _passes(sites, budget, passes=6, seed=sites)
    assert peak <= budget
    # the first pass starts every worker; later ones only those outside the residents
    assert restarts[0] == sites
    assert restarts[1:] == [max(0, sites - (budget - 1))] * 5


def test_a_budget_outside_one_process_s_sandbox_uids_is_refused() -> None:
    with pytest.raises(ValueError, match="max_live must be >= 1"):
        WorkerBudget(0)
    with pytest.raises(ValueError, match="max_live must be <= 64"):
        WorkerBudget(65)
