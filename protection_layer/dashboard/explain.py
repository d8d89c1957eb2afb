"""Consents in plain language, and the Consents the dashboard writes for a patient.

Pure functions on FHIR R4 Consent JSON (no I/O). What a consent means is said in the
words of the site's consent policy (``policies/consent.rego``): a research consent is
about the purposes it lists (v3-ActReason) or all research when it lists none, the
organisations it names (``provision.actor``) or any, the period it covers; its nested
deny provisions keep data classes (``provision.class``), codes or labelled data out.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..consent_mix import RESOURCE_TYPES, research_consent

# The research purposes a patient decides on, in the words of v3-ActReason's definitions.
RESEARCH_PURPOSES: dict[str, tuple[str, str]] = {
    "HRESCH": (
        "Health research",
        "studies that use health records to learn about diseases and treatments, "
        "for example training a model that predicts heart disease",
    ),
    "CLINTRCH": (
        "Clinical trial research",
        "research done as part of a clinical trial, where a new treatment or test is studied",
    ),
    "PUBHLTH": (
        "Public health",
        "work that protects the health of the population, such as tracking outbreaks",
    ),
    "HQUALIMP": (
        "Improving care quality",
        "the hospital and others studying how well care works in order to improve it",
    ),
}
CLASS_WORDS = {
    "Observation": "measurements and test results",
    "Condition": "diagnoses",
    "MedicationStatement": "medicines you take",
    "MedicationRequest": "prescriptions",
    "Procedure": "operations and procedures",
    "Encounter": "hospital visits",
    "DiagnosticReport": "test reports",
    "Immunization": "vaccinations",
    "AllergyIntolerance": "allergies",
    "ImagingStudy": "scans and images",
}
LABEL_WORDS = {
    "PSY": "mental health information",
    "HIV": "HIV information",
    "ETH": "substance use information",
    "SDV": "information about sexual or domestic violence",
    "GDIS": "genetic information",
    "STD": "information about sexually transmitted infections",
    "R": "restricted information",
    "V": "very restricted information",
}
_CLASS = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_CODE = re.compile(r"^[^|\s]{1,200}\|[^|\s]{1,100}$")


class ChoiceError(ValueError):
    """A patient's choice that cannot become a consent; ``field`` names the input."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Exclusion:
    """A data class (FHIR resource type) or a code kept out of research."""

    kind: str  # class | code
    value: str  # a resource type, or system|code
    label: str = ""

    def words(self) -> str:
        if self.kind == "class":
            return CLASS_WORDS.get(self.value, f"{self.value} records")
        return self.label or self.value.split("|", 1)[1]

    def provision(self) -> dict[str, Any]:
        if self.kind == "class":
            return {"type": "deny", "class": [{"system": RESOURCE_TYPES, "code": self.value}]}
        system, code = self.value.split("|", 1)
        coding = {"system": system, "code": code} | ({"display": self.label} if self.label else {})
        return {"type": "deny", "code": [{"coding": [coding]}]}

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "value": self.value, "words": self.words()}


def parse_exclusions(items: Sequence[Mapping[str, Any]], labels: Mapping[str, str]) -> list[Exclusion]:
    """``[{"class": "Observation"} | {"code": "system|code"}]``; ``labels`` gives codes' names."""
    out: list[Exclusion] = []
    seen: set[tuple[str, str]] = set()
    for i, item in enumerate(items):
        where = f"exclude[{i}]"
        keys = set(item)
        if keys == {"class"}:
            value = item["class"]
            if not isinstance(value, str) or not _CLASS.match(value) or value == "Patient":
                raise ChoiceError(
                    f"{where}.class",
                    f"{value!r} is not a data class that can be kept out; expected a FHIR resource type "
                    "such as Observation or MedicationStatement (not Patient)",
                )
            exclusion = Exclusion("class", value)
        elif keys == {"code"}:
            value = item["code"]
            if not isinstance(value, str) or not _CODE.match(value):
                raise ChoiceError(f"{where}.code", f"{value!r} is not a code; expected 'system|code'")
            exclusion = Exclusion("code", value, labels.get(value, ""))
        else:
            raise ChoiceError(where, "expected exactly one of 'class' or 'code'")
        if (exclusion.kind, exclusion.value) not in seen:
            seen.add((exclusion.kind, exclusion.value))
            out.append(exclusion)
    return out


