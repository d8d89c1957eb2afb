"""UCI Heart Disease (four hospitals) to FHIR R4, one transaction Bundle per hospital.

Source: the UCI "processed" files (Janosi, Steinbrunn, Pfisterer, Detrano, 1988; CC BY 4.0),
shipped in ``uci_heart_disease/`` with their SOURCE.md. Per row:

* a Patient (gender from ``sex``; a birth date consistent with ``age`` at the exam date);
* one Observation per measurement, coded with LOINC where LOINC has the concept and with
  the project's CodeSystem :data:`UCI_SYSTEM` where it does not (chest pain type, exercise
  angina, ST depression, slope, vessels, thal, and the diagnosis); units in UCUM;
* the diagnosis (angiographic disease status ``num``, 0-4) as an Observation.

Missing values are never invented. ``?`` gives no Observation at all. A value the source
records as 0 where 0 cannot be a measurement (serum cholesterol 0, resting blood pressure 0)
gives an Observation with ``dataAbsentReason`` = ``not-performed`` and no value, so the record
keeps what the source said without claiming a measurement.

The source has no visit dates; every record is dated :data:`EXAM_DATE` (the month the data
set was donated), and the birth date is chosen so that the age at that date is ``age``.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from datetime import date, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

UCI_SYSTEM = "https://paroma-med.eu/fhir/CodeSystem/uci-heart-disease"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ABSENT_SYSTEM = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
EXAM_DATE = date(1988, 7, 1)

COLUMNS = (
    "age", "sex", "cp", "trestbps", "chol", "fbs", "restecg",
    "thalach", "exang", "oldpeak", "slope", "ca", "thal", "num",
)  # fmt: skip


@dataclass(frozen=True)
class Hospital:
    key: str
    file: str
    name: str
    rows: int


HOSPITALS: dict[str, Hospital] = {
    h.key: h
    for h in (
        Hospital("cleveland", "processed.cleveland.data", "Cleveland Clinic Foundation", 303),
        Hospital(
            "hungarian",
            "processed.hungarian.data",
            "Hungarian Institute of Cardiology, Budapest",
            294,
        ),
        Hospital(
            "switzerland",
            "processed.switzerland.data",
            "University Hospitals Zurich and Basel",
            123,
        ),
        Hospital("va", "processed.va.data", "VA Medical Center, Long Beach", 200),
    )
}


@dataclass(frozen=True)
class Measure:
    """How one source column becomes an Observation."""

    column: str
    system: str
    code: str
    display: str
    category: str
    kind: str  # quantity | boolean | coded | integer
    unit: str = ""
    ucum: str = ""
    zero_is_missing: bool = False
    categories: tuple[tuple[str, str], ...] = ()


_CP = (
    ("1", "Typical angina"),
    ("2", "Atypical angina"),
    ("3", "Non-anginal pain"),
    ("4", "Asymptomatic"),
)
_RESTECG = (
    ("0", "Normal"),
    ("1", "ST-T wave abnormality"),
    ("2", "Probable or definite left ventricular hypertrophy (Estes' criteria)"),
)
_SLOPE = (("1", "Upsloping"), ("2", "Flat"), ("3", "Downsloping"))
_THAL = (("3", "Normal"), ("6", "Fixed defect"), ("7", "Reversible defect"))

MEASURES: tuple[Measure, ...] = (
    Measure("age", LOINC, "30525-0", "Age", "survey", "quantity", "a", "a"),
    Measure("cp", UCI_SYSTEM, "cp", "Chest pain type", "exam", "coded", categories=_CP),
    Measure("trestbps", LOINC, "8480-6", "Systolic blood pressure", "vital-signs", "quantity",
            "mm[Hg]", "mm[Hg]", zero_is_missing=True),
    Measure("chol", LOINC, "2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "laboratory",
            "quantity", "mg/dL", "mg/dL", zero_is_missing=True),
    Measure("fbs", UCI_SYSTEM, "fbs", "Fasting blood sugar > 120 mg/dl", "laboratory", "boolean"),
    Measure("restecg", LOINC, "8601-7", "EKG impression", "procedure", "coded", categories=_RESTECG),
    Measure("thalach", LOINC, "55422-0", "Heart rate Encounter maximum", "vital-signs", "quantity",
            "/min", "/min"),
    Measure("exang", UCI_SYSTEM, "exang", "Exercise induced angina", "exam", "boolean"),
    Measure("oldpeak", UCI_SYSTEM, "oldpeak", "ST depression induced by exercise relative to rest",
            "procedure", "quantity", "mm", "mm"),
    Measure("slope", UCI_SYSTEM, "slope", "Slope of the peak exercise ST segment", "procedure",
            "coded", categories=_SLOPE),
    Measure("ca", UCI_SYSTEM, "ca", "Number of major vessels coloured by fluoroscopy", "imaging",
            "integer"),
    Measure("thal", UCI_SYSTEM, "thal", "Thallium stress test result", "imaging", "coded",
            categories=_THAL),
    Measure("num", UCI_SYSTEM, "num",
            "Angiographic disease status (major vessels with > 50% diameter narrowing)",
            "imaging", "integer"),
)  # fmt: skip

MEASURE_BY_COLUMN = {m.column: m for m in MEASURES}


class SourceFileError(Exception):
    """A source file that does not have the UCI processed layout."""


def source_dir() -> Path:
    return Path(str(resources.files("clinical_node.datasets") / "uci_heart_disease"))


def read_rows(hospital: str, directory: Path | None = None) -> list[dict[str, str | None]]:
    """The rows of a hospital's file, with ``?`` as None; every row must have 14 fields."""
    if hospital not in HOSPITALS:
        raise SourceFileError(f"unknown hospital {hospital!r}; expected one of {', '.join(HOSPITALS)}")
    path = (directory or source_dir()) / HOSPITALS[hospital].file
    rows: list[dict[str, str | None]] = []
    with path.open(newline="") as handle:
        for number, fields in enumerate(csv.reader(handle), start=1):
            if not fields:
                continue
            if len(fields) != len(COLUMNS):
                raise SourceFileError(f"{path}:{number}: {len(fields)} fields, expected {len(COLUMNS)}")
            rows.append(
                {c: (None if v.strip() == "?" else v.strip()) for c, v in zip(COLUMNS, fields, strict=True)}
            )
    return rows


