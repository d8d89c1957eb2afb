"""What a patient can do on the consent dashboard, on their own data only: read their
consents, decisions, record and audit trail; change their research consents; answer
studies' requests; take their data; erase it. Every call is for one patient (the
session's), and every action is recorded in the site's audit log (kind
``patient-action``; erasure also ``erasure``).

Consent changes go through the protection layer's ConsentStore as new FHIR Consent
versions, so running jobs count them from their next round.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from clinical_node.fhir.errors import FhirError, ResourceNotFound
from clinical_node.site import Site
from paroma.problems import Problem

from ..consent_requests import ConsentRequestError, ConsentRequests
from ..decisions import JobContext, decide
from ..engine import PolicyError
from ..layer import ProtectionLayer
from . import record
from .explain import (
    RESEARCH_PURPOSES,
    ChoiceError,
    erasure_refusal,
    exclusions_of,
    explain,
    parse_exclusions,
    purpose_consent,
    request_consent,
)
from .sessions import PatientSession, PatientSessions

PATIENT_ACTION = "patient-action"
ERASURE = "erasure"


@dataclass
class Dashboard:
    """What the dashboard's endpoints share: the site's protection layer (its consent
    store, policies, audit log), the patients' sessions and the consent-request queue."""

    protection: ProtectionLayer
    sessions: PatientSessions
    requests: ConsentRequests
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    _erasing: threading.Lock = field(default_factory=threading.Lock)

    @property
    def site(self) -> Site:
        return self.protection.site

    def audit(self, patient: str, action: str, **data: Any) -> None:
        self.protection.record(PATIENT_ACTION, {"patient": patient, "action": action, **data})

    def close(self) -> None:
        self.sessions.close()
        self.requests.close()

    # -- reading the patient's side ---------------------------------------------------------

    def resources_of(self, patient: str) -> list[dict[str, Any]]:
        return list(self.site.fhir.iter_resources(patients=[patient]))

    def own_consent(self, patient: str, consent_id: str) -> dict[str, Any]:
        """The current version of one of the patient's consents; 404 for anyone else's."""
        try:
            resource = self.protection.consents.read(consent_id)
        except (ResourceNotFound, FhirError):
            resource = None
        reference = ((resource or {}).get("patient") or {}).get("reference", "")
        if resource is None or reference.split("/")[-1] != patient:
            raise Problem(404, "No such consent", f"you have no consent {consent_id!r}")
        return resource

    def own_versions(self, patient: str, consent_id: str) -> list[dict[str, Any]]:
        """The versions of a consent that are about the patient: a consent moved from
        another patient keeps that patient's earlier versions, which are not theirs to see."""
        return [
            v
            for v in self.protection.consents.history(consent_id)
            if str((v.get("patient") or {}).get("reference", "")).split("/")[-1] == patient
        ]

    def purposes(self, patient: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        """What the site decides now for each research purpose, for a study of any
        organisation not named in a consent: decided by the site's own consent policy."""
        layer = self.protection
        try:
            layer.reload_policies()
            terms = layer.decider.patient_terms(patient)
            now = layer.now()
            decided = {
                purpose: decide(layer.engine, JobContext(purpose, ""), {patient: terms}, now)[patient]
                for purpose in RESEARCH_PURPOSES
            }
            # Consents naming organisations (answers to studies' requests) decide for those
            # organisations only: each is decided on its own.
            named: dict[str, set[str]] = {purpose: set() for purpose in RESEARCH_PURPOSES}
            for consent in terms:
                root = consent["root"]
                for purpose in root["purposes"] or list(RESEARCH_PURPOSES):
                    if purpose in named:
                        named[purpose].update(root["actors"])
            for_organizations = {
                purpose: [
                    (org, decide(layer.engine, JobContext(purpose, org), {patient: terms}, now)[patient])
                    for org in sorted(orgs)
                ]
                for purpose, orgs in named.items()
            }
        except PolicyError as exc:
            raise Problem(503, "Consent decision unavailable", f"the site cannot decide now: {exc}") from exc
        out = []
        for purpose, (title, words) in RESEARCH_PURPOSES.items():
            d = decided[purpose]
            deciding = None
            if d.consent_id:
                try:
                    deciding = layer.consents.read(d.consent_id)
                except (ResourceNotFound, FhirError):
                    deciding = None
            out.append(
                {
                    "code": purpose,
                    "title": title,
                    "explanation": f"{words[0].upper()}{words[1:]}.",
                    "decision": d.decision.value,
                    "reason": d.reason,
                    "consent": f"{d.consent_id}/{d.consent_version}" if d.consent_id else None,
                    "exclusions": [
                        e.to_json() for e in (exclusions_of(deciding, labels) if d.permitted else [])
                    ],
                    "organizations": [
                        {
                            "organization": org,
                            "decision": od.decision.value,
                            "consent": f"{od.consent_id}/{od.consent_version}",
                        }
                        for org, od in for_organizations[purpose]
                        if od.decision != d.decision
                    ],
                }
            )
        return out

    def overview(self, patient: str) -> dict[str, Any]:
        records = self.resources_of(patient)
        labels = record.code_labels(records)
        consents = self.protection.consents.for_patient(patient)
        return {
            "patient": patient,
            "site": {"id": self.site.site_id, "name": self.site.identity.name},
            "purposes": self.purposes(patient, labels),
            "consents": [
                explain(c) for c in sorted(consents, key=lambda c: str(c.get("dateTime")), reverse=True)
            ],
            "data": record.data_choices(records),
        }

    def activity(self, patient: str) -> dict[str, Any]:
        entries = self.protection.audit.for_patient(patient)
        actions = [
            {"seq": e["seq"], "time": e["time"], "kind": e["kind"], **{k: v for k, v in e["data"].items()}}
            for e in self.protection.audit.entries()
            if e.get("kind") in (PATIENT_ACTION, ERASURE) and (e.get("data") or {}).get("patient") == patient
        ]
        return {
            "jobs": record.jobs_that_used(entries),
            "entries": sorted(entries + actions, key=lambda e: e["seq"]),
        }

    def pending(self, patient: str) -> list[dict[str, Any]]:
        return [
            {
                "id": r.request_id,
                "study": r.study,
                "purpose": r.purpose,
                "purpose_words": RESEARCH_PURPOSES.get(r.purpose, (r.purpose, ""))[0],
                "organization": r.organization,
                "message": r.message,
                "created_at": r.created,
            }
            for r in self.requests.pending(patient)
        ]

    # -- changes ----------------------------------------------------------------------------

    def set_research(
        self, patient: str, purpose: str, decision: str, exclude: list[dict[str, Any]]
    ) -> dict[str, Any]:
        if purpose not in RESEARCH_PURPOSES:
            raise Problem(
                404,
                "No such research purpose",
                f"{purpose!r} is not one of {', '.join(RESEARCH_PURPOSES)}",
                field="purpose",
            )
        labels = record.code_labels(self.resources_of(patient))
        try:
            exclusions = parse_exclusions(exclude, labels)
            consent = purpose_consent(patient, purpose, decision, exclusions, self.clock())
        except ChoiceError as exc:
            raise Problem(422, "Invalid choice", f"{exc.field}: {exc}", field=exc.field) from exc
        change = self.protection.consents.put(consent)
        self.audit(
            patient,
            "research-consent",
            purpose=purpose,
            decision=decision,
            excluded=[e.value for e in exclusions],
            consent=f"{change.consent_id}/{change.version}",
        )
        return {"consent": change.consent_id, "version": change.version}

    def answer(self, patient: str, request_id: str, accept: bool) -> dict[str, Any]:
        try:
            request = self.requests.get(request_id)
        except ConsentRequestError:
            request = None
        if request is None or request.patient != patient:
            raise Problem(404, "No such consent request", f"you have no consent request {request_id!r}")
        try:
            self.requests.answer(request_id, accept)
        except ConsentRequestError as exc:
            raise Problem(409, "Already answered", str(exc)) from exc
        consent = request_consent(
            request.request_id, patient, request.purpose, request.organization, accept, self.clock()
        )
        change = self.protection.consents.put(consent)
        self.audit(
            patient,
            "consent-request-answered",
            request=request.request_id,
            study=request.study,
            accepted=accept,
            consent=f"{change.consent_id}/{change.version}",
        )
        return {
            "request": request.request_id,
            "accepted": accept,
            "consent": change.consent_id,
            "version": change.version,
        }

    def erase(self, patient: str, session: PatientSession) -> dict[str, Any]:
        """Erasure (GDPR Art. 17): out of every future round first (a refusal replaces all
        the patient's consents, in one transaction), then the records deleted from the FHIR
        store. The audit log keeps its entries (Art. 17(3)(b)/(e): the site must be able to
        show which data it released under which consent); they hold ids and digests, no
        clinical content. The answer lists the models already trained with the patient's
        data, from those entries."""
        with self._erasing:
            self.protection.record(ERASURE, {"patient": patient, "event": "requested"})
            trained = record.jobs_that_used(self.protection.audit.for_patient(patient))
            deleted_versions, change = self.protection.consents.erase_patient(
                patient, erasure_refusal(patient, self.clock())
            )
            deleted_resources = self.site.fhir.erase_patient(patient)
            for pending in self.requests.pending(patient):
                self.requests.answer(pending.request_id, False)
            # This session stays to show the answer; other sessions and unused codes end.
            self.sessions.end_all(patient, keep=session.session_id)
            entry = self.protection.audit.append(
                ERASURE,
                {
                    "patient": patient,
                    "event": "done",
                    "fhir_resources_deleted": deleted_resources,
                    "consent_versions_deleted": deleted_versions,
                    "refusal": f"{change.consent_id}/{change.version}",
                    "models_trained": [j["job"] for j in trained],
                },
                site=self.site.site_id,
            )
        return {
            "patient": patient,
            "recorded": {"audit_seq": entry["seq"], "audit_hash": entry["hash"]},
            "fhir_resources_deleted": deleted_resources,
            "consent_versions_deleted": deleted_versions,
            "excluded_from_future_rounds": True,
            "kept": (
                "a refusal of all research (so your data stays out should it ever be loaded again) and the "
                "audit log's entries, which name your patient id, jobs and consent versions but hold no "
                "clinical data"
            ),
            "models_trained": trained,
        }
