"""Bearer tokens of a site's services, with roles.

Tokens are random (256 bits) and shown once at creation; the site keeps only their sha256
with the role and subject (``keys/api-tokens.json``, 0600). Roles: ``site-admin`` (the
hospital's staff: FHIR API, policies, audit), ``patient`` (subject = the patient id: the
patient dashboard), ``aggregator`` (the federation's services: feasibility, catalogue).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

ROLES = ("site-admin", "patient", "aggregator")


class TokenError(Exception):
    pass


@dataclass(frozen=True)
class Principal:
    role: str
    subject: str  # patient id for patients; a name otherwise


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def _load(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise TokenError(f"{self.path}: unreadable token file: {exc}") from exc
        return list(data.get("tokens", []))

    def _save(self, tokens: list[dict[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"tokens": tokens}, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    def issue(self, role: str, subject: str) -> str:
        """Create a token for (role, subject) and return it (it is not stored in clear)."""
        if role not in ROLES:
            raise TokenError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        if not subject:
            raise TokenError("a token needs a subject (patient id or a name)")
        token = secrets.token_urlsafe(32)
        with self._lock:
            tokens = self._load()
            tokens.append({"sha256": _digest(token), "role": role, "subject": subject})
            self._save(tokens)
        return token

    def revoke_subject(self, role: str, subject: str) -> int:
        with self._lock:
            tokens = self._load()
            kept = [t for t in tokens if not (t["role"] == role and t["subject"] == subject)]
            self._save(kept)
        return len(tokens) - len(kept)

    def authenticate(self, token: str | None) -> Principal | None:
        if not token:
            return None
        digest = _digest(token)
        for entry in self._load():
            if hmac.compare_digest(entry["sha256"], digest):
                return Principal(entry["role"], entry["subject"])
        return None
