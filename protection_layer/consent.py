"""FHIR R4 Consent: validation at ingest and the decision terms the policies read.

A Consent is validated with the R4B models of ``fhir.resources`` (R4's element set), then
checked for what those models leave open (the ``status`` and ``provision.type`` value
sets, a patient reference, parseable dates, at most one level of nested provisions).
Every problem becomes an OperationOutcome issue naming the element.

A valid Consent is reduced to its *terms*: the elements the Rego policies decide on, in a
normalised form (``policies/consent.rego`` documents the shape). Dates become UTC
instants ``YYYY-MM-DDTHH:MM:SS`` that compare as strings; a period's end is exclusive
and covers its whole stated precision (``2016-01-01`` ends at the start of 2016-01-02,
as FHIR dates cover their precision); an absent value is ``""``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from clinical_node.fhir.bundle import validate_resource
from clinical_node.fhir.errors import FhirError, Issue
from clinical_node.fhir.index import date_range, iso

# Consent.status (R4, required binding consent-state-codes).
STATUSES = ("draft", "proposed", "active", "rejected", "inactive", "entered-in-error")
PROVISION_TYPES = ("deny", "permit")
# v3 ActConsentDirective: OPTINR (opt-in with restrictions) and OPTOUTE (opt-out with
# exceptions) keep the base decision of OPTIN and OPTOUT.
POLICY_RULES = {"OPTIN": "OPTIN", "OPTINR": "OPTIN", "OPTOUT": "OPTOUT", "OPTOUTE": "OPTOUT"}
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_INDEX = re.compile(r"\.(\d+)(?=\.|$)")

Terms = dict[str, Any]


def _fhirpath(location: str) -> str:
    """``Consent.provision.provision.0.purpose`` -> ``Consent.provision.provision[0].purpose``."""
    return _INDEX.sub(r"[\1]", location)


def _reference_id(reference: Any, rtype: str) -> str | None:
    """The id of a ``rtype/id`` reference (relative or absolute URL), else None."""
    if not isinstance(reference, str):
        return None
    parts = reference.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == rtype and _ID.match(parts[-1]):
        return parts[-1]
    return None


def _relative(reference: str) -> str:
    parts = reference.rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else reference


def _instant(value: Any, where: str, issues: list[Issue], *, end: bool = False) -> str:
    if value is None:
        return ""
    try:
        start, stop = date_range(str(value))
    except ValueError:
        issues.append(Issue(f"{where}: {value!r} is not a FHIR date or dateTime", where))
        return ""
    return iso(stop if end else start)


def _codes(concepts: Any) -> list[dict[str, str]]:
    out = []
    for concept in concepts or []:
        for coding in concept.get("coding", []) or []:
            if coding.get("code"):
                out.append({"system": str(coding.get("system", "")), "code": str(coding["code"])})
    return out


def _codings(codings: Any) -> list[dict[str, str]]:
    return [
        {"system": str(c.get("system", "")), "code": str(c["code"])} for c in codings or [] if c.get("code")
    ]


def _provision(p: dict[str, Any], where: str, depth: int, issues: list[Issue]) -> Terms:
    ptype = p.get("type", "")
    if ptype and ptype not in PROVISION_TYPES:
        issues.append(Issue(f"{where}.type: {ptype!r} is not one of deny, permit", f"{where}.type"))
    period = p.get("period") or {}
    data_period = p.get("dataPeriod") or {}
    terms: Terms = {
        "type": ptype if ptype in PROVISION_TYPES else "",
        "start": _instant(period.get("start"), f"{where}.period.start", issues),
        "end": _instant(period.get("end"), f"{where}.period.end", issues, end=True),
        "purposes": sorted({str(c["code"]) for c in p.get("purpose", []) or [] if c.get("code")}),
        "actors": sorted(
            {
                _relative(a["reference"]["reference"])
                for a in p.get("actor", []) or []
                if isinstance((a.get("reference") or {}).get("reference"), str)
            }
        ),
        "actions": sorted({c["code"] for c in _codes(p.get("action"))}),
        "classes": sorted({str(c["code"]) for c in p.get("class", []) or [] if c.get("code")}),
        "codes": _codes(p.get("code")),
        "labels": _codings(p.get("securityLabel")),
        "data_start": _instant(data_period.get("start"), f"{where}.dataPeriod.start", issues),
        "data_end": _instant(data_period.get("end"), f"{where}.dataPeriod.end", issues, end=True),
    }
    nested = p.get("provision", []) or []
    if depth == 0:
        terms["provisions"] = [
            _provision(n, f"{where}.provision[{i}]", depth + 1, issues) for i, n in enumerate(nested)
        ]
    elif nested:
        # Exceptions to exceptions are not evaluated by the policies; refusing them keeps
        # a consent from meaning more (or less) than the site enforces.
        issues.append(
            Issue(
                f"{where}.provision: provisions nested more than one level deep are not supported "
                "by this site's consent policies; express them as separate provisions or consents",
                f"{where}.provision",
                code="not-supported",
            )
        )
    return terms


def consent_terms(resource: Any) -> Terms:
    """Validate a FHIR R4 Consent and return its decision terms (without id and version).

    Raises FhirError (an OperationOutcome) listing every problem, each naming the element.
    """
    issues = [
        Issue(i.diagnostics.replace(i.location or "", _fhirpath(i.location or ""), 1), _fhirpath(i.location))
        if i.location
        else i
        for i in validate_resource(resource, where="Consent")
    ]
    if issues:
        raise FhirError(issues)
    if resource.get("resourceType") != "Consent":
        raise FhirError.single(
            f"expected a Consent, got resourceType {resource.get('resourceType')!r}",
            location="resourceType",
        )
    status = resource.get("status")
    if status not in STATUSES:
        issues.append(
            Issue(f"Consent.status: {status!r} is not one of {', '.join(STATUSES)}", "Consent.status")
        )
    patient = _reference_id((resource.get("patient") or {}).get("reference"), "Patient")
    if patient is None:
        issues.append(
            Issue(
                "Consent.patient: a consent must reference the patient it is about as Patient/<id>",
                "Consent.patient",
                code="required",
            )
        )
    rule = ""
    for coding in (resource.get("policyRule") or {}).get("coding", []) or []:
        if coding.get("code") in POLICY_RULES:
            rule = POLICY_RULES[coding["code"]]
    terms: Terms = {
        "patient": patient or "",
        "status": status if status in STATUSES else "",
        "scope": sorted({c["code"] for c in _codes([resource.get("scope") or {}])}),
        "category": sorted({c["code"] for c in _codes(resource.get("category"))}),
        "date": _instant(resource.get("dateTime"), "Consent.dateTime", issues),
        "rule": rule,
        "root": _provision(resource.get("provision") or {}, "Consent.provision", 0, issues),
    }
    if issues:
        raise FhirError(issues)
    return terms


def policy_terms(terms: Terms, consent_id: str, version: int) -> Terms:
    """The terms as the consent policy reads them (the patient stays outside: the
    policies decide on the consent, never on who the patient is)."""
    return {
        "id": consent_id,
        "version": version,
        "status": terms["status"],
        "scope": terms["scope"],
        "date": terms["date"],
        "rule": terms["rule"],
        "root": terms["root"],
    }


def _date_slots(terms: Terms) -> list[str]:
    """The dates the consent policy compares with ``now``, in a fixed order: dateTime, the
    root period's start and end, then each nested provision's period start and end."""
    root = terms["root"]
    values = [terms["date"], root["start"], root["end"]]
    for nested in root.get("provisions", []):
        values += [nested["start"], nested["end"]]
    return values


@dataclass(frozen=True)
class ConsentRef:
    """One consent version as the decider holds it: its id and version, its *template*
    (the canonical JSON of its policy terms without id, version and the dates compared
    with ``now``) and those dates. Consents that say the same thing share one template
    string (interned), so grouping them costs a dictionary look-up, not a parse."""

    consent_id: str
    version: int
    template: str
    dates: tuple[str, ...]

    @classmethod
    def of(cls, terms: Terms) -> ConsentRef:
        """From policy terms (``policy_terms``)."""
        root = terms["root"]
        blank = {
            "status": terms["status"],
            "scope": terms["scope"],
            "rule": terms["rule"],
            "root": {
                **root,
                "start": "",
                "end": "",
                "provisions": [{**n, "start": "", "end": ""} for n in root.get("provisions", [])],
            },
        }
        template = json.dumps(blank, sort_keys=True, separators=(",", ":"))
        return cls(str(terms["id"]), int(terms["version"]), sys.intern(template), tuple(_date_slots(terms)))

    @classmethod
    def stored(cls, consent_id: str, version: int, template: str, dates: str) -> ConsentRef:
        return cls(consent_id, int(version), sys.intern(template), tuple(dates.split(",")))

    def terms(self) -> Terms:
        """The policy terms again (ConsentRef.of inverted)."""
        terms: Terms = json.loads(self.template)
        dates = iter(self.dates)
        terms["id"], terms["version"], terms["date"] = self.consent_id, self.version, next(dates)
        root = terms["root"]
        root["start"], root["end"] = next(dates), next(dates)
        for nested in root["provisions"]:
            nested["start"], nested["end"] = next(dates), next(dates)
        return terms

    def boundaries(self) -> list[str]:
        return [d for d in self.dates if d]


def refs_of(consents: Sequence[Terms | ConsentRef]) -> list[ConsentRef]:
    return [c if isinstance(c, ConsentRef) else ConsentRef.of(c) for c in consents]


def time_boundaries(terms: Terms) -> list[str]:
    """The instants at which a decision on this consent may change by the clock alone:
    its dateTime and its provisions' period bounds (brief: an expired consent counts from
    the next round)."""
    root = terms["root"]
    values = [terms["date"], root["start"], root["end"]]
    for nested in root.get("provisions", []):
        values += [nested["start"], nested["end"]]
    return [v for v in values if v]


def research_scope(terms: Terms) -> bool:
    return "research" in terms["scope"]
