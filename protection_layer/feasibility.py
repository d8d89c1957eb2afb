"""Feasibility queries: how many of a site's patients a study could use, without any
record-level data leaving the site.

For a cohort definition (a resource type and its codes: a job's feature spec, or a list
of FHIR codes) and a purpose of use with the requesting organisation, every patient
falls in one class, decided by the site's own consent policy:

``usable``         PERMIT, and consent releases at least one resource of the requested kind;
``needs_consent``  NO_CONSENT for this purpose, and the site holds data of the requested kind;
``unknown``        the site cannot tell: it holds no data of the requested kind for the
                   patient yet (whatever their consent);
``refused``        DENY, or a PERMIT whose data scopes exclude all of the requested data.

Counts below the site's ``small_count_threshold`` k (default 5) are reported as ``"<k"``.
Because the four classes add up to the site's number of patients (which its catalogue
publishes), a single suppressed class could be recovered by subtraction; the next
smallest class is then suppressed as well (complementary suppression).

Every query is audited at the site (``feasibility`` entries), with who asked, for what,
and the answer exactly as reported. For the ``needs_consent`` patients the query may
queue a consent request (:mod:`protection_layer.consent_requests`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from clinical_node.features import FeatureSpec
from clinical_node.fhir.store import TokenQuery
from paroma.jobspec import BUILTIN_FEATURE_SPECS, PURPOSES, builtin_feature_spec

from . import audit as kinds
from .cohort import DataRequest
from .consent_requests import ConsentRequests
from .decisions import ConsentDecision, JobContext, PatientDecision
from .engine import PolicyError

CLASSES = ("usable", "needs_consent", "unknown", "refused")
RESOURCE_TYPES = ("Patient", "Observation", "Condition", "Procedure", "MedicationStatement", "Encounter")


class FeasibilityError(ValueError):
    """An invalid query; ``problems`` lists every (field, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))


@dataclass(frozen=True)
class CohortDefinition:
    """The data a study needs: patients with resources of ``resource_type`` carrying one of
    ``codes`` ((system or None, code); none: any resource of the type)."""

    resource_type: str
    codes: tuple[tuple[str | None, str], ...] = ()

    @classmethod
    def of_spec(cls, spec: FeatureSpec) -> CohortDefinition:
        classes = [c for c in spec.resource_classes() if c != "Patient"]
        codes = sorted(set(spec.codes()), key=lambda c: (c[0] or "", c[1]))
        return cls(classes[0] if classes else "Patient", tuple(codes))

    @property
    def request(self) -> DataRequest:
        classes = ("Patient",) if self.resource_type == "Patient" else ("Patient", self.resource_type)
        return DataRequest(classes, self.codes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "resource_type": self.resource_type,
            "codes": [{"system": s, "code": c} for s, c in self.codes],
        }

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class ConsentRequestAsk:
    study: str
    message: str = ""


@dataclass(frozen=True)
class FeasibilityQuery:
    cohort: CohortDefinition
    purpose: str
    organization: str
    consent_request: ConsentRequestAsk | None = None

    def __post_init__(self) -> None:
        problems: list[tuple[str, str]] = []
        if self.purpose not in PURPOSES:
            problems.append(
                ("purpose", f"{self.purpose!r} is not one of {', '.join(PURPOSES)} (v3-ActReason)")
            )
        if not self.organization:
            problems.append(("organization", "required: the requesting organisation"))
        if self.cohort.resource_type not in RESOURCE_TYPES:
            problems.append(
                ("resource_type", f"{self.cohort.resource_type!r} is not one of {', '.join(RESOURCE_TYPES)}")
            )
        if self.cohort.resource_type == "Patient" and self.cohort.codes:
            problems.append(("codes", "a Patient cohort takes no codes"))
        for i, (system, code) in enumerate(self.cohort.codes):
            if not code or (system is not None and not system):
                problems.append((f"codes[{i}]", "expected a code and an optional system URI"))
        if self.consent_request is not None and not self.consent_request.study:
            problems.append(("consent_request.study", "required: the study the patients are asked to join"))
        if problems:
            raise FeasibilityError(problems)


