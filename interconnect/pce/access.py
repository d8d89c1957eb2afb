"""Who may change the Secure Traffic Engine's network: the federation's operators.

Reading the network, its paths and the security index, and computing a path without
installing it, stay open (the GUI's views; the service listens on loopback by default).
Every other request that changes state (``PUT``, ``POST``, ``PATCH``, ``DELETE`` under
``/api``) needs ``Authorization: Bearer <token>`` with an operator token when the service is
started with operator tokens; otherwise the answer is an RFC 9457 problem: 401 without a
valid token (RFC 6750 section 3's ``WWW-Authenticate: Bearer``), 403 for any other.
Only the tokens' sha256 is kept, compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from paroma.problems import problem_response

CHANGING_METHODS = frozenset({"PUT", "POST", "PATCH", "DELETE"})
# Computing a path reserves nothing: a question, not a change.
READ_ONLY_POSTS = frozenset({"/api/paths/compute"})


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class OperatorTokens:
    """The sha256 digests of the operators' bearer tokens."""

    def __init__(self, digests: Iterable[str]) -> None:
        self._digests = [d.lower() for d in digests]

    @classmethod
    def of_tokens(cls, tokens: Iterable[str]) -> OperatorTokens:
        return cls(token_digest(t) for t in tokens)

    def admits(self, token: str | None) -> bool:
        if not token:
            return False
        digest = token_digest(token)
        return any(hmac.compare_digest(digest, d) for d in self._digests)


def changes_state(method: str, path: str) -> bool:
    return method.upper() in CHANGING_METHODS and path.startswith("/api/") and path not in READ_ONLY_POSTS


def _bearer(header: str | None) -> str | None:
    if header and header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return None


class OperatorGate(BaseHTTPMiddleware):
    def __init__(self, app: ASGIApp, tokens: OperatorTokens) -> None:
        super().__init__(app)
        self.tokens = tokens

    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if changes_state(request.method, request.url.path):
            token = _bearer(request.headers.get("authorization"))
            if token is None:
                response = problem_response(
                    401, "Unauthorized", "changing the network needs an operator's bearer token"
                )
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
            if not self.tokens.admits(token):
                return problem_response(403, "Forbidden", "this token is not an operator's")
        return await call_next(request)
