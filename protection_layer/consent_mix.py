"""Research consents for simulated sites: FHIR R4 Consents in a configurable, realistic mix.

The demo data (the UCI files) carry no consent, so a site's patients are given consents
drawn from a :class:`ConsentMix`: most permit health research (v3-ActReason HRESCH), some
opt out, some have none, some permit with a nested deny on a data class, a code or a
security label, some permitted only for a period that has ended, some permitted only
another purpose (clinical-trial research). Both ways of stating the root decision occur
(a root ``provision.type``, or only ``policyRule`` OPTIN/OPTOUT), as in real consents.
Counts per kind are exact (largest remainder), the assignment is seeded.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_CATEGORY = "http://terminology.hl7.org/CodeSystem/consentcategorycodes"
LOINC = "http://loinc.org"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"

KINDS = ("permit", "opt_out", "no_consent", "nested_deny", "expired", "other_purpose")
# Nested denies the generator draws from: a sensitive code (serum cholesterol, which the
# FLamby job reads; the thallium test, which it does not), a data class, a security label.
DEFAULT_DENY_CODES = (
    "http://loinc.org|2093-3",
    "https://paroma-med.eu/fhir/CodeSystem/uci-heart-disease|thal",
)
DEFAULT_DENY_CLASSES = ("MedicationStatement",)
DEFAULT_DENY_LABELS = ("http://terminology.hl7.org/CodeSystem/v3-ActCode|PSY",)


class ConsentMixError(ValueError):
    """A consent mix that cannot be used; the message names the field."""


@dataclass(frozen=True)
class ConsentMix:
    """Shares of a site's patients per kind of research consent (they sum to 1)."""

    permit: float = 0.78
    opt_out: float = 0.07
    no_consent: float = 0.06
    nested_deny: float = 0.04
    expired: float = 0.03
    other_purpose: float = 0.02
    deny_codes: tuple[str, ...] = DEFAULT_DENY_CODES
    deny_classes: tuple[str, ...] = DEFAULT_DENY_CLASSES
    deny_labels: tuple[str, ...] = DEFAULT_DENY_LABELS

    def __post_init__(self) -> None:
        shares = self.shares()
        for kind, share in shares.items():
            if not 0.0 <= share <= 1.0:
                raise ConsentMixError(f"consent mix {kind}={share}: expected a share between 0 and 1")
        if abs(sum(shares.values()) - 1.0) > 1e-6:
            raise ConsentMixError(
                f"consent mix shares sum to {sum(shares.values()):.4f}; they must sum to 1 ({', '.join(KINDS)})"
            )
        for name in ("deny_codes", "deny_labels"):
            for token in getattr(self, name):
                if "|" not in token or not token.split("|", 1)[1]:
                    raise ConsentMixError(f"consent mix {name}: {token!r} is not 'system|code'")

    def shares(self) -> dict[str, float]:
        return {kind: float(getattr(self, kind)) for kind in KINDS}

    @classmethod
    def full(cls) -> ConsentMix:
        """Every patient permits health research (the 'full consent' baseline)."""
        return cls(permit=1.0, opt_out=0.0, no_consent=0.0, nested_deny=0.0, expired=0.0, other_purpose=0.0)

    @classmethod
    def parse(cls, text: str) -> ConsentMix:
        """``permit=0.8,opt_out=0.1,no_consent=0.1`` (kinds not named are 0)."""
        values: dict[str, Any] = dict.fromkeys(KINDS, 0.0)
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, raw = part.partition("=")
            if not sep or name.strip() not in KINDS:
                raise ConsentMixError(
                    f"consent mix {part!r}: expected kind=share with kind one of {', '.join(KINDS)}"
                )
            try:
                values[name.strip()] = float(raw)
            except ValueError:
                raise ConsentMixError(f"consent mix {part!r}: {raw!r} is not a number") from None
        return cls(**values)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ConsentMix:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConsentMixError(f"consent mix: unknown field(s) {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key in KINDS:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ConsentMixError(f"consent mix {key}: expected a number, got {value!r}")
                values[key] = float(value)
            else:
                if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                    raise ConsentMixError(f"consent mix {key}: expected a list of strings")
                values[key] = tuple(value)
        return cls(**{**dict.fromkeys(KINDS, 0.0), **values})


def _stamp(moment: datetime) -> str:
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _coding(token: str) -> dict[str, str]:
    system, code = token.split("|", 1)
    return {"system": system, "code": code}


def research_consent(
    consent_id: str,
    patient: str,
    *,
    decision: str = "permit",
    signed: datetime,
    purposes: Sequence[str] = ("HRESCH",),
    period: tuple[datetime | None, datetime | None] | None = None,
    actors: Sequence[str] = (),
    nested: Sequence[dict[str, Any]] = (),
    explicit_type: bool = True,
    status: str = "active",
    custodian: str | None = None,
) -> dict[str, Any]:
    """A FHIR R4 research Consent (scope research, LOINC 57016-8 / consentcategorycodes
    research, policyRule OPTIN or OPTOUT)."""
    provision: dict[str, Any] = {}
    if explicit_type:
        provision["type"] = decision
    if period is not None:
        provision["period"] = {k: _stamp(v) for k, v in zip(("start", "end"), period, strict=True) if v}
    if actors:
        provision["actor"] = [
            {
                "role": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                            "code": "PRCP",
                        }
                    ]
                },
                "reference": {"reference": a},
            }
            for a in actors
        ]
    if purposes:
        provision["purpose"] = [{"system": ACT_REASON, "code": p} for p in purposes]
    if nested:
        provision["provision"] = list(nested)
    consent: dict[str, Any] = {
        "resourceType": "Consent",
        "id": consent_id,
        "status": status,
        "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "research"}]},
        "category": [
            {
                "coding": [
                    {"system": LOINC, "code": "57016-8", "display": "Privacy policy acknowledgement Document"}
                ]
            },
            {"coding": [{"system": CONSENT_CATEGORY, "code": "research"}]},
        ],
        "patient": {"reference": f"Patient/{patient}"},
        "dateTime": _stamp(signed),
        "policyRule": {
            "coding": [{"system": ACT_CODE, "code": "OPTIN" if decision == "permit" else "OPTOUT"}]
        },
        "provision": provision,
    }
    if custodian:
        consent["organization"] = [{"reference": custodian}]
    return consent


