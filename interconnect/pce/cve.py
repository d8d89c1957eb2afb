"""A vulnerability as the security index needs it: a CVE with its CVSS v3.x base score.

The score is never taken on trust: the vector is parsed by the ``cvss`` library (FIRST's CVSS
v3.0/v3.1 specification) and a given base score must equal the one the vector yields, so a typo in
either is caught at the edge. Parsing of NVD CVE API 2.0 records is here too; it is pure (a dict
in, a ``Vulnerability`` out) so the NVD client only does the I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cvss import CVSS3
from cvss.exceptions import CVSSError

from interconnect.pce.errors import UnscoredCveError, VulnerabilityError

# CVE JSON 5 schema: CVE-YYYY-NNNN with four or more digits.
CVE_ID = re.compile(r"^CVE-\d{4}-\d{4,19}$")
MAX_VECTOR_LENGTH = 200
MAX_DESCRIPTION = 2_000


@dataclass(frozen=True)
class Vulnerability:
    cve_id: str
    base_score: float
    vector: str
    severity: str
    description: str = ""
    # "NVD" when the record came from the NVD (the notice is then shown), "manual" otherwise.
    source: str = "manual"
    # Which NVD metric was used, e.g. "cvssMetricV31/Primary (nvd@nist.gov)".
    metric: str = ""
    last_modified: str | None = None

    @property
    def normalised_score(self) -> float:
        """CVSS^norm of the seed's formula: the base score divided by ten."""
        return self.base_score / 10.0


def check_cve_id(value: object) -> str:
    if not isinstance(value, str) or not CVE_ID.match(value.strip().upper()):
        raise VulnerabilityError(f"{value!r} is not a CVE id (expected CVE-YYYY-NNNN, e.g. CVE-2023-0001)")
    return value.strip().upper()


def vulnerability_from_vector(
    cve_id: str,
    vector: str,
    base_score: float | None = None,
    *,
    description: str = "",
    source: str = "manual",
    metric: str = "",
    last_modified: str | None = None,
) -> Vulnerability:
    """Check a CVSS v3.x vector (and the base score, when given) and build the vulnerability.

    Raises ``VulnerabilityError`` naming the CVE and what is wrong: a malformed or non-v3 vector,
    or a base score that disagrees with the vector's.
    """
    cve_id = check_cve_id(cve_id)
    if not isinstance(vector, str) or not vector.strip():
        raise VulnerabilityError(f"{cve_id}: a CVSS v3.x vector is required (CVSS:3.1/AV:.../A:...)")
    vector = vector.strip()
    if len(vector) > MAX_VECTOR_LENGTH:
        raise VulnerabilityError(f"{cve_id}: CVSS vector longer than {MAX_VECTOR_LENGTH} characters")
    if not vector.startswith(("CVSS:3.0/", "CVSS:3.1/")):
        raise VulnerabilityError(
            f"{cve_id}: {vector!r} is not a CVSS v3.0/v3.1 vector (it must start with CVSS:3.0/ or CVSS:3.1/)"
        )
    try:
        parsed = CVSS3(vector)
    except CVSSError as exc:
        raise VulnerabilityError(f"{cve_id}: malformed CVSS vector {vector!r}: {exc}") from None
    computed = float(parsed.base_score)
    if base_score is not None:
        if (
            isinstance(base_score, bool)
            or not isinstance(base_score, int | float)
            or not math.isfinite(base_score)
        ):
            raise VulnerabilityError(f"{cve_id}: base score {base_score!r} is not a number")
        # Base scores are published rounded up to one decimal (CVSS v3.1 §7.4 Roundup).
        if abs(float(base_score) - computed) > 1e-6:
            raise VulnerabilityError(
                f"{cve_id}: base score {base_score:g} disagrees with the vector {vector}, which gives {computed:g}"
            )
    return Vulnerability(
        cve_id=cve_id,
        base_score=computed,
        vector=vector,
        severity=parsed.severities()[0],
        description=description[:MAX_DESCRIPTION],
        source=source,
        metric=metric,
        last_modified=last_modified,
    )


# The order in which NVD metrics are preferred: v3.1 before v3.0, the Primary (NVD's own
# analysis) before a Secondary (the CNA's) within a version.
_METRIC_KEYS = ("cvssMetricV31", "cvssMetricV30")


def vulnerability_from_nvd(cve: Mapping[str, Any]) -> Vulnerability:
    """Parse one ``vulnerabilities[].cve`` object of an NVD CVE API 2.0 answer."""
    if not isinstance(cve, Mapping):
        raise VulnerabilityError(f"an NVD CVE record must be an object, got {type(cve).__name__}")
    cve_id = check_cve_id(cve.get("id"))
    metrics = cve.get("metrics") or {}
    if not isinstance(metrics, Mapping):
        raise VulnerabilityError(f"{cve_id}: 'metrics' is not an object")
    chosen = _preferred_metric(cve_id, metrics)
    if chosen is None:
        found = ", ".join(sorted(metrics)) or "no metric at all"
        raise UnscoredCveError(f"{cve_id}: the NVD record has no CVSS v3.x metric ({found})")
    key, metric = chosen
    data = metric.get("cvssData")
    if not isinstance(data, Mapping):
        raise VulnerabilityError(f"{cve_id}: {key} has no cvssData")
    return vulnerability_from_vector(
        cve_id,
        data.get("vectorString", ""),
        data.get("baseScore"),
        description=_english_description(cve.get("descriptions")),
        source="NVD",
        metric=f"{key}/{metric.get('type', '?')} ({metric.get('source', '?')})",
        last_modified=str(cve["lastModified"]) if cve.get("lastModified") else None,
    )


def _preferred_metric(cve_id: str, metrics: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    for key in _METRIC_KEYS:
        entries = metrics.get(key) or []
        if not isinstance(entries, Sequence):
            raise VulnerabilityError(f"{cve_id}: metrics.{key} is not a list")
        usable = [m for m in entries if isinstance(m, Mapping)]
        for wanted in ("Primary", "Secondary"):
            for metric in usable:
                if metric.get("type") == wanted:
                    return key, metric
        if usable:
            return key, usable[0]
    return None


def _english_description(descriptions: object) -> str:
    if not isinstance(descriptions, list):
        return ""
    for item in descriptions:
        if isinstance(item, Mapping) and item.get("lang") == "en":
            return str(item.get("value", ""))
    return ""
