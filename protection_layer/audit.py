"""A site's tamper-evident audit log: append-only, hash-chained, signed with Ed25519.

Layout in the site folder::

    audit/audit.log         one JSON entry per line
    audit/head.json         signed checkpoint: the last entry's seq and hash
    audit/audit.lock        lock file serialising appends across processes
    keys/audit-ed25519.pem  the site's Ed25519 signing key (PKCS#8, mode 0600)

Each entry carries ``seq`` (1, 2, …), ``prev`` (the previous entry's hash; 64 zeros for
the first), its ``hash`` (sha256 of the canonical JSON of everything but hash and sig)
and ``sig`` (Ed25519 over the hash). :func:`verify` recomputes all of it: an edited entry
breaks its hash or signature, a deleted, inserted or moved entry breaks the sequence and
the chain, and a truncated end disagrees with the signed head checkpoint.

Appends are crash-safe: under an exclusive lock, the head first announces the batch about
to be written (``pending``: its last seq, signed), then one ``write`` of the whole lines on
an ``O_APPEND`` descriptor, ``fsync``, then the head is replaced atomically. A process
killed mid-append leaves at most one torn last line without its newline; the next append
cuts it off (and records that it did), and :func:`verify` reports it as an interrupted
append, not as tampering, as long as the head does not claim that entry.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

GENESIS = "0" * 64
LOG_NAME = "audit.log"
HEAD_NAME = "head.json"
KEY_NAME = "audit-ed25519.pem"

# Entry kinds (data fields in brackets).
ADMISSION = "admission"  # job, accepted, reasons, policy_version
COHORT = "cohort"  # job, round, counts, patient_set_sha256, redacted, policy_version
RELEASE = "data-release"  # job, round, patients {id: consent id/version}, resources, resources_sha256
CONSENT_CHANGE = "consent-change"  # patient, consent, version, change, status
ROUND = "round"  # job, round, kind, status, num_examples, reason
POLICY = "policy"  # loaded | rejected, version, error
RECOVERY = "recovery"  # torn_bytes: an interrupted append was cut off
FEASIBILITY = (
    "feasibility"  # requester, purpose, organization, cohort, reported, k, policy_version[, consent_requests]
)


class AuditError(Exception):
    """The audit log or its key cannot be used (missing, unreadable, too widely readable)."""


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(entry: Mapping[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k not in ("hash", "sig")}
    return hashlib.sha256(_canonical(body)).hexdigest()


def _head_message(seq: int, digest: str, pending: int | None = None) -> bytes:
    if pending is None:
        return f"paroma-audit-head:{seq}:{digest}".encode()
    return f"paroma-audit-head:{seq}:{digest}:pending:{pending}".encode()


def load_signing_key(path: Path, *, create: bool = False) -> Ed25519PrivateKey:
    """The site's Ed25519 key; created (mode 0600, never overwritten) when asked."""
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # Written whole to a private temporary name, then linked into place: a process
        # killed on the way leaves no empty or partial key, and an existing key is never
        # replaced (link fails if another process made it first).
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    try:
        mode = path.stat().st_mode & 0o777
        data = path.read_bytes()
    except OSError as exc:
        raise AuditError(f"cannot read the audit signing key {path}: {exc.strerror}") from exc
    if mode & 0o077:
        raise AuditError(f"the audit signing key {path} is readable by others (mode {mode:o}); expected 600")
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except ValueError as exc:
        raise AuditError(f"{path} is not a PEM private key: {exc}") from exc
    if not isinstance(loaded, Ed25519PrivateKey):
        raise AuditError(f"{path} is not an Ed25519 key")
    return loaded