def dashboard_consent_id(patient: str, purpose: str) -> str:
    """One consent per patient and purpose for the choices made on the dashboard (each
    change is a new version of it). The patient id is hashed to keep the id a FHIR id."""
    return f"patient-{hashlib.sha256(patient.encode()).hexdigest()[:16]}-{purpose.lower()}"


def purpose_consent(
    patient: str, purpose: str, decision: str, exclusions: Sequence[Exclusion], signed: datetime
) -> dict[str, Any]:
    """The patient's choice for one research purpose, for any organisation: a permit
    (with a nested deny per excluded class or code) or a refusal, dated ``signed`` so that
    it supersedes earlier consents for that purpose (the most recent consent wins)."""
    if purpose not in RESEARCH_PURPOSES:
        raise ChoiceError("purpose", f"{purpose!r} is not one of {', '.join(RESEARCH_PURPOSES)}")
    if decision not in ("permit", "deny"):
        raise ChoiceError("decision", f"{decision!r} is not one of permit, deny")
    if decision == "deny" and exclusions:
        raise ChoiceError(
            "exclude", "data can only be kept out of a permit; a refusal already covers all data"
        )
    return research_consent(
        dashboard_consent_id(patient, purpose),
        patient,
        decision=decision,
        signed=signed,
        purposes=(purpose,),
        nested=[e.provision() for e in exclusions],
    )


def request_consent(
    request_id: str, patient: str, purpose: str, organization: str, accepted: bool, signed: datetime
) -> dict[str, Any]:
    """The answer to a study's request: a permit (or refusal) for its purpose and its
    organisation only (``provision.actor``)."""
    return research_consent(
        f"request-{request_id}",
        patient,
        decision="permit" if accepted else "deny",
        signed=signed,
        purposes=(purpose,),
        actors=(organization,),
    )


def erasure_refusal(patient: str, signed: datetime) -> dict[str, Any]:
    """What remains of an erased patient's consents: a refusal of all research."""
    return research_consent(
        f"erasure-{hashlib.sha256(patient.encode()).hexdigest()[:16]}",
        patient,
        decision="deny",
        signed=signed,
        purposes=(),
    )


# -- reading a consent ----------------------------------------------------------------------


def _root_decision(resource: Mapping[str, Any]) -> str:
    provision = resource.get("provision") or {}
    if provision.get("type") in ("permit", "deny"):
        return str(provision["type"])
    codes = {c.get("code") for c in (resource.get("policyRule") or {}).get("coding", []) or []}
    if codes & {"OPTIN", "OPTINR"}:
        return "permit"
    if codes & {"OPTOUT", "OPTOUTE"}:
        return "deny"
    return ""


def _purposes(provision: Mapping[str, Any]) -> list[dict[str, str]]:
    out = []
    for coding in provision.get("purpose", []) or []:
        code = str(coding.get("code", ""))
        if code:
            title = RESEARCH_PURPOSES.get(code, (coding.get("display") or code, ""))[0]
            out.append({"code": code, "words": title})
    return out


def _day(value: Any) -> str:
    return str(value)[:10] if value else ""


