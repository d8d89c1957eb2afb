"""A site's FHIR R4 store: an SQLite index with AES-GCM-encrypted resource bodies.

Every write is one SQLite transaction, so a bundle is stored whole or not at all, and a
crash leaves the store as it was before the write. The index (patient, codes, security
labels, clinical date) is kept in clear so that searches and consent redaction decide
without decrypting; the clinical content stays encrypted at rest.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag

from .bundle import KEPT_ELSEWHERE, PreparedEntry, prepare_bundle, validate_resource
from .crypto import ResourceCipher
from .errors import FhirError, Issue, ResourceNotFound
from .index import IndexEntry, date_range, index_entry, iso

SCHEMA = """
CREATE TABLE IF NOT EXISTS resource (
    rtype TEXT NOT NULL,
    rid TEXT NOT NULL,
    version INTEGER NOT NULL,
    patient TEXT,
    date_start TEXT,
    date_end TEXT,
    last_updated TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (rtype, rid)
);
CREATE INDEX IF NOT EXISTS resource_by_patient ON resource (patient, rtype);
CREATE INDEX IF NOT EXISTS resource_by_date ON resource (rtype, date_start);
CREATE TABLE IF NOT EXISTS resource_token (
    rtype TEXT NOT NULL,
    rid TEXT NOT NULL,
    param TEXT NOT NULL,
    system TEXT NOT NULL,
    code TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS token_by_code ON resource_token (param, code, system);
CREATE INDEX IF NOT EXISTS token_by_resource ON resource_token (rtype, rid);
-- Covering indexes for reading a type's (id, patient) and its ids by code without touching
-- the rows' encrypted bodies (the protection layer reads them for whole cohorts).
CREATE INDEX IF NOT EXISTS resource_keys ON resource (rtype, rid, patient);
CREATE INDEX IF NOT EXISTS token_codes ON resource_token (rtype, param, code, system, rid);
CREATE TABLE IF NOT EXISTS store_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL
);
INSERT OR IGNORE INTO store_state VALUES (1, 0);
CREATE TABLE IF NOT EXISTS resource_history (
    rtype TEXT NOT NULL,
    rid TEXT NOT NULL,
    version INTEGER NOT NULL,
    last_updated TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (rtype, rid, version)
);
"""

DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le")
_CHUNK = 500  # bound parameters per IN (...) list


@dataclass(frozen=True)
class StoredRef:
    resource_type: str
    resource_id: str
    version: int
    created: bool


@dataclass(frozen=True)
class IndexedResource:
    """A resource's index row, without its (encrypted) body."""

    resource_type: str
    resource_id: str
    patient: str | None
    date_start: str | None
    date_end: str | None
    codes: tuple[tuple[str, str], ...]
    security: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class TokenQuery:
    """A token search value: ``system|code``, ``code`` or ``system|``."""

    system: str | None
    code: str | None

    @classmethod
    def parse(cls, text: str) -> TokenQuery:
        if "|" in text:
            system, code = text.split("|", 1)
            return cls(system, code or None)
        return cls(None, text)


@dataclass(frozen=True)
class DateQuery:
    prefix: str
    start: str
    end: str

    @classmethod
    def parse(cls, text: str) -> DateQuery:
        prefix = text[:2] if text[:2] in DATE_PREFIXES else "eq"
        value = text[2:] if text[:2] in DATE_PREFIXES else text
        start, end = date_range(value)
        return cls(prefix, iso(start), iso(end))


@dataclass(frozen=True)
class SearchPage:
    total: int
    resources: list[dict[str, Any]]


