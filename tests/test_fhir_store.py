"""The FHIR store: validation, atomic ingest, reference resolution, search, encryption at rest."""

from __future__ import annotations

import copy
import json
import sqlite3
import stat
from pathlib import Path

import pytest
from conftest import SYNTHEA

from clinical_node.fhir.crypto import KeyFileError, load_key_file
from clinical_node.fhir.errors import BundleRejected, FhirError, ResourceNotFound
from clinical_node.fhir.store import DateQuery, TokenQuery
from clinical_node.site import Site, SiteError


def synthea(name: str) -> dict:
    path = next(SYNTHEA.glob(f"{name}_*.json"))
    return json.loads(path.read_text())


def test_site_key_is_private_and_required(tmp_path: Path) -> None:
    site = Site.create(tmp_path / "s", "s1", "Hospital")
    mode = stat.S_IMODE(site.key_path.stat().st_mode)
    assert mode == 0o600
    assert len(site.key_path.read_bytes()) == 32
    site.key_path.chmod(0o644)
    with pytest.raises(KeyFileError, match="readable by others"):
        load_key_file(site.key_path)
    with pytest.raises(SiteError, match="already a site folder"):
        Site.create(tmp_path / "s", "s1", "Hospital")
    with pytest.raises(SiteError, match="not valid"):
        Site.create(tmp_path / "t", "Bad Id!", "Hospital")


def test_synthea_bundle_ingests_with_references_resolved(site: Site) -> None:
    bundle = synthea("Clemente_Kreiger")
    refs = site.fhir.ingest_bundle(bundle)
    assert len(refs) == len(bundle["entry"])
    patient_id = next(r.resource_id for r in refs if r.resource_type == "Patient")
    observations = site.fhir.search("Observation", patient=patient_id, count=500)
    assert observations.total == 48
    for obs in observations.resources:
        assert obs["subject"]["reference"] == f"Patient/{patient_id}"
        assert obs["meta"]["versionId"] == "1"
    encounter = site.fhir.search("Encounter", patient=patient_id).resources[0]
    assert not json.dumps(encounter).count("urn:uuid:")


def test_reingest_updates_versions_instead_of_duplicating(site: Site) -> None:
    bundle = synthea("Clemente_Kreiger")
    site.fhir.ingest_bundle(bundle)
    before = site.fhir.counts()
    refs = site.fhir.ingest_bundle(bundle)
    assert site.fhir.counts() == before
    assert all(not r.created and r.version == 2 for r in refs)


def test_invalid_bundle_is_refused_whole_naming_entry_type_and_element(site: Site) -> None:
    site.fhir.ingest_bundle(synthea("Buster_Hoeger"))
    before = site.fhir.counts()
    bundle = synthea("Clemente_Kreiger")
    bad = copy.deepcopy(bundle)
    position = next(i for i, e in enumerate(bad["entry"]) if e["resource"]["resourceType"] == "Observation")
    bad["entry"][position]["resource"]["valueQuantity"]["value"] = "not-a-number"
    with pytest.raises(BundleRejected) as caught:
        site.fhir.ingest_bundle(bad)
    message = str(caught.value)
    assert f"entry[{position}]" in message
    assert "Observation" in message and "valueQuantity.value" in message
    assert site.fhir.counts() == before  # nothing from the bad bundle was stored
    outcome = caught.value.operation_outcome()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"][0].startswith(f"Bundle.entry[{position}]")


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda b: b.update(type="searchset"), "Bundle.type"),
        (lambda b: b.update(resourceType="Patient"), "expected resourceType 'Bundle'"),
        (lambda b: b["entry"][1]["resource"].update(resourceType="NoSuchThing"), "NoSuchThing"),
        (lambda b: b["entry"][2]["resource"].update(unknownElement=1), "unknownElement"),
        (
            lambda b: b["entry"][3]["resource"]["subject"].update(reference="urn:uuid:0000"),
            "does not resolve",
        ),
        (lambda b: b["entry"][3]["request"].update(method="DELETE"), "request.method"),
        (lambda b: b.update(entry=[]), "no entries"),
    ],
)
def test_malformed_bundles_are_refused_with_a_reason(site: Site, mutate, expected: str) -> None:
    bundle = synthea("Clemente_Kreiger")
    mutate(bundle)
    with pytest.raises(FhirError, match=expected.replace("[", r"\[").replace("]", r"\]").replace("'", "'")):
        site.fhir.ingest_bundle(bundle)
    assert site.fhir.counts() == {}


