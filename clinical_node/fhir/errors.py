"""FHIR errors and their OperationOutcome form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue: what is wrong, and where (a FHIRPath-like location)."""

    diagnostics: str
    location: str | None = None
    code: str = "invalid"
    severity: str = "error"

    def to_fhir(self) -> dict[str, Any]:
        issue: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.location:
            issue["expression"] = [self.location]
        return issue


@dataclass
class FhirError(Exception):
    """An error answered to FHIR clients as an OperationOutcome with an HTTP status."""

    issues: list[Issue] = field(default_factory=list)
    status: int = 400

    def __str__(self) -> str:
        return "; ".join(
            f"{i.location}: {i.diagnostics}" if i.location else i.diagnostics for i in self.issues
        )

    def operation_outcome(self) -> dict[str, Any]:
        return {"resourceType": "OperationOutcome", "issue": [i.to_fhir() for i in self.issues]}

    @classmethod
    def single(
        cls,
        diagnostics: str,
        *,
        location: str | None = None,
        code: str = "invalid",
        status: int = 400,
    ) -> FhirError:
        return cls([Issue(diagnostics, location, code)], status)


class BundleRejected(FhirError):
    """A bundle refused as a whole; nothing from it was stored."""


class ResourceNotFound(FhirError):
    """A read of a resource that does not exist (404)."""

    def __init__(self, rtype: str, rid: str) -> None:
        super().__init__([Issue(f"{rtype}/{rid} is not known", f"{rtype}/{rid}", "not-found")], 404)
