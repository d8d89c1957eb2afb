"""Bearer tokens of the job service, with roles.

As for a site's services (clinical_node/auth.py), tokens are random, shown once, and kept
only as their sha256 with role and subject (``keys/job-tokens.json``, 0600). Roles:
``data-scientist`` (submits jobs and sees and acts on only their own), ``site-admin`` and
``operator`` (see every job; the operator may also cancel any job).
"""

from __future__ import annotations

import secrets

from clinical_node.auth import Principal, TokenError, TokenStore, _digest

JOB_ROLES = ("data-scientist", "site-admin", "operator")
SUBMITTERS = ("data-scientist", "operator")
CANCELLERS = ("data-scientist", "operator")

__all__ = ["CANCELLERS", "JOB_ROLES", "SUBMITTERS", "JobTokenStore", "Principal", "TokenError"]


class JobTokenStore(TokenStore):
    def issue(self, role: str, subject: str) -> str:
        if role not in JOB_ROLES:
            raise TokenError(f"unknown role {role!r}; expected one of {', '.join(JOB_ROLES)}")
        if not subject or not subject.strip():
            raise TokenError("a token needs a subject (the person's or service's name)")
        token = secrets.token_urlsafe(32)
        with self._lock:
            tokens = self._load()
            tokens.append({"sha256": _digest(token), "role": role, "subject": subject})
            self._save(tokens)
        return token


def sees_every_job(principal: Principal) -> bool:
    return principal.role in ("site-admin", "operator")
