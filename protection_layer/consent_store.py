"""A site's consent store: every version of every FHIR Consent, indexed by patient.

``consents.sqlite`` in the site folder. Each write (one Consent or a whole Bundle of them)
is one SQLite transaction: validated first, stored whole or not at all. Nothing is ever
overwritten: a change adds a version; the current version of each consent and a
per-patient *consent version* (bumped by any change to any of the patient's consents) are
kept beside it, so a decision cache can tell exactly which patients changed since it last
looked (:meth:`ConsentStore.changes_since`).

The FHIR body is sealed with the site's AES-GCM store key, like the FHIR store's; the
decision terms (consent.py) are kept in clear so that the policies decide without
decrypting, as the FHIR store keeps its search index.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag

from clinical_node.fhir.crypto import ResourceCipher
from clinical_node.fhir.errors import FhirError, Issue, ResourceNotFound

from .consent import ConsentRef, Terms, consent_terms, policy_terms

SCHEMA = """
CREATE TABLE IF NOT EXISTS consent_version (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    consent_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    patient TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    change TEXT NOT NULL,
    template TEXT NOT NULL,
    dates TEXT NOT NULL,
    body BLOB NOT NULL,
    UNIQUE (consent_id, version)
);
CREATE INDEX IF NOT EXISTS consent_version_by_patient ON consent_version (patient, seq);
CREATE TABLE IF NOT EXISTS consent_current (
    consent_id TEXT PRIMARY KEY,
    patient TEXT NOT NULL,
    version INTEGER NOT NULL,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS consent_current_by_patient ON consent_current (patient);
CREATE TABLE IF NOT EXISTS patient_state (
    patient TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS patient_state_by_seq ON patient_state (seq);
CREATE TABLE IF NOT EXISTS audit_outbox (
    seq INTEGER PRIMARY KEY,
    change TEXT NOT NULL
);
"""

_BATCH = 500


@dataclass(frozen=True)
class ConsentChange:
    """One stored version: what changed, for whom (the audit log records it)."""

    consent_id: str
    version: int
    patient: str
    patient_version: int
    change: str  # created | updated
    status: str
    recorded_at: str
    previous_patient: str | None = None
    seq: int = 0  # the store's sequence number of this version


def _chunks(values: Sequence[str], size: int = _BATCH) -> Iterable[Sequence[str]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


class ConsentStore:
    """Thread-safe; several processes may open the same file (SQLite WAL)."""

    def __init__(
        self,
        path: Path,
        key: bytes,
        *,
        on_change: Callable[[list[ConsentChange]], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self._cipher = ResourceCipher(key)
        self._lock = threading.RLock()
        self._on_change = on_change
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._lock:
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writing ---------------------------------------------------------------------------

    def ingest(self, document: Any) -> list[ConsentChange]:
        """Store a Consent, or a Bundle (collection or transaction) of Consents, whole or
        not at all. Raises FhirError naming every problem; nothing is stored then."""
        if isinstance(document, dict) and document.get("resourceType") == "Bundle":
            if document.get("type") not in ("collection", "transaction", "batch"):
                raise FhirError.single(
                    f"Bundle.type {document.get('type')!r} is not accepted for consents; "
                    "expected collection or transaction",
                    location="Bundle.type",
                )
            resources = []
            issues: list[Issue] = []
            for i, entry in enumerate(document.get("entry") or []):
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if not isinstance(resource, dict) or resource.get("resourceType") != "Consent":
                    issues.append(
                        Issue(
                            "only Consent resources can be loaded as consents", f"Bundle.entry[{i}].resource"
                        )
                    )
                else:
                    resources.append(resource)
            if issues:
                raise FhirError(issues)
            if not resources:
                raise FhirError.single("the bundle has no Consent entries", location="Bundle.entry")
            return self.put_many(resources, prefix="Bundle.entry")
        return self.put_many([document])

    def put(self, resource: Any) -> ConsentChange:
        return self.put_many([resource])[0]

    def put_many(self, resources: Sequence[Any], *, prefix: str = "") -> list[ConsentChange]:
        prepared: list[tuple[str, dict[str, Any], Terms]] = []
        issues: list[Issue] = []
        seen: set[str] = set()
        for i, resource in enumerate(resources):
            where = f"{prefix}[{i}].resource" if prefix else ""
            try:
                terms = consent_terms(resource)
            except FhirError as exc:
                issues += [
                    Issue(
                        f"{where}: {x.diagnostics}" if where else x.diagnostics,
                        f"{where}.{x.location}" if where and x.location else x.location,
                        x.code,
                    )
                    for x in exc.issues
                ]
                continue
            consent_id = resource.get("id") or str(uuid.uuid4())
            if not isinstance(consent_id, str) or not consent_id or len(consent_id) > 64:
                issues.append(Issue(f"Consent.id {consent_id!r} is not a valid id", "Consent.id"))
                continue
            if consent_id in seen:
                issues.append(Issue(f"Consent/{consent_id} appears twice", "Consent.id"))
                continue
            seen.add(consent_id)
            prepared.append((consent_id, dict(resource), terms))
        if issues:
            raise FhirError(issues)
        changes = self._write(prepared)
        if self._on_change is not None and changes:
            self._on_change(changes)
            self.mark_reported(changes)
        return changes

    # The changes of a transaction are kept in an outbox, in that same transaction, until the
    # change listener (the audit log) has taken them: a process killed between the commit
    # and the audit append leaves them there, and the next opening reports them.

    def unreported_changes(self) -> list[ConsentChange]:
        """Stored changes the listener has not taken yet (a process was killed in between)."""
        with self._lock:
            rows = self._db.execute("SELECT change FROM audit_outbox ORDER BY seq").fetchall()
        return [ConsentChange(**json.loads(row[0])) for row in rows]

    def mark_reported(self, changes: Sequence[ConsentChange]) -> None:
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.executemany("DELETE FROM audit_outbox WHERE seq=?", [(c.seq,) for c in changes])
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def _write(self, prepared: Sequence[tuple[str, dict[str, Any], Terms]]) -> list[ConsentChange]:
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        changes: list[ConsentChange] = []
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                for consent_id, resource, terms in prepared:
                    changes.append(self._write_one(cur, consent_id, resource, terms, stamp))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return changes

    def _bump_patient(self, cur: sqlite3.Cursor, patient: str, seq: int) -> int:
        row = cur.execute("SELECT version FROM patient_state WHERE patient=?", (patient,)).fetchone()
        version = 1 if row is None else int(row[0]) + 1
        cur.execute("INSERT OR REPLACE INTO patient_state VALUES (?,?,?)", (patient, version, seq))
        return version

    def _write_one(
        self, cur: sqlite3.Cursor, consent_id: str, resource: dict[str, Any], terms: Terms, stamp: str
    ) -> ConsentChange:
        row = cur.execute(
            "SELECT version, patient FROM consent_current WHERE consent_id=?", (consent_id,)
        ).fetchone()
        version = 1 if row is None else int(row[0]) + 1
        previous_patient = None if row is None else str(row[1])
        resource["id"] = consent_id
        meta = dict(resource.get("meta") or {})
        meta["versionId"] = str(version)
        meta["lastUpdated"] = stamp
        resource["meta"] = meta
        patient = terms["patient"]
        body = self._cipher.seal(
            "Consent", consent_id, version, json.dumps(resource, separators=(",", ":")).encode()
        )
        ref = ConsentRef.of(policy_terms(terms, consent_id, version))
        cur.execute(
            "INSERT INTO consent_version (consent_id, version, patient, recorded_at, change, template, dates, body) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (
                consent_id,
                version,
                patient,
                stamp,
                "created" if row is None else "updated",
                ref.template,
                ",".join(ref.dates),
                body,
            ),
        )
        seq = int(cur.lastrowid or 0)
        cur.execute(
            "INSERT OR REPLACE INTO consent_current VALUES (?,?,?,?)", (consent_id, patient, version, seq)
        )
        patient_version = self._bump_patient(cur, patient, seq)
        if previous_patient is not None and previous_patient != patient:
            # The consent moved to another patient: the former one's consents changed too.
            self._bump_patient(cur, previous_patient, seq)
        change = ConsentChange(
            consent_id,
            version,
            patient,
            patient_version,
            "created" if row is None else "updated",
            terms["status"],
            stamp,
            previous_patient if previous_patient != patient else None,
            seq,
        )
        if self._on_change is not None:
            cur.execute("INSERT INTO audit_outbox VALUES (?,?)", (seq, json.dumps(asdict(change))))
        return change

    # -- reading ---------------------------------------------------------------------------

    def _open(self, consent_id: str, version: int, body: bytes) -> dict[str, Any]:
        try:
            plain = self._cipher.open("Consent", consent_id, version, body)
        except InvalidTag as exc:
            raise FhirError.single(
                f"Consent/{consent_id} version {version} failed its integrity check (tampered or wrong key)",
                code="exception",
                status=500,
            ) from exc
        resource: dict[str, Any] = json.loads(plain)
        return resource

    def read(self, consent_id: str, version: int | None = None) -> dict[str, Any]:
        """The current (or a given) version of a consent, as FHIR JSON."""
        with self._lock:
            if version is None:
                row = self._db.execute(
                    "SELECT v.version, v.body FROM consent_current c JOIN consent_version v "
                    "ON v.seq = c.seq WHERE c.consent_id=?",
                    (consent_id,),
                ).fetchone()
            else:
                row = self._db.execute(
                    "SELECT version, body FROM consent_version WHERE consent_id=? AND version=?",
                    (consent_id, version),
                ).fetchone()
        if row is None:
            raise ResourceNotFound(
                "Consent", consent_id if version is None else f"{consent_id}/_history/{version}"
            )
        return self._open(consent_id, int(row[0]), row[1])

    def history(self, consent_id: str) -> list[dict[str, Any]]:
        """Every version of a consent, newest first (FHIR _history order)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT version, body FROM consent_version WHERE consent_id=? ORDER BY version DESC",
                (consent_id,),
            ).fetchall()
        if not rows:
            raise ResourceNotFound("Consent", consent_id)
        return [self._open(consent_id, int(v), b) for v, b in rows]

    def for_patient(self, patient: str) -> list[dict[str, Any]]:
        """The current version of each of the patient's consents, as FHIR JSON."""
        with self._lock:
            rows = self._db.execute(
                "SELECT v.consent_id, v.version, v.body FROM consent_current c JOIN consent_version v "
                "ON v.seq = c.seq WHERE c.patient=? ORDER BY v.consent_id",
                (patient,),
            ).fetchall()
        return [self._open(i, int(v), b) for i, v, b in rows]

    def current_refs(self, patients: Sequence[str] | None = None) -> dict[str, list[ConsentRef]]:
        """Per patient, the current version of each consent (ConsentRef). With
        ``patients``, every one of them is a key (an empty list if none)."""
        query = (
            "SELECT c.patient, v.consent_id, v.version, v.template, v.dates FROM consent_current c "
            "JOIN consent_version v ON v.seq = c.seq"
        )
        out: dict[str, list[ConsentRef]] = {}
        with self._lock:
            if patients is None:
                rows: list[Any] = self._db.execute(query).fetchall()
            else:
                rows = []
                for chunk in _chunks(list(patients)):
                    rows += self._db.execute(
                        f"{query} WHERE c.patient IN ({','.join('?' * len(chunk))})", list(chunk)
                    ).fetchall()
        if patients is not None:
            for patient in patients:
                out[patient] = []
        templates: dict[str, str] = {}
        for patient, consent_id, version, template, dates in rows:
            shared = templates.setdefault(template, template)
            out.setdefault(patient, []).append(ConsentRef.stored(consent_id, version, shared, dates))
        return out

    def current_terms(self, patients: Sequence[str] | None = None) -> dict[str, list[Terms]]:
        """Per patient, the policy terms of the current version of each consent."""
        return {p: [r.terms() for r in refs] for p, refs in self.current_refs(patients).items()}

    def patient_versions(self, patients: Sequence[str] | None = None) -> dict[str, int]:
        with self._lock:
            if patients is None:
                rows: list[Any] = self._db.execute("SELECT patient, version FROM patient_state").fetchall()
            else:
                rows = []
                for chunk in _chunks(list(patients)):
                    rows += self._db.execute(
                        f"SELECT patient, version FROM patient_state WHERE patient IN ({','.join('?' * len(chunk))})",
                        list(chunk),
                    ).fetchall()
        return {p: int(v) for p, v in rows}

    def last_seq(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT MAX(seq) FROM consent_version").fetchone()
        return int(row[0] or 0)

    def changes_since(self, seq: int) -> tuple[int, dict[str, int]]:
        """The store's latest change number, and the patients whose consents changed
        after change ``seq`` with their new consent version."""
        with self._lock:
            latest = self.last_seq()
            rows = self._db.execute(
                "SELECT patient, version FROM patient_state WHERE seq > ?", (seq,)
            ).fetchall()
        return latest, {p: int(v) for p, v in rows}

    def count(self) -> dict[str, int]:
        with self._lock:
            consents = self._db.execute("SELECT COUNT(*) FROM consent_current").fetchone()[0]
            versions = self._db.execute("SELECT COUNT(*) FROM consent_version").fetchone()[0]
            patients = self._db.execute("SELECT COUNT(*) FROM patient_state").fetchone()[0]
        return {"consents": int(consents), "versions": int(versions), "patients": int(patients)}

    # -- erasure ---------------------------------------------------------------------------

    def erase_patient(self, patient: str, refusal: dict[str, Any]) -> tuple[int, ConsentChange]:
        """Erasure (GDPR Art. 17): delete every version of the patient's consents and, in
        the same transaction, store ``refusal`` (a Consent of that patient refusing
        research) as their only one, so that the patient stays out of every job should
        their records ever be loaded again. Returns how many versions were deleted, and
        the refusal's change (audited like any other)."""
        terms = consent_terms(refusal)
        if terms["patient"] != patient:
            raise FhirError.single(
                f"the refusal is about Patient/{terms['patient']}, not Patient/{patient}",
                location="Consent.patient",
            )
        consent_id = str(refusal.get("id") or uuid.uuid4())
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        with self._lock:
            cur = self._db.cursor()
            # Deleted bodies are overwritten, not left in free pages or the WAL.
            cur.execute("PRAGMA secure_delete=ON")
            cur.execute("BEGIN IMMEDIATE")
            try:
                ids = [
                    str(r[0])
                    for r in cur.execute(
                        "SELECT consent_id FROM consent_current WHERE patient=?", (patient,)
                    ).fetchall()
                ]
                deleted = 0
                for chunk in _chunks(ids):
                    marks = ",".join("?" * len(chunk))
                    deleted += cur.execute(
                        f"DELETE FROM consent_version WHERE consent_id IN ({marks})", list(chunk)
                    ).rowcount
                    cur.execute(f"DELETE FROM consent_current WHERE consent_id IN ({marks})", list(chunk))
                # AUTOINCREMENT never reuses a seq, so the refusal's is above every deleted
                # one and the deciders' changes_since sees the patient change.
                change = self._write_one(cur, consent_id, dict(refusal), terms, stamp)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            # The checkpoint answers a row: read it, so no statement stays open on the connection.
            cur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            cur.close()
        if self._on_change is not None:
            self._on_change([change])
            self.mark_reported([change])
        return deleted, change
