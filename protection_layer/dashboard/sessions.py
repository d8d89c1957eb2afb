"""How a patient signs in to the consent dashboard: a one-time enrolment code issued by
the site, exchanged for a session.

The site's staff run ``paroma node patient-credential SITE PATIENT`` after checking the
patient's identity at the desk; it prints a code (160 random bits, in groups of four
characters so it can be read out or printed) valid for a few days. The dashboard exchanges
it, once, for a session: a random id in an HttpOnly, SameSite=Strict cookie scoped to
``/patient/``, and a CSRF token the page sends in ``X-CSRF-Token`` with every change. The
site keeps only sha256 digests of codes and session ids (``keys/patient-sessions.sqlite``,
0600), so a copy of that file does not let anyone in. A code cannot be replayed, and a
session ends at logout or after its lifetime.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

DB_NAME = "patient-sessions.sqlite"
CODE_DAYS = 7
SESSION_HOURS = 8

SCHEMA = """
CREATE TABLE IF NOT EXISTS enrolment (
    code_sha256 TEXT PRIMARY KEY,
    patient TEXT NOT NULL,
    issued_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at TEXT
);
CREATE TABLE IF NOT EXISTS session (
    id_sha256 TEXT PRIMARY KEY,
    patient TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS session_by_patient ON session (patient);
"""


class EnrolmentError(Exception):
    """An enrolment code that cannot be used (unknown, already used or expired)."""


@dataclass(frozen=True)
class Enrolment:
    code: str
    patient: str
    expires_at: datetime


@dataclass(frozen=True)
class PatientSession:
    session_id: str  # only known at creation: the site keeps its digest
    patient: str
    csrf_token: str
    expires_at: datetime

    def csrf_matches(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token, token or "")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def normalise_code(code: str) -> str:
    """Codes are read out and typed: case, spaces and dashes do not matter."""
    return "".join(ch for ch in code.upper() if ch.isalnum())


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _utc_now() -> datetime:
    return datetime.now(UTC)


class PatientSessions:
    """Thread-safe; the node's service and the CLI may open the same file."""

    def __init__(self, path: Path, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self.path = Path(path)
        self.clock = clock
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        with self._lock:
            self._db.executescript(SCHEMA)

    @classmethod
    def for_site(cls, site_root: Path, *, clock: Callable[[], datetime] = _utc_now) -> PatientSessions:
        return cls(Path(site_root) / "keys" / DB_NAME, clock=clock)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def issue_code(self, patient: str, *, days: int = CODE_DAYS) -> Enrolment:
        if not patient:
            raise EnrolmentError("an enrolment code needs a patient id")
        if not 1 <= days <= 90:
            raise EnrolmentError(f"valid days {days}: expected 1 to 90")
        raw = base64.b32encode(secrets.token_bytes(20)).decode()[:32]  # 160 bits, 32 characters
        code = "-".join(raw[i : i + 4] for i in range(0, len(raw), 4))
        now = self.clock()
        expires = now + timedelta(days=days)
        with self._lock:
            self._db.execute(
                "INSERT INTO enrolment VALUES (?,?,?,?,NULL)",
                (_digest(normalise_code(code)), patient, _stamp(now), _stamp(expires)),
            )
        return Enrolment(code, patient, expires)

    def sign_in(self, code: str) -> PatientSession:
        """Exchange an enrolment code for a new session (the code is used up)."""
        digest = _digest(normalise_code(code))
        now = self.clock()
        session_id = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        expires = now + timedelta(hours=SESSION_HOURS)
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                row = cur.execute(
                    "SELECT patient, expires_at, used_at FROM enrolment WHERE code_sha256=?", (digest,)
                ).fetchone()
                if row is None or row[2] is not None or datetime.fromisoformat(row[1]) <= now:
                    # One answer for unknown, used and expired codes: a guesser learns nothing.
                    raise EnrolmentError(
                        "this enrolment code is not valid (unknown, already used or expired); "
                        "ask the hospital for a new one"
                    )
                patient = str(row[0])
                cur.execute("UPDATE enrolment SET used_at=? WHERE code_sha256=?", (_stamp(now), digest))
                cur.execute(
                    "INSERT INTO session VALUES (?,?,?,?,?)",
                    (_digest(session_id), patient, csrf, _stamp(now), _stamp(expires)),
                )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return PatientSession(session_id, patient, csrf, expires)

    def lookup(self, session_id: str | None) -> PatientSession | None:
        """The live session with this id, or None."""
        if not session_id:
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT patient, csrf, expires_at FROM session WHERE id_sha256=?", (_digest(session_id),)
            ).fetchone()
        if row is None:
            return None
        expires = datetime.fromisoformat(row[2])
        if expires <= self.clock():
            self.end(session_id)
            return None
        return PatientSession(session_id, str(row[0]), str(row[1]), expires)

    def end(self, session_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM session WHERE id_sha256=?", (_digest(session_id),))

    def end_all(self, patient: str, *, keep: str | None = None) -> int:
        """End every session (but ``keep``) and unused code of a patient (after erasure)."""
        kept = _digest(keep) if keep else ""
        with self._lock:
            ended = self._db.execute(
                "DELETE FROM session WHERE patient=? AND id_sha256<>?", (patient, kept)
            ).rowcount
            self._db.execute("DELETE FROM enrolment WHERE patient=? AND used_at IS NULL", (patient,))
        return int(ended)
