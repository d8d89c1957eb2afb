"""A site's protection layer: its consent store, policy engine, cohort decider and audit
log, and the two faces the clinical node uses: the consent-enforcing data view and the
Rego admission policy.

The engine is chosen in the ``[protection]`` table of ``site.toml``::

    [protection]
    engine = "embedded"          # or "opa"
    opa_url = "http://opa:8181"  # for engine = "opa"
    decision_timeout_s = 10

Policies are the built-in ``protection_layer/policies/*.rego``, each replaceable by a
file of the same name in ``<site>/policies/``. They are re-read at the start of every
decision: a changed set that compiles replaces the active one; one that does not leaves
the previous set active, and the error is kept (``policy_error``) and audited.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from clinical_node.fhir.crypto import load_key_file
from clinical_node.fhir.index import iso
from clinical_node.node import Admission, Cohort, RoundFailure, RoundReport
from clinical_node.site import Site
from paroma.jobspec import JobSpec

from . import audit as kinds
from .audit import AuditLog
from .cohort import CohortDecider, CohortDecision
from .consent_store import ConsentChange, ConsentStore
from .decisions import JobContext, PatientDecision, decide
from .engine import DEFAULT_TIMEOUT_S, PolicyCompileError, PolicyEngine, PolicyError, PolicySet, open_engine

CONSENT_DB = "consents.sqlite"
log = logging.getLogger("paroma.protection")


class ConsentUnavailable(RoundFailure):
    """No consent decision could be made this round: no data is released."""


@dataclass(frozen=True)
class ProtectionSettings:
    engine: str = "embedded"
    opa_url: str = ""
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> ProtectionSettings:
        data = dict(data or {})
        engine = data.get("engine", "embedded")
        if engine not in ("embedded", "opa"):
            raise PolicyError(f"protection.engine: {engine!r} is not one of embedded, opa")
        url = data.get("opa_url", "")
        if not isinstance(url, str) or (engine == "opa" and not url):
            raise PolicyError("protection.opa_url: the OPA server's URL is required for engine = 'opa'")
        timeout = data.get("decision_timeout_s", DEFAULT_TIMEOUT_S)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 3600:
            raise PolicyError("protection.decision_timeout_s: expected a number of seconds in (0, 3600]")
        return cls(engine, url, float(timeout))


def utc_now() -> datetime:
    return datetime.now(UTC)


class ProtectionLayer:
    def __init__(
        self,
        site: Site,
        *,
        engine: PolicyEngine | None = None,
        clock: Callable[[], datetime] = utc_now,
        isolation: str = "none",
    ) -> None:
        self.site = site
        self.clock = clock
        self.audit = AuditLog.for_site(site.root)
        self.settings = ProtectionSettings.from_mapping(site.settings.get("protection"))
        self.consents = ConsentStore(
            site.root / CONSENT_DB, load_key_file(site.key_path), on_change=self._consents_changed
        )
        policies = PolicySet.for_site(site.root)
        if engine is None:
            engine = open_engine(
                self.settings.engine,
                url=self.settings.opa_url,
                policies=policies,
                timeout_s=self.settings.timeout_s,
            )
        elif engine.policy_version != policies.version:
            engine.load(policies)
        self.engine = engine
        # Consent changes stored by a process killed before it audited them.
        unreported = self.consents.unreported_changes()
        if unreported:
            self._consents_changed(unreported, recovered=True)
            self.consents.mark_reported(unreported)
        self.policy_error: str | None = None
        self._rejected_version = ""
        self._reload_lock = threading.Lock()
        self.decider = CohortDecider(site.fhir, self.consents, lambda: self.engine)
        self.view = ConsentView(self)
        self.admission = RegoAdmission(self, isolation)

    def close(self) -> None:
        self.consents.close()
        self.engine.close()

    def now(self) -> str:
        return iso(self.clock())

    def record(self, kind: str, data: Mapping[str, Any]) -> None:
        self.audit.append(kind, data, site=self.site.site_id)

    # -- policies --------------------------------------------------------------------------

    def reload_policies(self) -> bool:
        """Load the site's policy files if they changed. False (and ``policy_error`` set)
        when they do not compile: the previously active set stays in force."""
        with self._reload_lock:
            policies = PolicySet.for_site(self.site.root)
            if policies.version == self.engine.policy_version:
                self.policy_error = None
                return True
            if policies.version == self._rejected_version:
                return False
            try:
                self.engine.load(policies)
            except PolicyCompileError as exc:
                self.policy_error = str(exc)
                self._rejected_version = policies.version
                log.error(
                    "site %s: policies not reloaded, previous set stays active: %s", self.site.site_id, exc
                )
                self.record(
                    kinds.POLICY,
                    {
                        "event": "rejected",
                        "version": policies.version,
                        "active": self.engine.policy_version,
                        "error": str(exc),
                    },
                )
                return False
            self.policy_error = None
            self.record(kinds.POLICY, {"event": "loaded", "version": policies.version})
            return True

    # -- decisions -------------------------------------------------------------------------

    def decide_cohort(self, job: JobSpec, now: str | None = None) -> CohortDecision:
        self.reload_policies()
        return self.decider.decide(job, now or self.now())

    def decide_patient(self, job: JobSpec, patient: str, now: str | None = None) -> PatientDecision:
        """One patient's decision for a job (for the CLI and the patient's own view)."""
        self.reload_policies()
        terms = self.decider.patient_terms(patient)
        return decide(self.engine, JobContext.of(job), {patient: terms}, now or self.now())[patient]

    def _consents_changed(self, changes: list[ConsentChange], *, recovered: bool = False) -> None:
        self.audit.append_many(
            [
                (
                    kinds.CONSENT_CHANGE,
                    {
                        "patient": change.patient,
                        "consent": change.consent_id,
                        "version": change.version,
                        "patient_version": change.patient_version,
                        "change": change.change,
                        "status": change.status,
                        **({"moved_from": change.previous_patient} if change.previous_patient else {}),
                        # audited when the site was next opened, after a crash
                        **({"recorded_at": change.recorded_at, "recovered": True} if recovered else {}),
                    },
                )
                for change in changes
            ],
            site=self.site.site_id,
        )

    # -- the node's round events (clinical_node.node.NodeEvents) ----------------------------

    def round_finished(
        self, job: JobSpec, server_round: int, kind: str, report: RoundReport | None, error: str | None
    ) -> None:
        self.record(
            kinds.ROUND,
            {
                "job": job.sha256,
                "job_name": job.name,
                "round": server_round,
                "kind": kind,
                "status": "failed" if error else "ok",
                "num_examples": report.num_examples if report else 0,
                **({"reason": error} if error else {}),
            },
        )


class ConsentView:
    """The clinical node's only way to a job's data (clinical_node.node.DataView): the
    non-redacted resources of the patients whose consent permits the job, decided at the
    start of the round (the first call for a round) and kept for that round."""

    def __init__(self, layer: ProtectionLayer) -> None:
        self.layer = layer
        self._lock = threading.Lock()
        self._pinned: dict[str, tuple[int, CohortDecision]] = {}

    def decision_for_round(self, job: JobSpec, server_round: int) -> CohortDecision:
        with self._lock:
            pinned = self._pinned.get(job.sha256)
            if pinned is not None and pinned[0] == server_round:
                return pinned[1]
            try:
                decision = self.layer.decide_cohort(job)
            except PolicyError as exc:
                self.layer.record(
                    kinds.COHORT,
                    {"job": job.sha256, "round": server_round, "status": "failed", "error": str(exc)},
                )
                raise ConsentUnavailable(f"the protection layer released no data: {exc}") from exc
            self._pinned[job.sha256] = (server_round, decision)
            self._audit(job, server_round, decision)
            return decision

    def _audit(self, job: JobSpec, server_round: int, decision: CohortDecision) -> None:
        keys = decision.resource_keys()
        self.layer.record(
            kinds.COHORT,
            {
                "job": job.sha256,
                "job_name": job.name,
                "round": server_round,
                "status": "decided",
                "now": decision.now,
                "counts": dict(decision.counts),
                "redacted_resources": decision.redacted,
                "patient_set_sha256": decision.patient_set_sha256(),
                "policy_version": decision.policy_version,
                "engine": decision.engine,
                "redecided": len(decision.redecided),
            },
        )
        self.layer.record(
            kinds.RELEASE,
            {
                "job": job.sha256,
                "job_name": job.name,
                "purpose": job.purpose,
                "organization": job.organization,
                "round": server_round,
                "patients": {
                    p: f"{decision.decisions[p].consent_id}/{decision.decisions[p].consent_version}"
                    for p in sorted(decision.released)
                },
                "resources": len(keys),
                "resources_sha256": hashlib.sha256(
                    "\n".join(f"{t}/{i}" for t, i in keys).encode()
                ).hexdigest(),
                "snapshot": decision.snapshot,
            },
        )

    def cohort(self, job: JobSpec, server_round: int) -> Cohort:
        decision = self.decision_for_round(job, server_round)
        keys = decision.resource_keys()
        store = self.layer.site.fhir
        counts = decision.counts
        # The resources are read (decrypted) only if the node has not already extracted this
        # exact snapshot (same released patients, consent versions, redactions and store).
        return Cohort(
            lambda: store.read_many(keys),
            permit=counts["PERMIT"],
            deny=counts["DENY"],
            no_consent=counts["NO_CONSENT"],
            redacted_resources=decision.redacted,
            snapshot=decision.snapshot,
        )


class RegoAdmission:
    """Site admission decided by ``policies/admission.rego`` (clinical_node.node.AdmissionPolicy)."""

    RULE = "paroma.admission.decision"

    def __init__(self, layer: ProtectionLayer, isolation: str) -> None:
        self.layer = layer
        self.isolation = isolation
        self._last: dict[str, tuple[bool, str, str]] = {}

    def admission_input(self, job: JobSpec, counts: Mapping[str, int]) -> dict[str, Any]:
        site = self.layer.site
        return {
            "job": {
                "name": job.name,
                "sha256": job.sha256,
                "purpose": job.purpose,
                "organization": job.organization,
                "plan": job.plan,
                "plan_sha256": job.plan_sha256,
                "privacy": {
                    "clip_norm": job.privacy.clip_norm,
                    "noise_multiplier": job.privacy.noise_multiplier,
                    "delta": job.privacy.delta,
                    "secure_aggregation": job.privacy.secure_aggregation,
                },
                "round_timeout_s": job.round_timeout_s,
            },
            "site": site.policy.to_input(),
            "node": {
                "isolation": self.isolation,
                "approved_plans": [a.sha256 for a in site.plans.approved()],
            },
            "cohort": {
                "permit": counts["PERMIT"],
                "deny": counts["DENY"],
                "no_consent": counts["NO_CONSENT"],
            },
        }

    def _decide(self, job: JobSpec) -> Admission:
        try:
            cohort = self.layer.decide_cohort(job)
        except PolicyError as exc:
            return Admission(False, f"the site could not decide its consent cohort for this job: {exc}")
        try:
            result = self.layer.engine.evaluate(self.RULE, self.admission_input(job, cohort.counts))
        except PolicyError as exc:
            return Admission(False, f"the site's admission policy could not decide: {exc}")
        accepted, reasons = (
            (result.get("accepted"), result.get("reasons")) if isinstance(result, dict) else (None, None)
        )
        if (
            not isinstance(accepted, bool)
            or not isinstance(reasons, list)
            or not all(isinstance(r, str) for r in reasons)
        ):
            return Admission(False, "the site's admission policy returned a malformed decision")
        if accepted and reasons:
            return Admission(
                False, "the site's admission policy accepted the job while giving refusal reasons"
            )
        if not accepted:
            return Admission(False, "; ".join(reasons) or "refused")
        obligations = result.get("obligations") if isinstance(result, dict) else None
        extra = [o for o in obligations if isinstance(o, str)] if isinstance(obligations, list) else []
        return Admission(True, "; ".join(["admitted", *extra]))

    def admit(self, job: JobSpec) -> Admission:
        admission = self._decide(job)
        state = (admission.accepted, admission.reason, self.layer.engine.policy_version)
        if self._last.get(job.sha256) != state:
            self._last[job.sha256] = state
            self.layer.record(
                kinds.ADMISSION,
                {
                    "job": job.sha256,
                    "job_name": job.name,
                    "purpose": job.purpose,
                    "organization": job.organization,
                    "accepted": admission.accepted,
                    "reason": admission.reason,
                    "policy_version": self.layer.engine.policy_version,
                },
            )
        return admission
