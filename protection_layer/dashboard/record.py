"""A patient's own record as the dashboard shows it: the data classes and codes they can
keep out of research, their data as a FHIR Bundle (GDPR Art. 20, portability), and the
jobs that used their data (from the site's audit log, patient view). Pure functions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..audit import RELEASE
from .explain import CLASS_WORDS


def _code_of(resource: Mapping[str, Any]) -> tuple[str, str] | None:
    concept = resource.get("code") or {}
    for coding in concept.get("coding", []) or []:
        if coding.get("code"):
            token = f"{coding.get('system', '')}|{coding['code']}"
            return token, str(coding.get("display") or concept.get("text") or coding["code"])
    return None


def data_choices(resources: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """What the record holds, by class and (for classes with codes) by code: the things a
    patient may keep out of research, with how many records each covers."""
    classes: dict[str, int] = {}
    codes: dict[str, tuple[str, str, int]] = {}
    for resource in resources:
        rtype = str(resource.get("resourceType", ""))
        if rtype == "Patient" or not rtype:
            continue
        classes[rtype] = classes.get(rtype, 0) + 1
        found = _code_of(resource)
        if found is not None:
            token, label = found
            _, _, n = codes.get(token, (rtype, label, 0))
            codes[token] = (rtype, label, n + 1)
    out: list[dict[str, Any]] = [
        {"kind": "class", "value": rtype, "words": CLASS_WORDS.get(rtype, f"{rtype} records"), "records": n}
        for rtype, n in sorted(classes.items())
    ]
    out += [
        {"kind": "code", "value": token, "words": label, "class": rtype, "records": n}
        for token, (rtype, label, n) in sorted(codes.items(), key=lambda kv: (kv[1][0], kv[1][1].lower()))
    ]
    return out


def code_labels(resources: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for resource in resources:
        found = _code_of(resource)
        if found is not None:
            labels.setdefault(*found)
    return labels


def export_bundle(
    patient: str,
    resources: Sequence[Mapping[str, Any]],
    consent_versions: Sequence[Mapping[str, Any]],
    *,
    site_id: str,
    base: str,
    timestamp: str,
) -> dict[str, Any]:
    """A FHIR R4 collection Bundle of the patient's resources and every version of their
    consents (each version its own entry, fullUrl with ``_history``)."""
    entries: list[dict[str, Any]] = [
        {"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": dict(r)} for r in resources
    ]
    entries += [
        {
            "fullUrl": f"{base}/Consent/{c['id']}/_history/{(c.get('meta') or {}).get('versionId', '1')}",
            "resource": dict(c),
        }
        for c in consent_versions
    ]
    return {
        "resourceType": "Bundle",
        "id": f"export-{site_id}-{patient}"[:64],
        "meta": {"tag": [{"system": "https://paroma-med.eu/fhir/CodeSystem/export", "code": "patient-data"}]},
        "type": "collection",
        "timestamp": timestamp,
        "total": len(entries),
        "entry": entries,
    }


def jobs_that_used(entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per job, from the patient's data-release audit entries: what it is (sha256, name,
    purpose, requesting organisation), the rounds and dates it received the patient's data,
    and under which consent versions. Newest use first."""
    jobs: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if entry.get("kind") != RELEASE:
            continue
        job = str(entry.get("job"))
        info = jobs.setdefault(
            job,
            {
                "job": job,
                "job_name": entry.get("job_name"),
                "purpose": entry.get("purpose"),
                "organization": entry.get("organization"),
                "rounds": [],
                "first_used": entry.get("time"),
                "last_used": entry.get("time"),
                "consents": [],
                "audit_seqs": [],
            },
        )
        if entry.get("round") not in info["rounds"]:
            info["rounds"].append(entry.get("round"))
        if entry.get("consent") not in info["consents"]:
            info["consents"].append(entry.get("consent"))
        info["audit_seqs"].append(entry.get("seq"))
        info["first_used"] = min(info["first_used"], entry.get("time"))
        info["last_used"] = max(info["last_used"], entry.get("time"))
    return sorted(jobs.values(), key=lambda j: str(j["last_used"]), reverse=True)