@dataclass
class FeasibilityAnswer:
    site: str
    k: int
    counts: dict[str, int | str]  # a number, or "<k" when suppressed
    policy_version: str
    consent_requests: int | str | None = None  # queued (suppressed like the counts); None: not asked
    cohort: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_query(doc: Mapping[str, Any]) -> FeasibilityQuery:
    """A query from its document (the HTTP body, the aggregator's request): ``purpose``,
    ``organization``, the cohort as ``spec`` (a built-in feature spec) or ``resource_type``
    with ``codes`` ([{system, code}]), and optionally ``consent_request`` {study, message}."""
    spec, rtype, raw_codes = doc.get("spec"), doc.get("resource_type"), doc.get("codes")
    problems: list[tuple[str, str]] = []
    cohort = CohortDefinition("Patient")
    if spec is not None and (rtype is not None or raw_codes is not None):
        problems.append(("spec", "give either spec or resource_type and codes, not both"))
    elif spec is not None:
        if spec not in BUILTIN_FEATURE_SPECS:
            problems.append(
                ("spec", f"{spec!r} is not a built-in feature spec ({', '.join(BUILTIN_FEATURE_SPECS)})")
            )
        else:
            cohort = CohortDefinition.of_spec(builtin_feature_spec(str(spec)))
    elif rtype is None:
        problems.append(("resource_type", "required when no spec is given"))
    else:
        codes: list[tuple[str | None, str]] = []
        for i, item in enumerate(raw_codes or []):
            if not isinstance(item, Mapping) or not isinstance(item.get("code"), str):
                problems.append((f"codes[{i}]", "expected {system, code}"))
                continue
            system = item.get("system")
            codes.append((str(system) if system is not None else None, str(item["code"])))
        cohort = CohortDefinition(str(rtype), tuple(sorted(set(codes), key=lambda c: (c[0] or "", c[1]))))
    ask = doc.get("consent_request")
    request = None
    if isinstance(ask, Mapping):
        request = ConsentRequestAsk(str(ask.get("study") or ""), str(ask.get("message") or ""))
    elif ask is not None:
        problems.append(("consent_request", "expected {study, message}"))
    try:
        query = FeasibilityQuery(
            cohort, str(doc.get("purpose") or ""), str(doc.get("organization") or ""), request
        )
    except FeasibilityError as exc:
        problems += exc.problems
    if problems:
        raise FeasibilityError(problems)
    return query


# -- pure logic -----------------------------------------------------------------------------


def classify(
    decisions: Mapping[str, PatientDecision],
    with_data: set[str],
    released: Mapping[str, Sequence[tuple[str, str]]],
    resource_type: str,
) -> dict[str, list[str]]:
    """Each patient's class (see the module's docstring), as sorted patient lists."""
    out: dict[str, list[str]] = {c: [] for c in CLASSES}
    for patient in sorted(decisions):
        decision = decisions[patient].decision
        if decision is ConsentDecision.DENY:
            out["refused"].append(patient)
        elif patient not in with_data:
            out["unknown"].append(patient)
        elif decision is ConsentDecision.NO_CONSENT:
            out["needs_consent"].append(patient)
        elif any(rtype == resource_type for rtype, _ in released.get(patient, ())):
            out["usable"].append(patient)
        else:
            out["refused"].append(patient)
    return out


def suppress(counts: Mapping[str, int], k: int) -> dict[str, int | str]:
    """Counts below ``k`` as "<k", and with them the next smallest when only one would be
    suppressed (the classes add up to a published total)."""
    hidden = {name for name, n in counts.items() if n < k}
    if len(hidden) == 1 and len(counts) > 1:
        rest = sorted((n, name) for name, n in counts.items() if name not in hidden)
        hidden.add(rest[0][1])
    return {name: (f"<{k}" if name in hidden else int(n)) for name, n in counts.items()}


# -- at the site ----------------------------------------------------------------------------


def answer_feasibility(layer: Any, query: FeasibilityQuery, *, requester: str) -> FeasibilityAnswer:
    """Decide, count, suppress, audit and (when asked) queue consent requests.

    ``layer`` is the site's :class:`protection_layer.layer.ProtectionLayer`. Raises
    :class:`protection_layer.engine.PolicyError` when no decision can be made (nothing
    is reported then: failing closed)."""
    site = layer.site
    k = int(site.policy.small_count_threshold)
    layer.reload_policies()
    cohort = query.cohort
    asked = {
        "requester": requester,
        "purpose": query.purpose,
        "organization": query.organization,
        "cohort": cohort.to_dict(),
        "k": k,
    }
    try:
        decision = layer.decider.decide_for(
            f"feasibility:{cohort.sha256}",
            JobContext(query.purpose, query.organization),
            cohort.request,
            layer.now(),
        )
    except PolicyError as exc:
        layer.record(kinds.FEASIBILITY, {**asked, "status": "failed", "error": str(exc)})
        raise
    tokens = [TokenQuery(s, c) for s, c in cohort.codes]
    if cohort.resource_type == "Patient":
        with_data = set(site.fhir.patients())
    else:
        with_data = {p for _, p in site.fhir.keys_of(cohort.resource_type, tokens or None) if p is not None}
    classes = classify(decision.decisions, with_data, decision.released, cohort.resource_type)
    counts = suppress({name: len(patients) for name, patients in classes.items()}, k)
    queued: int | str | None = None
    if query.consent_request is not None:
        ask = query.consent_request
        requests = ConsentRequests.for_site(site.root)
        try:
            ids = requests.add_many(
                classes["needs_consent"], ask.study, query.purpose, query.organization, ask.message
            )
        finally:
            requests.close()
        queued = counts["needs_consent"] if isinstance(counts["needs_consent"], str) else len(ids)
    answer = FeasibilityAnswer(site.site_id, k, counts, decision.policy_version, queued, cohort.to_dict())
    layer.record(
        kinds.FEASIBILITY,
        {
            **asked,
            "status": "answered",
            "reported": counts,
            "policy_version": decision.policy_version,
            **(
                {
                    "consent_requests": {
                        "study": query.consent_request.study,
                        "queued": len(classes["needs_consent"]),
                    }
                }
                if query.consent_request is not None
                else {}
            ),
        },
    )
    return answer