@dataclass
class Verification:
    entries: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class AuditLog:
    def __init__(self, folder: Path, key_path: Path) -> None:
        self.folder = Path(folder)
        self.key_path = Path(key_path)
        self.path = self.folder / LOG_NAME
        self.head_path = self.folder / HEAD_NAME
        self._key: Ed25519PrivateKey | None = None

    @classmethod
    def for_site(cls, site_root: Path) -> AuditLog:
        root = Path(site_root)
        return cls(root / "audit", root / "keys" / KEY_NAME)

    @property
    def key(self) -> Ed25519PrivateKey:
        if self._key is None:
            self._key = load_signing_key(self.key_path, create=True)
        return self._key

    @property
    def public_key(self) -> Ed25519PublicKey:
        """From the site's private key (a public key stored beside the log could be
        swapped with the log); never creates one."""
        key = self._key or load_signing_key(self.key_path, create=False)
        return key.public_key()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.folder / "audit.lock", "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _tail(self) -> tuple[int, str, int]:
        """(last seq, last hash, bytes of a torn last line) of the log as it is on disk."""
        if not self.path.exists():
            return 0, GENESIS, 0
        with open(self.path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            if size == 0:
                return 0, GENESIS, 0
            block = 1 << 16
            data = b""
            position = size
            # Read backwards until the last complete line is in `data`.
            while position > 0:
                step = min(block, position)
                position -= step
                handle.seek(position)
                data = handle.read(step) + data
                if data.count(b"\n") >= 2 or (position == 0 and b"\n" in data):
                    break
        torn = 0
        if not data.endswith(b"\n"):
            torn = len(data) - (data.rfind(b"\n") + 1)
            data = data[: len(data) - torn]
        lines = data.rstrip(b"\n").split(b"\n")
        if not lines or not lines[-1]:
            return 0, GENESIS, torn
        last = json.loads(lines[-1])
        return int(last["seq"]), str(last["hash"]), torn

    def append(self, kind: str, data: Mapping[str, Any], *, site: str = "") -> dict[str, Any]:
        """Append one signed entry; durable when this returns."""
        return self.append_many([(kind, data)], site=site)

    def append_many(
        self, records: Sequence[tuple[str, Mapping[str, Any]]], *, site: str = ""
    ) -> dict[str, Any]:
        """Append several signed entries with one write and one fsync; durable when this
        returns. Returns the last entry's seq and hash."""
        key = self.key
        with self._locked():
            seq, prev, torn = self._tail()
            batch: list[tuple[str, Mapping[str, Any]]] = list(records)
            if torn:
                with open(self.path, "r+b") as handle:
                    handle.truncate(os.path.getsize(self.path) - torn)
                    os.fsync(handle.fileno())
                batch.insert(0, (RECOVERY, {"torn_bytes": torn}))
            seq, prev = self._write(key, seq, prev, batch, site)
            return {"seq": seq, "hash": prev}

    def _write(
        self,
        key: Ed25519PrivateKey,
        seq: int,
        prev: str,
        records: Sequence[tuple[str, Mapping[str, Any]]],
        site: str,
    ) -> tuple[int, str]:
        lines = []
        first_seq, first_prev = seq + 1, prev
        for kind, data in records:
            entry: dict[str, Any] = {
                "seq": seq + 1,
                "time": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
                "site": site,
                "kind": kind,
                "data": dict(data),
                "prev": prev,
            }
            entry["hash"] = entry_hash(entry)
            entry["sig"] = base64.b64encode(key.sign(bytes.fromhex(entry["hash"]))).decode()
            lines.append(_canonical(entry) + b"\n")
            seq, prev = int(entry["seq"]), str(entry["hash"])
        if not lines:
            return seq, prev
        # Announce the batch in the head before writing it: a process killed between the
        # write and the final head leaves a head that vouches for seq..pending, so the
        # batch's entries are an interrupted append, not entries added outside the writer.
        self._write_head(key, first_seq - 1, first_prev, pending=seq)
        block = b"".join(lines)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            written = os.write(fd, block)
            if written != len(block):
                raise AuditError(f"short write to {self.path}: {written} of {len(block)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)
        self._write_head(key, seq, prev)
        return seq, prev

    def _write_head(
        self, key: Ed25519PrivateKey, seq: int, digest: str, *, pending: int | None = None
    ) -> None:
        head: dict[str, Any] = {"seq": seq, "hash": digest}
        if pending is not None:
            head["pending"] = pending
        head["sig"] = base64.b64encode(key.sign(_head_message(seq, digest, pending))).decode()
        tmp = self.head_path.with_suffix(".tmp")
        with open(tmp, "w") as handle:
            json.dump(head, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.head_path)

    # -- reading ---------------------------------------------------------------------------

    def entries(self) -> Iterator[dict[str, Any]]:
        """The complete entries, in file order (a torn last line is skipped)."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as handle:
            for raw in handle:
                if not raw.endswith(b"\n"):
                    return
                try:
                    yield json.loads(raw)
                except json.JSONDecodeError:
                    continue

    def verify(self) -> Verification:
        return verify(self.path, self.head_path, self.public_key)

    def for_patient(self, patient: str) -> list[dict[str, Any]]:
        """The entries about one patient, each reduced to what concerns that patient:
        consent changes, and which jobs received their data, when, under which consent."""
        out: list[dict[str, Any]] = []
        for entry in self.entries():
            data = entry.get("data") or {}
            if entry.get("kind") == CONSENT_CHANGE and data.get("patient") == patient:
                out.append(
                    {
                        "seq": entry["seq"],
                        "time": entry["time"],
                        "kind": CONSENT_CHANGE,
                        "consent": data.get("consent"),
                        "version": data.get("version"),
                        "change": data.get("change"),
                        "status": data.get("status"),
                    }
                )
            elif entry.get("kind") == RELEASE and patient in (data.get("patients") or {}):
                out.append(
                    {
                        "seq": entry["seq"],
                        "time": entry["time"],
                        "kind": RELEASE,
                        "job": data.get("job"),
                        "job_name": data.get("job_name"),
                        "purpose": data.get("purpose"),
                        "organization": data.get("organization"),
                        "round": data.get("round"),
                        "consent": data["patients"][patient],
                    }
                )
        return out


def verify(path: Path, head_path: Path, public_key: Ed25519PublicKey) -> Verification:
    """Check every entry's sequence number, chain link, hash and signature, and the log's
    end against the signed head. Problems name the line and what is wrong."""
    result = Verification()
    expected_seq, prev = 1, GENESIS
    hashes: dict[int, str] = {}
    if path.exists():
        with open(path, "rb") as handle:
            raw_lines = handle.read().split(b"\n")
        torn = raw_lines.pop()  # after the last newline: b"" unless an append was interrupted
        for number, raw in enumerate(raw_lines, start=1):
            where = f"line {number}"
            try:
                entry = json.loads(raw)
                seq = int(entry["seq"])
                claimed = str(entry["hash"])
                signature = base64.b64decode(entry["sig"], validate=True)
            except (ValueError, KeyError, TypeError):
                result.problems.append(f"{where}: not a well-formed audit entry")
                continue
            if seq != expected_seq:
                what = "deleted or moved" if seq > expected_seq else "inserted, duplicated or moved"
                result.problems.append(
                    f"{where}: sequence number {seq}, expected {expected_seq} (entries {what})"
                )
            if entry.get("prev") != prev:
                result.problems.append(f"{where} (seq {seq}): does not chain to the entry before it")
            actual = entry_hash(entry)
            if actual != claimed:
                result.problems.append(f"{where} (seq {seq}): content does not match its hash (entry edited)")
            try:
                public_key.verify(signature, bytes.fromhex(claimed))
            except (InvalidSignature, ValueError):
                result.problems.append(
                    f"{where} (seq {seq}): signature is not the site's (entry forged or edited)"
                )
            result.entries += 1
            hashes[seq] = claimed
            expected_seq, prev = seq + 1, claimed
        if torn:
            result.warnings.append(
                f"the last {len(torn)} bytes are an interrupted append (no newline); the next append removes them"
            )
    last_seq = expected_seq - 1
    if head_path.exists():
        try:
            head = json.loads(head_path.read_text())
            pending = None if head.get("pending") is None else int(head["pending"])
            public_key.verify(
                base64.b64decode(head["sig"], validate=True),
                _head_message(int(head["seq"]), str(head["hash"]), pending),
            )
            head_seq, head_hash = int(head["seq"]), str(head["hash"])
        except (ValueError, KeyError, TypeError, InvalidSignature):
            result.problems.append(
                f"{head_path.name}: the head checkpoint is malformed or not signed by the site"
            )
        else:
            if pending is not None and head_seq <= last_seq <= pending:
                # the writer announced entries head_seq+1..pending and was stopped mid-append
                if hashes.get(head_seq, GENESIS) != head_hash:
                    result.problems.append(
                        f"entry seq {head_seq} is not the one the signed head records (entry replaced)"
                    )
                elif last_seq > head_seq:
                    result.warnings.append(
                        f"entries {head_seq + 1}-{last_seq} were written by an append that was interrupted "
                        "before its head checkpoint; the next append completes it"
                    )
            elif pending is not None and last_seq > pending:
                result.problems.append(
                    f"the log has {last_seq - pending} entries after the signed head's pending batch "
                    f"(seq {pending}): appended outside the log's writer"
                )
            elif head_seq > last_seq:
                result.problems.append(
                    f"the log ends at seq {last_seq} but the signed head records seq {head_seq} (entries deleted at the end)"
                )
            elif head_seq < last_seq - 1:
                result.problems.append(
                    f"the log has {last_seq - head_seq} entries after the signed head (seq {head_seq}): appended outside the log's writer"
                )
            elif hashes.get(head_seq, GENESIS) != head_hash:
                result.problems.append(
                    f"entry seq {head_seq} is not the one the signed head records (entry replaced)"
                )
            elif head_seq == last_seq - 1:
                result.warnings.append("the head checkpoint lags the last entry by one (interrupted append)")
    elif last_seq > 0:
        result.problems.append(f"{head_path.name} is missing: the end of the log cannot be checked")
    return result
