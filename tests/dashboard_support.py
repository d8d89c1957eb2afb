"""What the consent dashboard's tests share: a patient signed in to a live node service."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from protection_layer.dashboard import PatientSessions


def enrolment_code(site_root: Path, patient: str) -> str:
    sessions = PatientSessions.for_site(site_root)
    try:
        return sessions.issue_code(patient).code
    finally:
        sessions.close()


@dataclass
class PatientClient:
    """A patient's browser, reduced to its cookie jar and the CSRF token the page keeps."""

    http: httpx.Client
    patient: str
    csrf: str

    @classmethod
    def sign_in(cls, url: str, site_root: Path, patient: str) -> PatientClient:
        http = httpx.Client(base_url=url, timeout=30)
        answer = http.post("/patient/api/session", json={"code": enrolment_code(site_root, patient)})
        assert answer.status_code == 201, answer.text
        return cls(http, patient, answer.json()["csrf_token"])

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(f"/patient/api{path}", **kwargs)

    def change(self, method: str, path: str, body: Any = None, *, csrf: str | None = None) -> httpx.Response:
        headers = {"X-CSRF-Token": self.csrf if csrf is None else csrf}
        return self.http.request(method, f"/patient/api{path}", json=body, headers=headers)

    def close(self) -> None:
        self.http.close()
