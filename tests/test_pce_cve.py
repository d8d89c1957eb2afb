"""CVSS v3.x vectors checked with the cvss library, and NVD CVE API 2.0 records parsed from the
real recordings shipped in interconnect/pce/data/nvd."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from interconnect.pce.cve import vulnerability_from_nvd, vulnerability_from_vector
from interconnect.pce.errors import UnscoredCveError, VulnerabilityError
from interconnect.pce.nvd import bundled_nvd_files, records_in

NVD = Path(__file__).resolve().parent.parent / "interconnect" / "pce" / "data" / "nvd"


def record(cve_id: str) -> dict:
    for path in bundled_nvd_files():
        for cve in records_in(json.loads(path.read_text()), path.name):
            if cve["id"] == cve_id:
                return cve
    raise AssertionError(f"{cve_id} not in the shipped NVD files")


def test_vector_gives_the_score_and_severity() -> None:
    v = vulnerability_from_vector("CVE-2022-36786", "CVSS:3.1/AV:N/AC:L/PR:L/UI:N/S:C/C:H/I:H/A:H")
    assert (v.base_score, v.severity) == (9.9, "Critical")
    assert v.normalised_score == pytest.approx(0.99)


def test_v30_vectors_are_accepted() -> None:
    assert (
        vulnerability_from_vector("CVE-2020-0001", "CVSS:3.0/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N").base_score
        == 7.5
    )


def test_a_score_that_disagrees_with_its_vector_is_refused() -> None:
    with pytest.raises(VulnerabilityError, match=r"base score 9 disagrees .* which gives 9.8"):
        vulnerability_from_vector("CVE-2022-44006", "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 9.0)


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        ("CVSS:3.1/AV:N/AC:L", "Missing mandatory metrics"),
        ("CVSS:3.1/AV:Q/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", "Unknown value"),
        ("CVSS:3.1/AV:N/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", "Duplicate metric"),
        ("AV:N/AC:L/Au:N/C:P/I:P/A:P", "not a CVSS v3.0/v3.1 vector"),
        ("CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N", "not a CVSS v3.0/v3.1 vector"),
        ("", "vector is required"),
    ],
)
def test_malformed_vectors_are_refused_with_the_reason(vector: str, message: str) -> None:
    with pytest.raises(VulnerabilityError, match=message):
        vulnerability_from_vector("CVE-2024-1234", vector)


@pytest.mark.parametrize("cve_id", ["CVE-24-1", "cve_2024_0001", "", "CVE-2024-12"])
def test_bad_cve_ids_are_refused(cve_id: str) -> None:
    with pytest.raises(VulnerabilityError, match="is not a CVE id"):
        vulnerability_from_vector(cve_id, "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H")


def test_nvd_record_prefers_the_primary_v31_metric() -> None:
    # CVE-2023-0001 has NVD's Primary 6.7 and Palo Alto's Secondary 6.0.
    v = vulnerability_from_nvd(record("CVE-2023-0001"))
    assert v.base_score == 6.7
    assert v.vector == "CVSS:3.1/AV:L/AC:L/PR:H/UI:N/S:U/C:H/I:H/A:H"
    assert v.metric == "cvssMetricV31/Primary (nvd@nist.gov)"
    assert v.source == "NVD"
    assert v.description.startswith("An information exposure vulnerability")


def test_primary_wins_even_when_listed_after_a_secondary() -> None:
    cve = record("CVE-2023-0001")
    cve = dict(cve, metrics={"cvssMetricV31": list(reversed(cve["metrics"]["cvssMetricV31"]))})
    assert vulnerability_from_nvd(cve).base_score == 6.7


def test_v31_is_preferred_over_v30_and_v30_is_the_fallback() -> None:
    v31 = record("CVE-2022-44006")["metrics"]["cvssMetricV31"][0]
    v30 = dict(
        v31,
        cvssData=dict(
            v31["cvssData"],
            version="3.0",
            vectorString="CVSS:3.0/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N",
            baseScore=7.5,
        ),
    )
    both = {"id": "CVE-2022-44006", "metrics": {"cvssMetricV30": [v30], "cvssMetricV31": [v31]}}
    assert vulnerability_from_nvd(both).base_score == 9.8
    only_v30 = {"id": "CVE-2022-44006", "metrics": {"cvssMetricV30": [v30]}}
    assert vulnerability_from_nvd(only_v30).base_score == 7.5


def test_a_record_without_v3_metric_is_unscored() -> None:
    # CVE-2022-44577 is in the 2023 recording without any metric (not yet analysed).
    with pytest.raises(UnscoredCveError, match=r"CVE-2022-44577: the NVD record has no CVSS v3\.x metric"):
        vulnerability_from_nvd(record("CVE-2022-44577"))


def test_an_nvd_record_whose_score_disagrees_with_its_vector_is_refused() -> None:
    cve = json.loads(json.dumps(record("CVE-2022-44006")))
    cve["metrics"]["cvssMetricV31"][0]["cvssData"]["baseScore"] = 5.0
    with pytest.raises(VulnerabilityError, match="disagrees"):
        vulnerability_from_nvd(cve)


def test_every_scored_record_of_the_recording_parses() -> None:
    document = json.loads((NVD / "cves-2023.json").read_text())
    parsed = unscored = 0
    for cve in records_in(document, "cves-2023.json"):
        try:
            vulnerability_from_nvd(cve)
            parsed += 1
        except UnscoredCveError:
            unscored += 1
    assert (parsed, unscored) == (199, 1)
