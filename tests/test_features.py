"""Feature extraction: FLamby's Fed-Heart-Disease tensors reproduced from FHIR, and the spec."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from clinical_node.datasets.uci_heart import source_dir
from clinical_node.features import FeatureSpec, FeatureSpecError, Split, extract, split_indices
from clinical_node.site import Site
from paroma.jobspec import builtin_feature_spec

HOSPITAL_FILES = ["cleveland", "hungarian", "switzerland", "va"]


def flamby_oracle(hospital: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """FLamby's pipeline re-stated on the raw file: drop slope/ca/thal, drop rows with '?',
    one-hot cp and restecg (first level dropped), stratified 66/34 split (random_state 43),
    z-score with the centre's train mean and unbiased std."""
    rows = []
    with (source_dir() / f"processed.{hospital}.data").open() as handle:
        for fields in csv.reader(handle):
            kept = fields[:10] + fields[13:14]
            if "?" in kept:
                continue
            rows.append([float(v) for v in kept])
    data = np.array(rows)
    age, sex, cp, trestbps, chol, fbs, restecg, thalach, exang, oldpeak, num = data.T
    x = np.column_stack(
        [age, sex, trestbps, chol, fbs, thalach, exang, oldpeak,
         cp == 2, cp == 3, cp == 4, restecg == 1, restecg == 2]
    ).astype(float)  # fmt: skip
    y = (num > 0).astype(np.float32)
    values, counts = np.unique(y, return_counts=True)
    stratify = y if len(values) > 1 and all(c > 2 for c in counts) else None
    train, test = train_test_split(
        np.arange(len(y)),
        test_size=1.0 - 0.66,
        train_size=0.66,
        random_state=43,
        shuffle=True,
        stratify=stratify,
    )
    train, test = np.sort(train), np.sort(test)
    mean, std = x[train].mean(0), x[train].std(0, ddof=1)
    norm = (x - mean) / (std + 1e-9)
    return norm[train], y[train], norm[test], y[test]


@pytest.mark.parametrize(
    ("hospital", "sizes"),
    [
        ("cleveland", (199, 104)),
        ("hungarian", (172, 89)),
        ("switzerland", (30, 16)),
        ("va", (85, 45)),
    ],
)
def test_flamby_features_from_fhir_match_flamby(
    uci_sites_template: Path, hospital: str, sizes: tuple[int, int]
) -> None:
    spec = builtin_feature_spec("flamby-heart-disease")
    site = Site.open(uci_sites_template / hospital)
    data = extract(spec, site.fhir.iter_resources())
    site.close()
    assert (data.n_train, data.n_test) == sizes
    assert data.x_train.shape[1] == 13
    x_train, y_train, x_test, y_test = flamby_oracle(hospital)
    np.testing.assert_allclose(data.x_train, x_train, atol=1e-5)
    np.testing.assert_allclose(data.x_test, x_test, atol=1e-5)
    np.testing.assert_array_equal(data.y_train, y_train)
    np.testing.assert_array_equal(data.y_test, y_test)


def test_hash_split_is_stable_when_the_cohort_changes() -> None:
    pids = [f"p{i:04d}" for i in range(500)]
    labels = np.zeros(500, dtype=np.float32)
    split = Split("hash", 0.3, 7)
    _, test = split_indices(pids, labels, split)
    assert 0.25 < len(test) / 500 < 0.35
    test_ids = {pids[i] for i in test}
    fewer = [p for p in pids if p != "p0003" and p != "p0100"]
    _, test2 = split_indices(fewer, labels[: len(fewer)], split)
    assert {fewer[i] for i in test2} == test_ids - {"p0003", "p0100"}


def test_missing_value_policies(site: Site) -> None:
    patients = [
        {
            "resourceType": "Patient",
            "id": f"p{i}",
            "gender": "female" if i % 2 else "male",
            "birthDate": "1950-01-01",
        }
        for i in range(6)
    ]
    obs = []
    for i in range(6):
        obs.append(_obs(f"p{i}", "label", value_integer=i % 2))
        if i != 0:
            obs.append(_obs(f"p{i}", "a", quantity=float(i)))
        if i != 1:
            obs.append(_obs(f"p{i}", "b", quantity=10.0 * i))
    spec_doc = {
        "name": "t",
        "normalization": "none",
        "split": {"method": "hash", "test_fraction": 0.01, "seed": 1},
        "label": {"code": "urn:t|label", "rule": "gt", "threshold": 0},
        "features": [
            {"name": "a", "code": "urn:t|a", "missing": "mean"},
            {"name": "b", "code": "urn:t|b", "missing": "drop"},
            {"name": "age", "source": "patient.age"},
            {
                "name": "male",
                "source": "patient.gender",
                "encoding": "boolean",
                "true_values": ["male"],
            },
        ],
    }
    data = extract(FeatureSpec.from_dict(spec_doc), patients + obs)
    assert data.complete == 5  # p1 dropped: b missing
    assert "p1" not in data.train_patients + data.test_patients
    row0 = data.x_train[data.train_patients.index("p0")]
    assert row0[0] == pytest.approx(np.mean([2.0, 3.0, 4.0, 5.0]))  # train mean of a
    assert row0[2] == 50  # age on the observation date 2000-01-01
    assert row0[3] == 1.0


def _obs(pid: str, code: str, quantity: float | None = None, value_integer: int | None = None) -> dict:
    o = {
        "resourceType": "Observation",
        "id": f"{pid}-{code}",
        "status": "final",
        "code": {"coding": [{"system": "urn:t", "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": "2000-01-01",
    }
    if quantity is not None:
        o["valueQuantity"] = {"value": quantity}
    if value_integer is not None:
        o["valueInteger"] = value_integer
    return o


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({}, "'name'"),
        ({"name": "x", "features": []}, "'features'"),
        ({"name": "x", "features": [{"name": "a"}], "label": {"code": "l"}}, "features[0].code"),
        (
            {
                "name": "x",
                "features": [{"name": "a", "code": "c", "encoding": "magic"}],
                "label": {"code": "l"},
            },
            "features[0].encoding",
        ),
        (
            {
                "name": "x",
                "features": [{"name": "a", "code": "c", "encoding": "onehot", "categories": ["1"]}],
                "label": {"code": "l"},
            },
            "features[0].categories",
        ),
        (
            {
                "name": "x",
                "features": [{"name": "a", "code": "c", "missing": "guess"}],
                "label": {"code": "l"},
            },
            "features[0].missing",
        ),
        (
            {
                "name": "x",
                "features": [{"name": "a", "code": "c"}],
                "label": {"code": "l", "rule": "bigger"},
            },
            "label.rule",
        ),
        (
            {
                "name": "x",
                "features": [{"name": "a", "code": "c"}],
                "label": {"code": "l"},
                "split": {"test_fraction": 1.5},
            },
            "split.test_fraction",
        ),
    ],
)
def test_bad_feature_specs_name_the_field(doc: dict, field: str) -> None:
    with pytest.raises(FeatureSpecError, match=field.replace("[", r"\[").replace("]", r"\]")):
        FeatureSpec.from_dict(doc)
