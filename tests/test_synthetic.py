"""The synthetic heart-disease generator: deterministic, realistic marginals and dependence,
valid FHIR R4 that the store ingests and the feature spec reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clinical_node.datasets.synthetic import (
    SyntheticError,
    fit_profile,
    profile_of,
    site_id,
    synthetic_rows,
    synthetic_site_bundle,
)
from clinical_node.datasets.uci_heart import COLUMNS, read_rows
from clinical_node.features import extract
from clinical_node.site import Site
from paroma.cli import app
from paroma.jobspec import builtin_feature_spec


def _column(rows: list[dict[str, str | None]], name: str) -> np.ndarray:
    return np.array([float(v) for r in rows if (v := r[name]) is not None])


def test_same_seed_same_data_and_sites_independent_of_count() -> None:
    assert synthetic_site_bundle(2, 50, seed=7) == synthetic_site_bundle(2, 50, seed=7)
    assert synthetic_site_bundle(2, 50, seed=7) != synthetic_site_bundle(2, 50, seed=8)
    assert synthetic_site_bundle(2, 50, seed=7) != synthetic_site_bundle(3, 50, seed=7)
    assert [profile_of(i) for i in range(5)] == ["cleveland", "hungarian", "switzerland", "va", "cleveland"]
    assert site_id(99) == "synth-100"


@pytest.mark.parametrize("hospital", ["cleveland", "va"])
def test_marginals_missingness_and_correlation_follow_the_hospital(hospital: str) -> None:
    real = read_rows(hospital)
    fake = synthetic_rows(fit_profile(hospital), 4000, seed=1)
    for name in COLUMNS:
        a, b = _column(real, name), _column(fake, name)
        if a.size == 0:
            assert b.size == 0, name  # a column the hospital never recorded stays absent
            continue
        assert set(np.unique(b)) <= set(np.unique(a)), name  # only values the source has
        assert abs(b.mean() - a.mean()) < 0.15 * a.std() + 1e-9, name
        real_missing = 1 - a.size / len(real)
        if name != "age":
            assert abs((1 - b.size / len(fake)) - real_missing) < 0.03, name

    # The diagnosis goes with exercise angina as in the data (rank correlation, same sign and size).
    def corr(rows: list[dict[str, str | None]]) -> float:
        pairs = np.array([(float(r["exang"]), float(r["num"])) for r in rows if r["exang"] and r["num"]])
        return float(np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1])

    assert abs(corr(fake) - corr(real)) < 0.12
    assert corr(fake) > 0.2


def test_bundle_ingests_and_the_feature_spec_reads_it(tmp_path: Path) -> None:
    bundle = synthetic_site_bundle(0, 200, seed=3)
    site = Site.create(tmp_path / "s", "synth-001", "Synthetic")
    try:
        refs = site.fhir.ingest_bundle(bundle)
        counts = site.fhir.counts()
        assert len(refs) == len(bundle["entry"])
        assert counts["Patient"] == 200 and counts["Organization"] == 1
        spec = builtin_feature_spec("flamby-heart-disease")
        table = extract(spec, site.fhir.iter_resources())
        assert table.candidates == 200
        assert table.complete > 150  # most synthetic Cleveland-profile patients are complete
        labels = np.concatenate([table.y_train, table.y_test])
        assert 0.2 < float(labels.mean()) < 0.8
    finally:
        site.close()


def test_bad_arguments_are_named() -> None:
    with pytest.raises(SyntheticError, match="patients: 0"):
        synthetic_site_bundle(0, 0)
    with pytest.raises(SyntheticError, match="site index -1"):
        synthetic_site_bundle(-1, 10)


def test_cli_writes_one_bundle_per_site(tmp_path: Path) -> None:
    out = tmp_path / "bundles"
    result = CliRunner().invoke(
        app, ["data", "synthetic", "--sites", "3", "--patients", "20", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    files = sorted(out.glob("*.json"))
    assert [f.name for f in files] == ["synth-001.json", "synth-002.json", "synth-003.json"]
    assert json.loads(files[1].read_text()) == synthetic_site_bundle(1, 20, seed=0)
    loaded = CliRunner().invoke(app, ["node", "init", str(tmp_path / "h"), "--id", "h", "--name", "H"])
    assert loaded.exit_code == 0, loaded.output
    loaded = CliRunner().invoke(app, ["node", "load", str(tmp_path / "h"), str(files[0])])
    assert loaded.exit_code == 0 and "resources stored" in loaded.output
    bad = CliRunner().invoke(app, ["data", "synthetic", "--sites", "0", "--out", str(out)])
    assert bad.exit_code == 2