class FhirStore:
    """The FHIR store of one site. Thread-safe; several processes may open the same file."""

    def __init__(self, path: Path, key: bytes) -> None:
        self.path = Path(path)
        self._cipher = ResourceCipher(key)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._lock:
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writing ---------------------------------------------------------------------------

    def ingest_bundle(self, bundle: Any) -> list[StoredRef]:
        """Validate and store a transaction or collection Bundle atomically."""
        prepared = prepare_bundle(bundle)
        return self._write(prepared)

    def put_resource(self, resource: dict[str, Any]) -> StoredRef:
        """Create or update one resource (it must carry its id)."""
        issues = validate_resource(resource)
        if not issues and resource.get("resourceType") in KEPT_ELSEWHERE:
            issues = [Issue(KEPT_ELSEWHERE[resource["resourceType"]], "resource", "not-supported")]
        if not issues and not resource.get("id"):
            issues = [Issue("the resource has no id", "resource.id")]
        if issues:
            raise FhirError(issues)
        entry = PreparedEntry(0, resource["resourceType"], resource["id"], resource)
        return self._write([entry])[0]

    def _write(self, entries: Sequence[PreparedEntry]) -> list[StoredRef]:
        now = datetime.now(UTC)
        stamp = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        refs: list[StoredRef] = []
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                for entry in entries:
                    refs.append(self._write_one(cur, entry, stamp))
                cur.execute("UPDATE store_state SET generation = generation + 1")
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return refs

    def _write_one(self, cur: sqlite3.Cursor, entry: PreparedEntry, stamp: str) -> StoredRef:
        rtype, rid = entry.resource_type, entry.resource_id
        row = cur.execute(
            "SELECT version, last_updated, body FROM resource WHERE rtype=? AND rid=?", (rtype, rid)
        ).fetchone()
        version = 1 if row is None else int(row[0]) + 1
        if row is not None:
            cur.execute(
                "INSERT OR REPLACE INTO resource_history VALUES (?,?,?,?,?)",
                (rtype, rid, int(row[0]), row[1], row[2]),
            )
            cur.execute("DELETE FROM resource_token WHERE rtype=? AND rid=?", (rtype, rid))
        resource = dict(entry.resource)
        meta = dict(resource.get("meta") or {})
        meta["versionId"] = str(version)
        meta["lastUpdated"] = stamp
        resource["meta"] = meta
        idx: IndexEntry = index_entry(resource)
        body = self._cipher.seal(rtype, rid, version, json.dumps(resource, separators=(",", ":")).encode())
        cur.execute(
            "INSERT OR REPLACE INTO resource VALUES (?,?,?,?,?,?,?,?)",
            (rtype, rid, version, idx.patient, idx.date_start, idx.date_end, stamp, body),
        )
        cur.executemany(
            "INSERT INTO resource_token VALUES (?,?,?,?,?)",
            [(rtype, rid, "code", s, c) for s, c in idx.codes]
            + [(rtype, rid, "_security", s, c) for s, c in idx.security],
        )
        return StoredRef(rtype, rid, version, row is None)

    def erase_patient(self, patient_id: str) -> int:
        """Delete every resource of a patient, with its history; returns how many. The
        freed pages are overwritten and the WAL checkpointed, so that neither the index
        (which is in clear) nor the sealed bodies stay behind in the files (erasure)."""
        with self._lock:
            cur = self._db.cursor()
            cur.execute("PRAGMA secure_delete=ON")
            cur.execute("BEGIN IMMEDIATE")
            try:
                rows = cur.execute(
                    "SELECT rtype, rid FROM resource WHERE patient=? OR (rtype='Patient' AND rid=?)",
                    (patient_id, patient_id),
                ).fetchall()
                for rtype, rid in rows:
                    cur.execute("DELETE FROM resource_token WHERE rtype=? AND rid=?", (rtype, rid))
                    cur.execute("DELETE FROM resource_history WHERE rtype=? AND rid=?", (rtype, rid))
                    cur.execute("DELETE FROM resource WHERE rtype=? AND rid=?", (rtype, rid))
                cur.execute("UPDATE store_state SET generation = generation + 1")
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            # The checkpoint answers a row: read it, so no statement stays open on the connection.
            cur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            cur.close()
        return len(rows)

    # -- reading ---------------------------------------------------------------------------

    def _open(self, rtype: str, rid: str, version: int, body: bytes) -> dict[str, Any]:
        try:
            plain = self._cipher.open(rtype, rid, version, body)
        except InvalidTag as exc:
            raise FhirError.single(
                f"{rtype}/{rid} failed its integrity check (tampered or wrong key)",
                code="exception",
                status=500,
            ) from exc
        resource: dict[str, Any] = json.loads(plain)
        return resource

    def read(self, rtype: str, rid: str) -> dict[str, Any]:
        with self._lock:
            row = self._db.execute(
                "SELECT version, body FROM resource WHERE rtype=? AND rid=?", (rtype, rid)
            ).fetchone()
        if row is None:
            raise ResourceNotFound(rtype, rid)
        return self._open(rtype, rid, int(row[0]), row[1])

    def _where(
        self,
        rtype: str | None,
        *,
        patient: str | None = None,
        patients: Iterable[str] | None = None,
        ids: Sequence[str] | None = None,
        codes: Sequence[TokenQuery] | None = None,
        dates: Sequence[DateQuery] | None = None,
    ) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if rtype:
            clauses.append("r.rtype = ?")
            params.append(rtype)
        if patient is not None:
            clauses.append("(r.patient = ? OR (r.rtype = 'Patient' AND r.rid = ?))")
            params += [patient, patient]
        if patients is not None:
            plist = list(patients)
            clauses.append(f"r.patient IN ({','.join('?' * len(plist))})" if plist else "0")
            params += plist
        if ids:
            clauses.append(f"r.rid IN ({','.join('?' * len(ids))})")
            params += list(ids)
        if codes:
            alternatives = []
            for token in codes:
                cond = ["t.param = 'code'"]
                if token.code is not None:
                    cond.append("t.code = ?")
                    params.append(token.code)
                if token.system is not None:
                    cond.append("t.system = ?")
                    params.append(token.system)
                alternatives.append("(" + " AND ".join(cond) + ")")
            clauses.append(
                # INDEXED BY: without statistics SQLite may pick the covering token_codes
                # index and scan a whole type's tokens for every row.
                "EXISTS (SELECT 1 FROM resource_token t INDEXED BY token_by_resource "
                "WHERE t.rtype = r.rtype AND t.rid = r.rid "
                f"AND ({' OR '.join(alternatives)}))"
            )
        for date in dates or ():
            # FHIR R4 search § 3.1.1.4.1: compare the resource's period with the value's.
            start, end = "r.date_start", "COALESCE(r.date_end, r.date_start)"
            if date.prefix == "eq":
                clauses.append(f"({start} >= ? AND {end} <= ?)")
                params += [date.start, date.end]
            elif date.prefix == "ne":
                clauses.append(f"NOT ({start} >= ? AND {end} <= ?)")
                params += [date.start, date.end]
            elif date.prefix == "gt":
                clauses.append(f"{end} > ?")
                params.append(date.end)
            elif date.prefix == "ge":
                clauses.append(f"{end} > ?")
                params.append(date.start)
            elif date.prefix == "lt":
                clauses.append(f"{start} < ?")
                params.append(date.start)
            else:  # le
                clauses.append(f"{start} < ?")
                params.append(date.end)
        return (" AND ".join(clauses) or "1"), params

    def search(
        self,
        rtype: str | None,
        *,
        patient: str | None = None,
        ids: Sequence[str] | None = None,
        codes: Sequence[TokenQuery] | None = None,
        dates: Sequence[DateQuery] | None = None,
        offset: int = 0,
        count: int = 50,
    ) -> SearchPage:
        where, params = self._where(rtype, patient=patient, ids=ids, codes=codes, dates=dates)
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM resource r WHERE {where}", params).fetchone()[0]
            rows = self._db.execute(
                f"SELECT rtype, rid, version, body FROM resource r WHERE {where} "
                "ORDER BY r.rtype, r.rid LIMIT ? OFFSET ?",
                [*params, count, offset],
            ).fetchall()
        return SearchPage(int(total), [self._open(t, i, int(v), b) for t, i, v, b in rows])

    def iter_resources(
        self,
        rtype: str | None = None,
        *,
        patients: Iterable[str] | None = None,
        codes: Sequence[TokenQuery] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every matching resource, decrypted; for bulk readers such as feature extraction."""
        where, params = self._where(rtype, patients=patients, codes=codes)
        with self._lock:
            rows = self._db.execute(
                f"SELECT rtype, rid, version, body FROM resource r WHERE {where} "
                "ORDER BY r.patient, r.rtype, r.rid",
                params,
            ).fetchall()
        for t, i, v, b in rows:
            yield self._open(t, i, int(v), b)

    def generation(self) -> int:
        """A number that changes with every committed write (by any process): readers that
        cache what they derived from the store compare it to know when to refresh."""
        with self._lock:
            row = self._db.execute("SELECT generation FROM store_state WHERE id = 1").fetchone()
        return int(row[0]) if row else 0

    def keys_of(self, rtype: str, codes: Sequence[TokenQuery] | None = None) -> list[tuple[str, str | None]]:
        """(id, patient) of every resource of a type, optionally only those with one of
        the codes; from the covering indexes, nothing decrypted."""
        with self._lock:
            rows = self._db.execute("SELECT rid, patient FROM resource WHERE rtype = ?", (rtype,)).fetchall()
            if not codes:
                return [(str(i), p) for i, p in rows]
            values = sorted({c.code for c in codes if c.code is not None})
            if not values:
                return []
            tokens = self._db.execute(
                f"SELECT rid, system, code FROM resource_token WHERE rtype = ? AND param = 'code' "
                f"AND code IN ({','.join('?' * len(values))})",
                [rtype, *values],
            ).fetchall()
        exact = {(c.system, c.code) for c in codes if c.system is not None}
        any_system = {c.code for c in codes if c.system is None}
        keep = {rid for rid, system, code in tokens if code in any_system or (system, code) in exact}
        return [(str(i), p) for i, p in rows if i in keep]

    def index_rows(
        self, rtype: str | None = None, *, patients: Sequence[str] | None = None
    ) -> list[IndexedResource]:
        """The index of every resource (no body is decrypted): what consent redaction needs.
        With ``patients``, only the resources of those patients (their Patient included)."""
        if patients is not None:
            out: list[IndexedResource] = []
            plist = list(patients)
            for i in range(0, len(plist), _CHUNK):
                out += self._index_rows(rtype, plist[i : i + _CHUNK])
            return out
        return self._index_rows(rtype, None)

    def _index_rows(self, rtype: str | None, patients: Sequence[str] | None) -> list[IndexedResource]:
        # A Patient's own index row has patient = its id (index.patient_of), so selecting by
        # patient also finds the Patient resources; and without an OR, SQLite uses the index.
        type_clause, type_params = ("r.rtype = ?", [rtype]) if rtype else ("1", [])
        if patients is None:
            selections = [(type_clause, type_params)]
        else:
            marks = ",".join("?" * len(patients))
            selections = [(f"r.patient IN ({marks}) AND {type_clause}", [*patients, *type_params])]
        rows: list[Any] = []
        tokens: list[Any] = []
        with self._lock:
            for where, params in selections:
                rows += self._db.execute(
                    f"SELECT r.rtype, r.rid, r.patient, r.date_start, r.date_end FROM resource r WHERE {where}",
                    params,
                ).fetchall()
                tokens += self._db.execute(
                    "SELECT t.rtype, t.rid, t.param, t.system, t.code FROM resource r "
                    "JOIN resource_token t INDEXED BY token_by_resource "
                    f"ON t.rtype = r.rtype AND t.rid = r.rid WHERE {where}",
                    params,
                ).fetchall()
        by_res: dict[tuple[str, str], tuple[list[tuple[str, str]], list[tuple[str, str]]]] = {}
        for t, i, param, system, code in tokens:
            codes, labels = by_res.setdefault((t, i), ([], []))
            (codes if param == "code" else labels).append((system, code))
        out = []
        for t, i, patient, start, end in rows:
            codes, labels = by_res.get((t, i), ([], []))
            out.append(IndexedResource(t, i, patient, start, end, tuple(codes), tuple(labels)))
        return out

    def read_many(self, keys: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
        """The given resources, decrypted, in the order given (missing ones are skipped)."""
        wanted = list(keys)
        by_type: dict[str, list[str]] = {}
        for rtype, rid in wanted:
            by_type.setdefault(rtype, []).append(rid)
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for rtype, ids in by_type.items():
            for i in range(0, len(ids), _CHUNK):
                chunk = ids[i : i + _CHUNK]
                with self._lock:
                    rows = self._db.execute(
                        f"SELECT rid, version, body FROM resource WHERE rtype = ? AND rid IN ({','.join('?' * len(chunk))})",
                        [rtype, *chunk],
                    ).fetchall()
                for rid, version, body in rows:
                    found[(rtype, rid)] = self._open(rtype, rid, int(version), body)
        return [found[k] for k in wanted if k in found]

    def patients(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT rid FROM resource WHERE rtype='Patient' ORDER BY rid").fetchall()
        return [r[0] for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT rtype, COUNT(*) FROM resource GROUP BY rtype").fetchall()
        return {t: int(n) for t, n in rows}