def _number(text: str) -> float:
    value = float(text)
    return int(value) if value.is_integer() else value


def _birth_date(patient_id: str, age: int) -> date:
    """A birth date at which the patient is exactly ``age`` on EXAM_DATE (day chosen
    deterministically from the id, so the bundles are reproducible)."""
    days_into_year = int(hashlib.sha256(patient_id.encode()).hexdigest(), 16) % 364 + 1
    latest = EXAM_DATE.replace(year=EXAM_DATE.year - age)  # birthday on the exam date
    return latest - timedelta(days=days_into_year)


def _observation(site: str, patient_id: str, measure: Measure, raw: str, org_ref: str) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": f"{patient_id}-{measure.column}",
        "status": "final",
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": measure.category}]}],
        "code": {
            "coding": [{"system": measure.system, "code": measure.code, "display": measure.display}],
            "text": measure.display,
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": EXAM_DATE.isoformat(),
        "performer": [{"reference": org_ref}],
    }
    value = _number(raw)
    if measure.zero_is_missing and value == 0:
        obs["dataAbsentReason"] = {
            "coding": [{"system": ABSENT_SYSTEM, "code": "not-performed", "display": "Not Performed"}],
            "text": "recorded as 0 in the source, which denotes a missing measurement",
        }
    elif measure.kind == "quantity":
        obs["valueQuantity"] = {
            "value": value,
            "unit": measure.unit,
            "system": UCUM,
            "code": measure.ucum,
        }
    elif measure.kind == "boolean":
        obs["valueBoolean"] = bool(value)
    elif measure.kind == "integer":
        obs["valueInteger"] = int(value)
    else:
        code = str(int(value))
        display = dict(measure.categories).get(code)
        if display is None:
            raise SourceFileError(f"{site}: {measure.column}={raw} is not a known category")
        obs["valueCodeableConcept"] = {
            "coding": [{"system": f"{UCI_SYSTEM}-{measure.column}", "code": code, "display": display}],
            "text": display,
        }
    return obs


def hospital_bundle(hospital: str, directory: Path | None = None) -> dict[str, Any]:
    """The transaction Bundle of one hospital: its Organization, then per row a Patient and
    its Observations (urn:uuid references, resolved by the store at ingest)."""
    return rows_bundle(hospital, HOSPITALS[hospital].name, read_rows(hospital, directory))


def rows_bundle(hospital: str, name: str, rows: list[dict[str, str | None]]) -> dict[str, Any]:
    """The transaction Bundle of rows in the UCI columns, for the organisation ``uci-<hospital>``."""
    org_id = f"uci-{hospital}"
    org_ref = f"Organization/{org_id}"
    resources_: list[dict[str, Any]] = [
        {"resourceType": "Organization", "id": org_id, "active": True, "name": name}
    ]
    for number, row in enumerate(rows, start=1):
        patient_id = f"{hospital}-{number:04d}"
        age = row["age"]
        patient: dict[str, Any] = {
            "resourceType": "Patient",
            "id": patient_id,
            "identifier": [{"system": f"{UCI_SYSTEM}/{hospital}/row", "value": str(number)}],
            "managingOrganization": {"reference": org_ref},
        }
        if row["sex"] is not None:
            patient["gender"] = "male" if _number(row["sex"]) == 1 else "female"
        if age is not None:
            patient["birthDate"] = _birth_date(patient_id, int(_number(age))).isoformat()
        resources_.append(patient)
        for measure in MEASURES:
            raw = row[measure.column]
            if raw is not None:
                resources_.append(_observation(hospital, patient_id, measure, raw, org_ref))
    # Entries reference each other by urn:uuid, as a client would send them.
    urns = {f"{r['resourceType']}/{r['id']}": _urn(hospital, r) for r in resources_}
    entries = []
    for resource in resources_:
        body = _with_urn_references(resource, urns)
        entries.append(
            {
                "fullUrl": urns[f"{resource['resourceType']}/{resource['id']}"],
                "resource": body,
                "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _urn(hospital: str, resource: dict[str, Any]) -> str:
    digest = hashlib.sha256(f"{hospital}/{resource['resourceType']}/{resource['id']}".encode()).hexdigest()
    return f"urn:uuid:{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def _with_urn_references(node: Any, urns: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {
            k: (urns.get(v, v) if k == "reference" and isinstance(v, str) else _with_urn_references(v, urns))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_with_urn_references(v, urns) for v in node]
    return node
