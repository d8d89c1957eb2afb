"""UCI heart disease to FHIR: row counts, label balance, and no invented values."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from clinical_node.datasets.uci_heart import (
    EXAM_DATE,
    HOSPITALS,
    MEASURE_BY_COLUMN,
    UCI_SYSTEM,
    SourceFileError,
    hospital_bundle,
    read_rows,
)
from clinical_node.fhir.bundle import prepare_bundle
from clinical_node.site import Site


@pytest.mark.parametrize(
    ("hospital", "rows"),
    [("cleveland", 303), ("hungarian", 294), ("switzerland", 123), ("va", 200)],
)
def test_row_counts_and_label_balance(uci_sites_template: Path, hospital: str, rows: int) -> None:
    site = Site.open(uci_sites_template / hospital)
    assert site.fhir.counts()["Patient"] == rows == HOSPITALS[hospital].rows
    source = read_rows(hospital)
    positives = sum(1 for r in source if r["num"] is not None and float(r["num"]) > 0)
    diagnoses = list(site.fhir.iter_resources("Observation", codes=[]))
    stored = [o for o in diagnoses if o["code"]["coding"][0]["code"] == "num"]
    assert len(stored) == rows  # num is never missing in the source
    assert sum(1 for o in stored if o["valueInteger"] > 0) == positives
    site.close()


def test_label_balance_per_hospital_is_the_published_one() -> None:
    # num > 0 counts of the UCI processed files
    expected = {"cleveland": 139, "hungarian": 106, "switzerland": 115, "va": 149}
    for hospital, positives in expected.items():
        assert sum(1 for r in read_rows(hospital) if float(r["num"] or 0) > 0) == positives


@pytest.mark.parametrize("hospital", list(HOSPITALS))
def test_no_invented_values(hospital: str) -> None:
    bundle = hospital_bundle(hospital)
    prepare_bundle(bundle)  # valid FHIR R4
    rows = read_rows(hospital)
    resources = {(e["resource"]["resourceType"], e["resource"]["id"]): e["resource"] for e in bundle["entry"]}
    for number, row in enumerate(rows, start=1):
        pid = f"{hospital}-{number:04d}"
        patient = resources[("Patient", pid)]
        assert patient["gender"] == ("male" if float(row["sex"]) == 1 else "female")
        born = date.fromisoformat(patient["birthDate"])
        age = EXAM_DATE.year - born.year - ((EXAM_DATE.month, EXAM_DATE.day) < (born.month, born.day))
        assert age == int(float(row["age"]))
        for column, measure in MEASURE_BY_COLUMN.items():
            obs = resources.get(("Observation", f"{pid}-{column}"))
            raw = row[column]
            if raw is None:
                assert obs is None, f"{pid} {column}: '?' must give no observation"
                continue
            assert obs is not None
            value = float(raw)
            if measure.zero_is_missing and value == 0:
                assert "dataAbsentReason" in obs
                assert not any(k.startswith("value") for k in obs)
            elif measure.kind == "quantity":
                assert obs["valueQuantity"]["value"] == pytest.approx(value)
                assert obs["valueQuantity"]["system"] == "http://unitsofmeasure.org"
            elif measure.kind == "boolean":
                assert obs["valueBoolean"] is (value == 1)
            elif measure.kind == "integer":
                assert obs["valueInteger"] == int(value)
            else:
                assert obs["valueCodeableConcept"]["coding"][0]["code"] == str(int(value))


def test_cholesterol_zero_is_absent_not_zero() -> None:
    bundle = hospital_bundle("switzerland")
    chol = [e["resource"] for e in bundle["entry"] if e["resource"]["id"].endswith("-chol")]
    assert len(chol) == 123
    assert all(
        "valueQuantity" not in o and o["dataAbsentReason"]["coding"][0]["code"] == "not-performed"
        for o in chol
    )


def test_loinc_and_ucum_codes() -> None:
    bundle = hospital_bundle("cleveland")
    obs = {e["resource"]["id"]: e["resource"] for e in bundle["entry"]}
    bp = obs["cleveland-0001-trestbps"]
    assert bp["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "8480-6",
        "display": "Systolic blood pressure",
    }
    assert bp["valueQuantity"]["code"] == "mm[Hg]"
    assert obs["cleveland-0001-chol"]["code"]["coding"][0]["code"] == "2093-3"
    assert obs["cleveland-0001-cp"]["code"]["coding"][0]["system"] == UCI_SYSTEM


def test_malformed_source_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "processed.va.data").write_text("63,1,1\n")
    with pytest.raises(SourceFileError, match=r"processed.va.data:1: 3 fields, expected 14"):
        read_rows("va", tmp_path)
    with pytest.raises(SourceFileError, match="unknown hospital"):
        read_rows("mars")