def nested_deny(
    *,
    classes: Sequence[str] = (),
    codes: Sequence[str] = (),
    labels: Sequence[str] = (),
    data_period: tuple[datetime | None, datetime | None] | None = None,
    purposes: Sequence[str] = (),
) -> dict[str, Any]:
    """A nested deny provision (an exception to a permit); codes and labels as
    ``system|code``."""
    provision: dict[str, Any] = {"type": "deny"}
    if purposes:
        provision["purpose"] = [{"system": ACT_REASON, "code": p} for p in purposes]
    if classes:
        provision["class"] = [{"system": RESOURCE_TYPES, "code": c} for c in classes]
    if codes:
        provision["code"] = [{"coding": [_coding(c)]} for c in codes]
    if labels:
        provision["securityLabel"] = [_coding(label) for label in labels]
    if data_period is not None:
        provision["dataPeriod"] = {
            k: _stamp(v) for k, v in zip(("start", "end"), data_period, strict=True) if v
        }
    return provision


def revocation(
    consent_id: str, patient: str, *, signed: datetime, purposes: Sequence[str] = ("HRESCH",)
) -> dict[str, Any]:
    """The patient withdraws research use for these purposes: a refusal (OPTOUT) dated
    ``signed``, which supersedes any earlier permission (most recent consent wins)."""
    return research_consent(consent_id, patient, decision="deny", signed=signed, purposes=purposes)


@dataclass(frozen=True)
class GeneratedConsent:
    patient: str
    kind: str
    resource: dict[str, Any] | None


def _counts(n: int, shares: Mapping[str, float]) -> dict[str, int]:
    exact = {k: n * s for k, s in shares.items()}
    counts = {k: int(v) for k, v in exact.items()}
    rest = n - sum(counts.values())
    for k in sorted(exact, key=lambda k: (counts[k] - exact[k], KINDS.index(k)))[:rest]:
        counts[k] += 1
    return counts


def generate_consents(
    patients: Sequence[str],
    mix: ConsentMix,
    *,
    now: datetime,
    seed: int = 0,
    prefix: str = "research",
    custodian: str | None = None,
) -> list[GeneratedConsent]:
    """One research consent (or none) per patient, in the mix's proportions."""
    rng = random.Random(seed)
    order = list(patients)
    rng.shuffle(order)
    kinds: list[str] = []
    for kind, count in _counts(len(order), mix.shares()).items():
        kinds += [kind] * count
    out: list[GeneratedConsent] = []
    for patient, kind in sorted(zip(order, kinds, strict=True)):
        if kind == "no_consent":
            out.append(GeneratedConsent(patient, kind, None))
            continue
        signed = now - timedelta(days=rng.randint(30, 3 * 365), seconds=rng.randint(0, 86_399))
        explicit = rng.random() < 0.5
        cid = f"{prefix}-{patient}"
        if kind == "permit":
            resource = research_consent(
                cid, patient, signed=signed, period=(signed, signed + timedelta(days=5 * 365)),
                explicit_type=explicit, custodian=custodian,
            )  # fmt: skip
        elif kind == "opt_out":
            resource = research_consent(
                cid,
                patient,
                decision="deny",
                signed=signed,
                purposes=(),
                explicit_type=explicit,
                custodian=custodian,
            )
        elif kind == "nested_deny":
            variant = rng.randrange(3)
            if variant == 0 and mix.deny_codes:
                deny = nested_deny(codes=[rng.choice(mix.deny_codes)])
            elif variant == 1 and mix.deny_classes:
                deny = nested_deny(classes=[rng.choice(mix.deny_classes)])
            else:
                deny = nested_deny(labels=[rng.choice(mix.deny_labels or DEFAULT_DENY_LABELS)])
            resource = research_consent(
                cid, patient, signed=signed, period=(signed, signed + timedelta(days=5 * 365)),
                nested=[deny], explicit_type=explicit, custodian=custodian,
            )  # fmt: skip
        elif kind == "expired":
            signed = now - timedelta(days=rng.randint(6 * 365, 8 * 365))
            ended = now - timedelta(days=rng.randint(30, 2 * 365))
            resource = research_consent(
                cid,
                patient,
                signed=signed,
                period=(signed, ended),
                explicit_type=explicit,
                custodian=custodian,
            )
        else:  # other_purpose: only clinical-trial research was permitted
            resource = research_consent(
                cid,
                patient,
                signed=signed,
                purposes=("CLINTRCH",),
                explicit_type=explicit,
                custodian=custodian,
            )
        out.append(GeneratedConsent(patient, kind, resource))
    return out
