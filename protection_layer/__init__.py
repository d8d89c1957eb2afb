"""The protection layer: per-patient FHIR Consent enforcement with Rego policies.

A site's consents (``ConsentStore``), its Rego v1 policies evaluated by an embedded
engine or an OPA server (``PolicyEngine``), the per-round cohort decision with its cache
(``CohortDecider``), the consent-enforcing data view and admission policy the clinical
node uses (``ProtectionLayer``), and the tamper-evident audit log (``AuditLog``).

Names are imported on first use, so that light users (the audit log in a subprocess,
the CLI) do not load the clinical node's training stack.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AuditLog": "audit",
    "Verification": "audit",
    "CohortDecider": "cohort",
    "CohortDecision": "cohort",
    "DataRequest": "cohort",
    "consent_terms": "consent",
    "ConsentMix": "consent_mix",
    "ConsentMixError": "consent_mix",
    "generate_consents": "consent_mix",
    "research_consent": "consent_mix",
    "revocation": "consent_mix",
    "ConsentChange": "consent_store",
    "ConsentStore": "consent_store",
    "ConsentDecision": "decisions",
    "JobContext": "decisions",
    "Obligations": "decisions",
    "PatientDecision": "decisions",
    "OpaServerEngine": "engine",
    "PolicyCompileError": "engine",
    "PolicyEngine": "engine",
    "PolicyError": "engine",
    "PolicySet": "engine",
    "PolicyTimeout": "engine",
    "PolicyUndefined": "engine",
    "RegorusEngine": "engine",
    "open_engine": "engine",
    "ConsentUnavailable": "layer",
    "ConsentView": "layer",
    "ProtectionLayer": "layer",
    "ProtectionSettings": "layer",
    "RegoAdmission": "layer",
}

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

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'protection_layer' has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
