"""The protection layer: per-patient FHIR Consent enforcement with Rego policies.

A site's consents (``ConsentStore``), its Rego v1 policies evaluated by an embedded
engine or an OPA server (``PolicyEngine``), the per-round cohort decision with its cache
(``CohortDecider``), the consent-enforcing data view and admission policy the clinical
node uses (``ProtectionLayer``), and the tamper-evident audit log (``AuditLog``).
"""

from .audit import AuditLog, Verification
from .cohort import CohortDecider, CohortDecision, DataRequest
from .consent import consent_terms
from .consent_mix import ConsentMix, ConsentMixError, generate_consents, research_consent, revocation
from .consent_store import ConsentChange, ConsentStore
from .decisions import ConsentDecision, JobContext, Obligations, PatientDecision
from .engine import (
    OpaServerEngine,
    PolicyCompileError,
    PolicyEngine,
    PolicyError,
    PolicySet,
    PolicyTimeout,
    PolicyUndefined,
    RegorusEngine,
    open_engine,
)
from .layer import ConsentUnavailable, ConsentView, ProtectionLayer, ProtectionSettings, RegoAdmission

__all__ = [
    "AuditLog",
    "CohortDecider",
    "CohortDecision",
    "ConsentChange",
    "ConsentDecision",
    "ConsentMix",
    "ConsentMixError",
    "ConsentStore",
    "ConsentUnavailable",
    "ConsentView",
    "DataRequest",
    "JobContext",
    "Obligations",
    "OpaServerEngine",
    "PatientDecision",
    "PolicyCompileError",
    "PolicyEngine",
    "PolicyError",
    "PolicySet",
    "PolicyTimeout",
    "PolicyUndefined",
    "ProtectionLayer",
    "ProtectionSettings",
    "RegoAdmission",
    "RegorusEngine",
    "Verification",
    "consent_terms",
    "generate_consents",
    "open_engine",
    "research_consent",
    "revocation",
]
