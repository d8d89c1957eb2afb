"""Validation of FHIR R4 Bundles before anything from them is stored.

A bundle is checked whole: every entry's resource is validated with the R4B models of
``fhir.resources`` (R4's element set), every ``urn:uuid``/``urn:oid`` reference is resolved
to the id its target entry gets, and the first problems found are reported together, each
naming the entry, the resource type and the element. Only a bundle with no problem goes
on to the store, which writes it in one transaction.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from .errors import BundleRejected, Issue

ACCEPTED_BUNDLE_TYPES = ("transaction", "collection")
# Resource types another part of the node keeps: stored here, they would be silently
# ignored by the part that must enforce them.
KEPT_ELSEWHERE = {
    "Consent": "Consents are kept and enforced by the protection layer: load them with "
    "`paroma consent load` or PUT /fhir/Consent/{id}",
}
_ID_PATTERN = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_MAX_ISSUES = 50


@dataclass(frozen=True)
class PreparedEntry:
    """A validated entry ready for the store: its resource carries its final id."""

    position: int
    resource_type: str
    resource_id: str
    resource: dict[str, Any]


def _location(position: int, rtype: str, loc: tuple[Any, ...]) -> str:
    path = f"Bundle.entry[{position}].resource({rtype})"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _model_class(rtype: str) -> Any:
    try:
        return get_fhir_model_class(rtype)
    except (KeyError, ValueError, AttributeError):
        return None


def validate_resource(resource: Any, *, where: str = "resource") -> list[Issue]:
    """Problems of one resource against its R4B model (empty when valid)."""
    if not isinstance(resource, dict):
        return [Issue("a resource must be a JSON object", where)]
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        return [Issue("resourceType is missing", where)]
    model = _model_class(rtype)
    if model is None or rtype == "Bundle":
        return [Issue(f"resourceType {rtype!r} is not a storable FHIR R4 resource", where)]
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        issues = []
        for err in exc.errors()[:_MAX_ISSUES]:
            loc = ".".join(str(p) for p in err["loc"]) or "(resource)"
            issues.append(Issue(f"{rtype}.{loc}: {err['msg']}", f"{where}.{loc}"))
        return issues
    except Exception as exc:  # fhir.resources raises plain errors for some shapes
        return [Issue(f"{rtype}: {exc}", where)]
    return []


def _resource_id(entry: dict[str, Any], resource: dict[str, Any]) -> str:
    """The id an entry's resource is stored under.

    A resource's own id wins; then a PUT's ``Type/id`` url; then the uuid of a
    ``urn:uuid`` fullUrl (so that loading the same bundle twice updates rather than
    duplicates); else a new uuid.
    """
    own = resource.get("id")
    if isinstance(own, str) and _ID_PATTERN.match(own):
        return own
    request = entry.get("request") or {}
    url = request.get("url") if isinstance(request, dict) else None
    if isinstance(url, str) and request.get("method") == "PUT" and "/" in url:
        candidate = url.split("?", 1)[0].split("/")[1]
        if _ID_PATTERN.match(candidate):
            return candidate
    full_url = entry.get("fullUrl")
    if isinstance(full_url, str) and full_url.startswith("urn:uuid:"):
        candidate = full_url[len("urn:uuid:") :]
        if _ID_PATTERN.match(candidate):
            return candidate
    return str(uuid.uuid4())


def _rewrite_references(
    node: Any, mapping: dict[str, str], path: str, unresolved: list[tuple[str, str]]
) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            child = f"{path}.{key}"
            if key == "reference" and isinstance(value, str):
                if value in mapping:
                    value = mapping[value]
                elif value.startswith(("urn:uuid:", "urn:oid:")) or (
                    "?" in value and not value.startswith(("http://", "https://"))
                ):
                    unresolved.append((child, value))
                out[key] = value
            else:
                out[key] = _rewrite_references(value, mapping, child, unresolved)
        return out
    if isinstance(node, list):
        return [_rewrite_references(v, mapping, f"{path}[{i}]", unresolved) for i, v in enumerate(node)]
    return node


def prepare_bundle(data: Any) -> list[PreparedEntry]:
    """Validate a Bundle and resolve its internal references; raise BundleRejected if any
    problem is found (all problems, up to 50, are listed)."""
    if not isinstance(data, dict):
        raise BundleRejected.single("the body must be a FHIR Bundle (a JSON object)", location="Bundle")
    if data.get("resourceType") != "Bundle":
        raise BundleRejected.single(
            f"expected resourceType 'Bundle', got {data.get('resourceType')!r}", location="Bundle"
        )
    btype = data.get("type")
    if btype not in ACCEPTED_BUNDLE_TYPES:
        raise BundleRejected.single(
            f"Bundle.type {btype!r} is not accepted; expected one of {', '.join(ACCEPTED_BUNDLE_TYPES)}",
            location="Bundle.type",
        )
    entries = data.get("entry", [])
    if not isinstance(entries, list) or not entries:
        raise BundleRejected.single("the bundle has no entries", location="Bundle.entry")

    issues: list[Issue] = []
    staged: list[tuple[int, dict[str, Any], str, str]] = []
    mapping: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    for position, entry in enumerate(entries):
        where = f"Bundle.entry[{position}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            issues.append(Issue("entry has no resource", where))
            continue
        resource = entry["resource"]
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str) or _model_class(rtype) is None or rtype == "Bundle":
            issues.append(Issue(f"unknown or unstorable resourceType {rtype!r}", f"{where}.resource"))
            continue
        if rtype in KEPT_ELSEWHERE:
            issues.append(Issue(KEPT_ELSEWHERE[rtype], f"{where}.resource", "not-supported"))
            continue
        request = entry.get("request")
        if btype == "transaction":
            method = request.get("method") if isinstance(request, dict) else None
            if method not in ("POST", "PUT"):
                issues.append(
                    Issue(
                        f"transaction entry request.method {method!r} is not supported (POST and PUT are)",
                        f"{where}.request.method",
                    )
                )
                continue
        rid = _resource_id(entry, resource)
        if (rtype, rid) in seen:
            issues.append(Issue(f"{rtype}/{rid} appears twice in the bundle", f"{where}.resource.id"))
            continue
        seen.add((rtype, rid))
        full_url = entry.get("fullUrl")
        if isinstance(full_url, str):
            mapping[full_url] = f"{rtype}/{rid}"
        staged.append((position, resource, rtype, rid))

    prepared: list[PreparedEntry] = []
    for position, resource, rtype, rid in staged:
        unresolved: list[tuple[str, str]] = []
        rewritten = _rewrite_references(
            {**resource, "id": rid}, mapping, _location(position, rtype, ()), unresolved
        )
        for path, value in unresolved:
            issues.append(Issue(f"reference {value!r} does not resolve to an entry of this bundle", path))
        found = validate_resource(rewritten, where=_location(position, rtype, ()))
        issues.extend(Issue(f"entry {position} ({rtype}): {i.diagnostics}", i.location) for i in found)
        prepared.append(PreparedEntry(position, rtype, rid, rewritten))
        if len(issues) >= _MAX_ISSUES:
            break
    if issues:
        raise BundleRejected(issues[:_MAX_ISSUES], 400)
    return prepared
