"""Search-index values of a FHIR R4 resource: its patient, codes, dates and security labels.

Pure functions over the resource's JSON; the store keeps what they return in SQLite so
that searches and the protection layer's redaction never decrypt a body to decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

# Elements that hold the patient a resource is about (the Patient compartment, R4 §
# compartmentdefinition-patient), in the order they are tried.
_PATIENT_ELEMENTS = ("subject", "patient", "beneficiary", "individual")

# Elements whose codings are searchable with the `code` parameter.
_CODE_ELEMENTS = ("code", "medicationCodeableConcept", "vaccineCode")

# The clinically relevant date of a resource: the first of these present wins.
_DATE_ELEMENTS = (
    "effectiveDateTime",
    "effectivePeriod",
    "effectiveInstant",
    "onsetDateTime",
    "onsetPeriod",
    "performedDateTime",
    "performedPeriod",
    "occurrenceDateTime",
    "authoredOn",
    "recordedDate",
    "issued",
    "billablePeriod",
    "period",
    "dateTime",
    "created",
    "date",
    "birthDate",
)


@dataclass(frozen=True)
class IndexEntry:
    """What the store indexes about one resource."""

    patient: str | None
    codes: tuple[tuple[str, str], ...]  # (system, code)
    security: tuple[tuple[str, str], ...]  # meta.security (system, code)
    date_start: str | None  # ISO-8601 UTC, second precision
    date_end: str | None


def patient_of(resource: dict[str, Any]) -> str | None:
    """The id of the patient the resource belongs to, or None."""
    if resource.get("resourceType") == "Patient":
        return str(resource.get("id")) if resource.get("id") else None
    for element in _PATIENT_ELEMENTS:
        ref = resource.get(element)
        if isinstance(ref, dict):
            target = ref.get("reference")
            if isinstance(target, str) and target.startswith("Patient/"):
                return target.split("/", 1)[1]
    return None


def codes_of(resource: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    found: list[tuple[str, str]] = []
    for element in _CODE_ELEMENTS:
        concept = resource.get(element)
        if isinstance(concept, dict):
            for coding in concept.get("coding", []) or []:
                if isinstance(coding, dict) and coding.get("code"):
                    found.append((str(coding.get("system", "")), str(coding["code"])))
    return tuple(found)


def security_of(resource: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    meta = resource.get("meta") or {}
    return tuple(
        (str(c.get("system", "")), str(c["code"]))
        for c in meta.get("security", []) or []
        if isinstance(c, dict) and c.get("code")
    )


def date_range(value: str) -> tuple[datetime, datetime]:
    """The instant range [start, end) covered by a FHIR date, dateTime or instant.

    A date of lower precision covers its whole period (``2020`` is all of 2020), as in
    the FHIR search rules for dates (R4 § search 3.1.1.4.1).
    """
    text = value.strip()
    try:
        if len(text) == 4:
            start = datetime(int(text), 1, 1, tzinfo=UTC)
            return start, start.replace(year=start.year + 1)
        if len(text) == 7:
            year, month = int(text[:4]), int(text[5:7])
            start = datetime(year, month, 1, tzinfo=UTC)
            end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
            return start, end
        if len(text) == 10:
            start = datetime.fromisoformat(text).replace(tzinfo=UTC)
            return start, start + timedelta(days=1)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"not a FHIR date, dateTime or instant: {value!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment, moment + timedelta(seconds=1)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def dates_of(resource: dict[str, Any]) -> tuple[str | None, str | None]:
    for element in _DATE_ELEMENTS:
        value = resource.get(element)
        if isinstance(value, str):
            start, end = date_range(value)
            return iso(start), iso(end)
        if isinstance(value, dict) and ("start" in value or "end" in value):
            first = date_range(value["start"])[0] if value.get("start") else None
            last = date_range(value["end"])[1] if value.get("end") else None
            return (iso(first) if first else None, iso(last) if last else None)
    return None, None


def index_entry(resource: dict[str, Any]) -> IndexEntry:
    start, end = dates_of(resource)
    return IndexEntry(patient_of(resource), codes_of(resource), security_of(resource), start, end)
