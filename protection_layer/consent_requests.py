"""A site's queue of consent requests: asks to a patient to consent to a study, waiting
for the patient dashboard to deliver them and for the patient's answer.

A feasibility query may queue one for every patient of its cohort who has no consent for
its purpose (NO_CONSENT). A pending request for the same patient and study is not
queued twice. Answering records the patient's choice; the consent itself is written by
whoever receives the answer (a FHIR Consent in the site's consent store), never here.

SQLite (``consent-requests.sqlite`` in the site folder), one transaction per change.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

DB_NAME = "consent-requests.sqlite"
PENDING, ACCEPTED, DECLINED = "pending", "accepted", "declined"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS consent_request (
    id TEXT PRIMARY KEY,
    patient TEXT NOT NULL,
    study TEXT NOT NULL,
    purpose TEXT NOT NULL,
    organization TEXT NOT NULL,
    message TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'accepted', 'declined')),
    created TEXT NOT NULL,
    answered TEXT
);
CREATE INDEX IF NOT EXISTS consent_request_by_patient ON consent_request (patient, status);
CREATE UNIQUE INDEX IF NOT EXISTS one_pending_per_study
    ON consent_request (patient, study) WHERE status = 'pending';
"""


_SELECT = "SELECT id, patient, study, purpose, organization, message, status, created, answered FROM consent_request"


class ConsentRequestError(Exception):
    """An unknown request, one already answered, or a field missing."""


@dataclass(frozen=True)
class ConsentRequest:
    request_id: str
    patient: str
    study: str
    purpose: str
    organization: str
    message: str
    status: str  # pending | accepted | declined
    created: str
    answered: str | None = None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class ConsentRequests:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)

    @classmethod
    def for_site(cls, site_root: Path) -> ConsentRequests:
        return cls(Path(site_root) / DB_NAME)

    def close(self) -> None:
        self._db.close()

    def add(self, patient: str, study: str, purpose: str, organization: str, message: str) -> str:
        """Queue a request; the id of the pending one for this patient and study if there is one."""
        return self.add_many([patient], study, purpose, organization, message)[0]

    def add_many(
        self, patients: Iterable[str], study: str, purpose: str, organization: str, message: str
    ) -> list[str]:
        """Queue one request per patient in one transaction; ids in the patients' order."""
        for name, value in (("study", study), ("purpose", purpose), ("organization", organization)):
            if not value:
                raise ConsentRequestError(f"{name}: required")
        created = _now()
        ids: list[str] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for patient in patients:
                    if not patient:
                        raise ConsentRequestError("patient: required")
                    row = self._db.execute(
                        "SELECT id FROM consent_request WHERE patient = ? AND study = ? AND status = 'pending'",
                        (patient, study),
                    ).fetchone()
                    if row is not None:
                        ids.append(str(row[0]))
                        continue
                    request_id = str(uuid.uuid4())
                    self._db.execute(
                        "INSERT INTO consent_request VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, NULL)",
                        (request_id, patient, study, purpose, organization, message, created),
                    )
                    ids.append(request_id)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return ids

    def _rows(self, where: str, params: tuple[str, ...]) -> list[ConsentRequest]:
        # ``where`` is one of this module's constant clauses; values are bound parameters
        query = f"{_SELECT} WHERE {where} ORDER BY created, rowid"
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        return [ConsentRequest(*row) for row in rows]

    def pending(self, patient: str) -> list[ConsentRequest]:
        """The patient's requests not answered yet, oldest first."""
        return self._rows("patient = ? AND status = 'pending'", (patient,))

    def get(self, request_id: str) -> ConsentRequest:
        found = self._rows("id = ?", (request_id,))
        if not found:
            raise ConsentRequestError(f"no consent request {request_id!r}")
        return found[0]

    def answer(self, request_id: str, accepted: bool) -> ConsentRequest:
        """Record the patient's answer; a request is answered once."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE consent_request SET status = ?, answered = ? WHERE id = ? AND status = 'pending'",
                (ACCEPTED if accepted else DECLINED, _now(), request_id),
            )
            changed = cursor.rowcount
        if not changed:
            current = self.get(request_id)  # raises for an unknown id
            raise ConsentRequestError(f"consent request {request_id} was already answered ({current.status})")
        return self.get(request_id)
