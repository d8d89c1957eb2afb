"""A site's queue of consent requests: studies asking patients for research consent.

A feasibility query that finds a patient NO_CONSENT for its purpose and organisation may
leave them a request; the patient answers it on the consent dashboard, where accepting
becomes a permit Consent and declining a refusal (both through the ConsentStore). The
queue is ``consent-requests.sqlite`` in the site folder: every write is one SQLite
transaction, and several processes (the node's service, a feasibility worker) may share it.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from paroma.jobspec import PURPOSES

DB_NAME = "consent-requests.sqlite"
_ORGANIZATION = re.compile(r"^Organization/[A-Za-z0-9\-.]{1,64}$")
_REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_MESSAGE = 2000

SCHEMA = """
CREATE TABLE IF NOT EXISTS consent_request (
    id TEXT PRIMARY KEY,
    patient TEXT NOT NULL,
    study TEXT NOT NULL,
    purpose TEXT NOT NULL,
    organization TEXT NOT NULL,
    message TEXT NOT NULL,
    created_at TEXT NOT NULL,
    status TEXT NOT NULL,
    answered_at TEXT
);
CREATE INDEX IF NOT EXISTS consent_request_by_patient ON consent_request (patient, status);
"""


class ConsentRequestError(ValueError):
    """A request that cannot be stored or answered; the message names the field."""


class UnknownConsentRequest(ConsentRequestError):
    pass


@dataclass(frozen=True)
class ConsentRequest:
    id: str
    patient: str
    study: str
    purpose: str
    organization: str
    message: str
    created_at: str
    status: str  # pending | accepted | declined
    answered_at: str | None = None

    @property
    def pending(self) -> bool:
        return self.status == "pending"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class ConsentRequests:
    """Thread-safe; several processes may open the same file (SQLite WAL)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        with self._lock:
            self._db.executescript(SCHEMA)

    @classmethod
    def for_site(cls, site_root: Path) -> ConsentRequests:
        return cls(Path(site_root) / DB_NAME)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, patient: str, study: str, purpose: str, organization: str, message: str) -> ConsentRequest:
        """Queue a request to one patient; returns it (status pending)."""
        if not patient or len(patient) > 64:
            raise ConsentRequestError(f"patient {patient!r}: expected a patient id of 1 to 64 characters")
        if not study.strip() or len(study) > 200:
            raise ConsentRequestError("study: expected the study's name (1 to 200 characters)")
        if purpose not in PURPOSES:
            raise ConsentRequestError(
                f"purpose {purpose!r} is not a known v3-ActReason purpose ({', '.join(PURPOSES)})"
            )
        if not _ORGANIZATION.match(organization):
            raise ConsentRequestError(f"organization {organization!r}: expected Organization/<id>")
        if len(message) > MAX_MESSAGE:
            raise ConsentRequestError(f"message: at most {MAX_MESSAGE} characters")
        request = ConsentRequest(
            uuid.uuid4().hex, patient, study.strip(), purpose, organization, message, _now(), "pending"
        )
        with self._lock:
            self._db.execute(
                "INSERT INTO consent_request VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    request.id,
                    request.patient,
                    request.study,
                    request.purpose,
                    request.organization,
                    request.message,
                    request.created_at,
                    request.status,
                    None,
                ),
            )
        return request

    def get(self, request_id: str) -> ConsentRequest:
        if not _REQUEST_ID.match(request_id or ""):
            raise UnknownConsentRequest(f"consent request {request_id!r}: expected 32 hexadecimal digits")
        with self._lock:
            row = self._db.execute("SELECT * FROM consent_request WHERE id=?", (request_id,)).fetchone()
        if row is None:
            raise UnknownConsentRequest(f"no consent request {request_id}")
        return ConsentRequest(*row)

    def pending(self, patient: str) -> list[ConsentRequest]:
        """The patient's unanswered requests, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM consent_request WHERE patient=? AND status='pending' ORDER BY created_at, id",
                (patient,),
            ).fetchall()
        return [ConsentRequest(*r) for r in rows]

    def answer(self, request_id: str, accepted: bool) -> ConsentRequest:
        """Record the patient's answer; a request is answered once."""
        self.get(request_id)
        status = "accepted" if accepted else "declined"
        with self._lock:
            changed = self._db.execute(
                "UPDATE consent_request SET status=?, answered_at=? WHERE id=? AND status='pending'",
                (status, _now(), request_id),
            ).rowcount
        if not changed:
            raise ConsentRequestError(f"consent request {request_id} was already answered")
        return self.get(request_id)
