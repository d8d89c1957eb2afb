"""FLamby's published Fed-Heart-Disease results, the numbers the platform is compared with.

Source: FLamby (Owkin et al., NeurIPS 2022 Datasets and Benchmarks), per-seed result tables
for seeds 42-46; the raw tables are in ``benchmarks/reference/flamby-fed-heart-disease``.
Per-centre test accuracy, mean over 5 seeds; "mean" is the unweighted mean of the centres.
"""

from __future__ import annotations

CENTRES = ("cleveland", "hungarian", "switzerland", "va")

FLAMBY_HEART: dict[str, dict[str, float]] = {
    "Pooled Training": {
        "cleveland": 0.783,
        "hungarian": 0.764,
        "switzerland": 0.750,
        "va": 0.644,
        "mean": 0.7353,
    },
    "FedAvg": {
        "cleveland": 0.731,
        "hungarian": 0.719,
        "switzerland": 0.650,
        "va": 0.640,
        "mean": 0.6850,
    },
    "FedProx": {
        "cleveland": 0.731,
        "hungarian": 0.719,
        "switzerland": 0.650,
        "va": 0.640,
        "mean": 0.6850,
    },
    "FedAdam": {
        "cleveland": 0.752,
        "hungarian": 0.746,
        "switzerland": 0.738,
        "va": 0.667,
        "mean": 0.7255,
    },
    "FedYogi": {
        "cleveland": 0.760,
        "hungarian": 0.753,
        "switzerland": 0.738,
        "va": 0.676,
        "mean": 0.7314,
    },
    "FedAdagrad": {
        "cleveland": 0.760,
        "hungarian": 0.753,
        "switzerland": 0.738,
        "va": 0.676,
        "mean": 0.7314,
    },
    "Scaffold": {
        "cleveland": 0.727,
        "hungarian": 0.719,
        "switzerland": 0.650,
        "va": 0.640,
        "mean": 0.6840,
    },
    "Cyclic": {
        "cleveland": 0.758,
        "hungarian": 0.762,
        "switzerland": 0.713,
        "va": 0.640,
        "mean": 0.7180,
    },
    "Local 0 (Cleveland)": {
        "cleveland": 0.746,
        "hungarian": 0.760,
        "switzerland": 0.725,
        "va": 0.658,
        "mean": 0.7221,
    },
}
BEST_FEDERATED = "FedYogi"