def test_search_by_code_and_date(site: Site) -> None:
    for name in ("Clemente_Kreiger", "Buster_Hoeger", "Ned_Hintz"):
        site.fhir.ingest_bundle(synthea(name))
    all_obs = list(site.fhir.iter_resources("Observation"))
    code = all_obs[0]["code"]["coding"][0]
    by_code = site.fhir.search("Observation", codes=[TokenQuery(code["system"], code["code"])], count=1000)
    expected = [o for o in all_obs if any(c["code"] == code["code"] for c in o["code"]["coding"])]
    assert by_code.total == len(expected) > 0
    assert site.fhir.search(
        "Observation", codes=[TokenQuery.parse("http://loinc.org|")], count=1
    ).total == len(
        [o for o in all_obs if any(c.get("system") == "http://loinc.org" for c in o["code"]["coding"])]
    )
    dates = sorted(o["effectiveDateTime"][:10] for o in all_obs if "effectiveDateTime" in o)
    middle = dates[len(dates) // 2]
    later = site.fhir.search("Observation", dates=[DateQuery.parse(f"ge{middle}")], count=1).total
    earlier = site.fhir.search("Observation", dates=[DateQuery.parse(f"lt{middle}")], count=1).total
    assert later + earlier == len([d for d in dates])
    assert later == len([d for d in dates if d >= middle])
    year = middle[:4]
    in_year = site.fhir.search("Observation", dates=[DateQuery.parse(year)], count=1).total
    assert in_year == len([d for d in dates if d.startswith(year)])


def test_bodies_are_encrypted_at_rest_and_tampering_is_detected(site: Site) -> None:
    bundle = synthea("Clemente_Kreiger")
    site.fhir.ingest_bundle(bundle)
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    family = patient["name"][0]["family"].encode()
    raw = (site.root / "fhir.sqlite").read_bytes()
    wal = site.root / "fhir.sqlite-wal"
    raw += wal.read_bytes() if wal.exists() else b""
    assert family not in raw
    pid = patient["id"]
    assert site.fhir.read("Patient", pid)["name"][0]["family"].encode() == family
    db = sqlite3.connect(site.root / "fhir.sqlite")
    body = db.execute("SELECT body FROM resource WHERE rtype='Patient' AND rid=?", (pid,)).fetchone()[0]
    db.execute(
        "UPDATE resource SET body=? WHERE rtype='Patient' AND rid=?",
        (body[:-1] + bytes([body[-1] ^ 1]), pid),
    )
    db.commit()
    db.close()
    with pytest.raises(FhirError, match="integrity"):
        site.fhir.read("Patient", pid)


def test_read_unknown_and_erase_patient(site: Site) -> None:
    refs = site.fhir.ingest_bundle(synthea("Clemente_Kreiger"))
    pid = next(r.resource_id for r in refs if r.resource_type == "Patient")
    with pytest.raises(ResourceNotFound):
        site.fhir.read("Patient", "nobody")
    removed = site.fhir.erase_patient(pid)
    assert removed == len([r for r in refs if r.resource_type not in ("Organization", "Practitioner")])
    assert site.fhir.search("Observation", patient=pid).total == 0
    with pytest.raises(ResourceNotFound):
        site.fhir.read("Patient", pid)


def test_store_key_mismatch_is_detected(tmp_path: Path) -> None:
    a = Site.create(tmp_path / "a", "a", "A")
    refs = a.fhir.ingest_bundle(synthea("Clemente_Kreiger"))
    a.close()
    b = Site.create(tmp_path / "b", "b", "B")
    (tmp_path / "a" / "keys" / "store.key").write_bytes(b.key_path.read_bytes())
    reopened = Site.open(tmp_path / "a")
    with pytest.raises(FhirError, match="integrity"):
        reopened.fhir.read("Patient", next(r.resource_id for r in refs if r.resource_type == "Patient"))
