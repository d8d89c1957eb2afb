"""A plain-Python re-statement of the consent rules (brief, "Consent semantics"), written
from the FHIR resources and independent of protection_layer: the oracle the Rego policies
are checked against in property tests.

Rules: a consent applies when it is active, of research scope, signed by ``now``, its
root decision is known (provision.type, else policyRule OPTIN/OPTOUT), ``now`` is in its
period, and its root purposes/actors/actions (when listed) include the job's. The most
recent applicable consent wins (dateTime; a tie goes to the refusal, then the larger
id). Root permit: a nested deny concerning the job now without data criteria refuses;
with data criteria it redacts what it covers. Root deny: refused unless a nested permit
concerning the job makes an exception, which releases only its data scope. Nothing
applies: NO_CONSENT.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

ACTIONS = {"access", "use"}


def _bounds(value: str) -> tuple[datetime, datetime]:
    if len(value) == 10:
        start = datetime.fromisoformat(value).replace(tzinfo=UTC)
        return start, start + timedelta(days=1)
    moment = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    return moment, moment + timedelta(seconds=1)


def _start(value: str | None) -> datetime | None:
    return _bounds(value)[0] if value else None


def _end(value: str | None) -> datetime | None:
    return _bounds(value)[1] if value else None


def _codes(concepts: Any) -> set[str]:
    return {c["code"] for concept in concepts or [] for c in concept.get("coding", [])}


def _in_period(p: dict[str, Any], now: datetime) -> bool:
    period = p.get("period") or {}
    start, end = _start(period.get("start")), _end(period.get("end"))
    return (start is None or start <= now) and (end is None or now < end)


def _context(p: dict[str, Any], purpose: str, organization: str) -> bool:
    purposes = {c["code"] for c in p.get("purpose", [])}
    actors = {a["reference"]["reference"] for a in p.get("actor", [])}
    actions = _codes(p.get("action"))
    return (
        (not purposes or purpose in purposes)
        and (not actors or organization in actors)
        and (not actions or bool(actions & ACTIONS))
    )


def _root_type(c: dict[str, Any]) -> str:
    provision = c.get("provision") or {}
    if provision.get("type"):
        return str(provision["type"])
    rules = _codes([c.get("policyRule") or {}])
    if "OPTIN" in rules:
        return "permit"
    if "OPTOUT" in rules:
        return "deny"
    return ""


def _data_criteria(p: dict[str, Any]) -> bool:
    return bool(p.get("class") or p.get("code") or p.get("securityLabel") or p.get("dataPeriod"))


@dataclass(frozen=True)
class Resource:
    rtype: str
    codes: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    start: datetime | None = None
    end: datetime | None = None


def _matches_data(p: dict[str, Any], r: Resource, *, deny: bool) -> bool:
    classes = {c["code"] for c in p.get("class", [])}
    if classes and r.rtype not in classes:
        return False
    wanted = [c for concept in p.get("code", []) for c in concept.get("coding", [])]
    if wanted and not any(
        w["code"] == code and w.get("system", "") in ("", system) for w in wanted for system, code in r.codes
    ):
        return False
    labels = p.get("securityLabel", [])
    if labels and not any(
        w["code"] == code and w.get("system", "") in ("", system) for w in labels for system, code in r.labels
    ):
        return False
    period = p.get("dataPeriod")
    if period:
        lo, hi = _start(period.get("start")), _end(period.get("end"))
        if r.start is None:
            return deny
        r_end = r.end or r.start
        if deny:
            return (lo is None or r_end > lo) and (hi is None or r.start < hi)
        return (lo is None or r.start >= lo) and (hi is None or r_end <= hi)
    return True


@dataclass(frozen=True)
class Verdict:
    decision: str
    consent: str | None = None
    within: tuple[dict[str, Any], ...] = ()
    exclude: tuple[dict[str, Any], ...] = ()

    def releases(self, r: Resource) -> bool:
        if self.decision != "PERMIT":
            return False
        return any(_matches_data(w, r, deny=False) for w in self.within) and not any(
            _matches_data(x, r, deny=True) for x in self.exclude
        )


def decide(consents: list[dict[str, Any]], purpose: str, organization: str, now: datetime) -> Verdict:
    def applies(c: dict[str, Any]) -> bool:
        root = c.get("provision") or {}
        return (
            c.get("status") == "active"
            and "research" in _codes([c.get("scope") or {}])
            and (not c.get("dateTime") or _start(c["dateTime"]) <= now)  # type: ignore[operator]
            and _root_type(c) != ""
            and _in_period(root, now)
            and _context(root, purpose, organization)
        )

    candidates = [c for c in consents if applies(c)]
    if not candidates:
        return Verdict("NO_CONSENT")

    def order(c: dict[str, Any]) -> tuple[datetime, int, str]:
        signed = _start(c.get("dateTime")) or datetime.min.replace(tzinfo=UTC)
        return signed, 1 if _root_type(c) == "deny" else 0, c["id"]

    winner = max(candidates, key=order)
    root = winner.get("provision") or {}
    nested = root.get("provision", [])
    kind = _root_type(winner)

    def nested_type(n: dict[str, Any]) -> str:
        return str(n["type"]) if n.get("type") else ("deny" if kind == "permit" else "permit")

    concerned = [n for n in nested if _in_period(n, now) and _context(n, purpose, organization)]
    if kind == "permit":
        denies = [n for n in concerned if nested_type(n) == "deny"]
        if any(not _data_criteria(n) for n in denies):
            return Verdict("DENY", winner["id"])
        return Verdict("PERMIT", winner["id"], (root,), tuple(n for n in denies if _data_criteria(n)))
    permits = [n for n in concerned if nested_type(n) == "permit"]
    if not permits:
        return Verdict("DENY", winner["id"])
    return Verdict("PERMIT", winner["id"], tuple(permits), ())