def _excluded(provision: Mapping[str, Any]) -> list[str]:
    """Plain words for what a nested deny keeps out."""
    parts: list[str] = []
    for c in provision.get("class", []) or []:
        code = str(c.get("code", ""))
        parts.append(CLASS_WORDS.get(code, f"{code} records"))
    for concept in provision.get("code", []) or []:
        for coding in concept.get("coding", []) or []:
            parts.append(str(coding.get("display") or concept.get("text") or coding.get("code")))
    for label in provision.get("securityLabel", []) or []:
        parts.append(LABEL_WORDS.get(str(label.get("code")), f"data labelled {label.get('code')}"))
    what = ", ".join(parts) or "all your data"
    period = provision.get("dataPeriod") or {}
    if period:
        what += f" recorded between {_day(period.get('start')) or 'any date'} and {_day(period.get('end')) or 'now'}"
    purposes = [p["words"] for p in _purposes(provision)]
    if purposes:
        what += f" (for {', '.join(purposes).lower()})"
    return [what]


def explain(resource: Mapping[str, Any], organizations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What one Consent means, for the patient whose consent it is."""
    names = organizations or {}
    provision = resource.get("provision") or {}
    decision = _root_decision(resource)
    purposes = _purposes(provision)
    actors = [
        str((a.get("reference") or {}).get("reference", ""))
        for a in provision.get("actor", []) or []
        if (a.get("reference") or {}).get("reference")
    ]
    period = provision.get("period") or {}
    excluded: list[str] = []
    allowed: list[str] = []
    for nested in provision.get("provision", []) or []:
        # A nested provision without a type is the opposite of its parent.
        if nested.get("type", "deny" if decision == "permit" else "permit") == "deny":
            excluded += _excluded(nested)
        else:
            allowed += _excluded(nested)
    scope = {c.get("code") for c in (resource.get("scope") or {}).get("coding", []) or []}
    what = ", ".join(p["words"].lower() for p in purposes) or "any kind of research"
    who = ", ".join(names.get(a, a) for a in actors) or "any organisation the hospital works with"
    if "research" not in scope:
        summary = "This is not a research consent; the hospital does not use it for research decisions."
    elif resource.get("status") != "active":
        summary = f"This consent is {resource.get('status')}: it no longer decides anything."
    elif decision == "permit":
        summary = f"You allow your data to be used for {what} by {who}."
        if excluded:
            summary += " Except: " + "; ".join(excluded) + "."
    elif decision == "deny":
        summary = f"You do not allow your data to be used for {what} by {who}."
        if allowed:
            summary += " Except that you allow: " + "; ".join(allowed) + "."
    else:
        summary = "This consent does not say whether research is allowed, so it decides nothing."
    start, end = _day(period.get("start")), _day(period.get("end"))
    if start and end:
        summary += f" Valid from {start} until {end}."
    elif end:
        summary += f" Valid until {end}."
    elif start:
        summary += f" Valid from {start}."
    consent_id = str(resource.get("id", ""))
    origin = (
        "dashboard"
        if consent_id.startswith("patient-")
        else "request"
        if consent_id.startswith("request-")
        else "hospital"
    )
    return {
        "id": consent_id,
        "version": str((resource.get("meta") or {}).get("versionId", "")),
        "status": resource.get("status"),
        "signed": resource.get("dateTime"),
        "decision": decision,
        "purposes": purposes,
        "organizations": [{"reference": a, "name": names.get(a, a)} for a in actors],
        "period": {"start": _day(period.get("start")), "end": _day(period.get("end"))},
        "excluded": excluded,
        "allowed": allowed,
        "origin": origin,
        "summary": summary,
    }


def exclusions_of(resource: Mapping[str, Any] | None, labels: Mapping[str, str]) -> list[Exclusion]:
    """The classes and codes a permit keeps out (its nested denies of one class or one code)."""
    if resource is None:
        return []
    out: list[Exclusion] = []
    for nested in (resource.get("provision") or {}).get("provision", []) or []:
        if nested.get("type", "deny") != "deny":
            continue
        for c in nested.get("class", []) or []:
            if c.get("code"):
                out.append(Exclusion("class", str(c["code"])))
        for concept in nested.get("code", []) or []:
            for coding in concept.get("coding", []) or []:
                if coding.get("code"):
                    token = f"{coding.get('system', '')}|{coding['code']}"
                    out.append(Exclusion("code", token, labels.get(token, str(coding.get("display", "")))))
    return out
