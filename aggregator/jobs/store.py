"""The job service's store (SQLite): jobs and their states, per-round progress and metrics,
participating sites, admissions with reasons, logs and owners.

Every change is one transaction, so a service killed at any instant leaves each job in a
state it held. A job's rounds are replaced as a whole from its run's checkpoint, which is
what makes each completed round appear exactly once after a resume.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aggregator.federation import Admission
from aggregator.run_output import json_safe

STATES = ("queued", "admission", "running", "completed", "failed", "cancelled")
ACTIVE = ("admission", "running")
FINAL = ("completed", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    spec_sha256 TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    submitted TEXT NOT NULL,
    started TEXT,
    finished TEXT,
    current_round INTEGER NOT NULL DEFAULT 0,
    total_rounds INTEGER NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    run_id TEXT NOT NULL DEFAULT '',
    model_id TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, submitted);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, submitted);
CREATE TABLE IF NOT EXISTS rounds (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    round INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (job_id, round)
);
CREATE TABLE IF NOT EXISTS admissions (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    site TEXT NOT NULL,
    accepted INTEGER NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (job_id, site)
);
CREATE TABLE IF NOT EXISTS logs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    at TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_by_job ON logs (job_id, seq);
"""


class JobStoreError(Exception):
    pass


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Job:
    id: str
    owner: str
    name: str
    spec: str  # canonical JSON of the job spec
    spec_sha256: str
    state: str
    reason: str
    submitted: str
    started: str | None
    finished: str | None
    current_round: int
    total_rounds: int
    cancel_requested: bool
    run_id: str
    model_id: str
    attempts: int
    rounds: list[dict[str, Any]] = field(default_factory=list)
    admissions: list[Admission] = field(default_factory=list)

    @property
    def participating_sites(self) -> list[str]:
        return [a.site_id for a in self.admissions if a.accepted]

    def to_dict(self) -> dict[str, Any]:
        return json_safe(
            {
                "id": self.id,
                "owner": self.owner,
                "name": self.name,
                "spec_sha256": self.spec_sha256,
                "state": self.state,
                "reason": self.reason,
                "submitted": self.submitted,
                "started": self.started,
                "finished": self.finished,
                "current_round": self.current_round,
                "completed_rounds": len(self.rounds),
                "total_rounds": self.total_rounds,
                "cancel_requested": self.cancel_requested,
                "run_id": self.run_id,
                "model_id": self.model_id,
                "participating_sites": self.participating_sites,
                "admissions": [
                    {"site_id": a.site_id, "accepted": a.accepted, "reason": a.reason}
                    for a in self.admissions
                ],
                "rounds": self.rounds,
            }
        )


class JobStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- writes ----------------------------------------------------------------------------

    def submit(self, owner: str, name: str, spec_json: str, spec_sha256: str, rounds: int) -> str:
        job_id = f"job-{uuid.uuid4().hex[:12]}"
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs (id, owner, name, spec, spec_sha256, state, submitted, total_rounds)"
                " VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
                (job_id, owner, name, spec_json, spec_sha256, now_iso(), rounds),
            )
            self._log(db, job_id, f"submitted by {owner} (job spec sha256 {spec_sha256})")
        return job_id

    def _log(self, db: sqlite3.Connection, job_id: str, message: str) -> None:
        db.execute("INSERT INTO logs (job_id, at, message) VALUES (?, ?, ?)", (job_id, now_iso(), message))

    def log(self, job_id: str, message: str) -> None:
        with self._tx() as db:
            self._log(db, job_id, message)

    def claim_next(self) -> Job | None:
        """The oldest queued job, moved to admission (None when the queue is empty)."""
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE state = 'queued' AND cancel_requested = 0"
                " ORDER BY submitted, rowid LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = 'admission', started = ?, attempts = attempts + 1 WHERE id = ?",
                (now_iso(), row["id"]),
            )
            self._log(db, row["id"], "started: asking every site to admit the job")
        return self.get(row["id"])

    def set_state(self, job_id: str, state: str, reason: str = "", log: str | None = None) -> None:
        if state not in STATES:
            raise JobStoreError(f"unknown job state {state!r}")
        with self._tx() as db:
            finished = now_iso() if state in FINAL else None
            db.execute(
                "UPDATE jobs SET state = ?, reason = ?, finished = COALESCE(?, finished) WHERE id = ?",
                (state, reason, finished, job_id),
            )
            self._log(db, job_id, log or (f"{state}: {reason}" if reason else state))

    def set_run_id(self, job_id: str, run_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET run_id = ? WHERE id = ?", (run_id, job_id))

    def set_model(self, job_id: str, model_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET model_id = ? WHERE id = ?", (model_id, job_id))
            self._log(db, job_id, f"model registered as {model_id}")

    def record_admissions(self, job_id: str, admissions: list[Admission]) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM admissions WHERE job_id = ?", (job_id,))
            db.executemany(
                "INSERT INTO admissions (job_id, site, accepted, reason) VALUES (?, ?, ?, ?)",
                [(job_id, a.site_id, int(a.accepted), a.reason) for a in admissions],
            )
            for a in admissions:
                verdict = "admits the job" if a.accepted else "refuses the job"
                said = "" if a.reason in ("", "admitted") else f": {a.reason}"
                self._log(db, job_id, f"site {a.site_id} {verdict}{said}")

    def record_progress(
        self, job_id: str, current_round: int, rounds: list[dict[str, Any]], log: str | None = None
    ) -> None:
        """The job's completed rounds, replaced as a whole from its checkpoint."""
        with self._tx() as db:
            known = {r["round"] for r in db.execute("SELECT round FROM rounds WHERE job_id = ?", (job_id,))}
            db.execute("DELETE FROM rounds WHERE job_id = ?", (job_id,))
            db.executemany(
                "INSERT INTO rounds (job_id, round, body) VALUES (?, ?, ?)",
                [(job_id, int(r["round"]), json.dumps(json_safe(r), sort_keys=True)) for r in rounds],
            )
            state = "running" if current_round > 0 else None
            db.execute(
                "UPDATE jobs SET current_round = ?, state = CASE WHEN ? IS NOT NULL AND state IN"
                " ('admission', 'running') THEN ? ELSE state END WHERE id = ?",
                (current_round, state, state, job_id),
            )
            for r in rounds:
                if r["round"] not in known:
                    self._log(db, job_id, _round_line(r))
            if log:
                self._log(db, job_id, log)

    def request_cancel(self, job_id: str, by: str) -> Job:
        with self._tx() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobStoreError(f"no job {job_id}")
            if row["state"] in FINAL:
                raise JobStoreError(f"job {job_id} is already {row['state']}")
            if row["state"] == "queued":
                db.execute(
                    "UPDATE jobs SET state = 'cancelled', cancel_requested = 1, reason = ?, finished = ?"
                    " WHERE id = ?",
                    (f"cancelled by {by} while queued", now_iso(), job_id),
                )
                self._log(db, job_id, f"cancelled by {by} while queued")
            else:
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
                self._log(db, job_id, f"cancel requested by {by}; the job stops before its next round")
        return self.get(job_id)

    # -- reads -----------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobStoreError(f"no job {job_id}")
            rounds = [
                json.loads(r["body"])
                for r in self._db.execute(
                    "SELECT body FROM rounds WHERE job_id = ? ORDER BY round", (job_id,)
                )
            ]
            admissions = [
                Admission(r["site"], bool(r["accepted"]), r["reason"])
                for r in self._db.execute(
                    "SELECT site, accepted, reason FROM admissions WHERE job_id = ? ORDER BY site", (job_id,)
                )
            ]
        return _job(row, rounds, admissions)

    def list(self, owner: str | None = None) -> builtins.list[Job]:
        with self._lock:
            if owner is None:
                ids = [
                    r["id"]
                    for r in self._db.execute("SELECT id FROM jobs ORDER BY submitted DESC, rowid DESC")
                ]
            else:
                ids = [
                    r["id"]
                    for r in self._db.execute(
                        "SELECT id FROM jobs WHERE owner = ? ORDER BY submitted DESC, rowid DESC", (owner,)
                    )
                ]
        return [self.get(i) for i in ids]

    def in_state(self, *states: str) -> builtins.list[Job]:
        marks = ",".join("?" for _ in states)
        with self._lock:
            ids = [
                r["id"]
                for r in self._db.execute(
                    f"SELECT id FROM jobs WHERE state IN ({marks}) ORDER BY submitted, rowid",  # noqa: S608
                    states,
                )
            ]
        return [self.get(i) for i in ids]

    def cancel_requested(self, job_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row["cancel_requested"])

    def logs(self, job_id: str, after: int = 0) -> builtins.list[tuple[int, str, str]]:
        with self._lock:
            return [
                (int(r["seq"]), str(r["at"]), str(r["message"]))
                for r in self._db.execute(
                    "SELECT seq, at, message FROM logs WHERE job_id = ? AND seq > ? ORDER BY seq",
                    (job_id, after),
                )
            ]


def _round_line(r: dict[str, Any]) -> str:
    sites = r.get("sites", {})
    parts = []
    for name, s in sorted(sites.items()):
        acc = s.get("evaluate", {}).get("accuracy")
        parts.append(
            f"{name} " + (f"accuracy {acc:.3f}" if isinstance(acc, float) else s.get("error") or "-")
        )
    mean = r.get("mean_accuracy")
    head = f"round {r['round']} completed" + (
        f": mean accuracy {mean:.3f}" if isinstance(mean, float) else ""
    )
    return head + (f" ({'; '.join(parts)})" if parts else "")


def _job(row: sqlite3.Row, rounds: list[dict[str, Any]], admissions: list[Admission]) -> Job:
    return Job(
        id=row["id"],
        owner=row["owner"],
        name=row["name"],
        spec=row["spec"],
        spec_sha256=row["spec_sha256"],
        state=row["state"],
        reason=row["reason"],
        submitted=row["submitted"],
        started=row["started"],
        finished=row["finished"],
        current_round=int(row["current_round"]),
        total_rounds=int(row["total_rounds"]),
        cancel_requested=bool(row["cancel_requested"]),
        run_id=row["run_id"],
        model_id=row["model_id"],
        attempts=int(row["attempts"]),
        rounds=rounds,
        admissions=admissions,
    )
