"""The controller's side of a relay's control API (httpx, bearer secret)."""

from __future__ import annotations

from typing import Any

import httpx

from interconnect.relay.routes import RouteEntry


class RelayControlError(Exception):
    """A relay refused a request or could not be reached; the message names the relay."""


class RelayControlClient:
    """One relay's control API. Clients of one controller share an ``httpx.Client`` (``http``):
    building one costs a TLS context, far more than a request on a local port."""

    def __init__(
        self, name: str, url: str, token: str, *, timeout: float = 3.0, http: httpx.Client | None = None
    ) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self._own = http is None
        self._client = http if http is not None else httpx.Client(timeout=timeout)
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = timeout

    def close(self) -> None:
        if self._own:
            self._client.close()

    def healthy(self, timeout: float = 1.0) -> bool:
        try:
            response = self._client.get(f"{self.url}/healthz", timeout=timeout)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.json().get("relay") == self.name

    def routes(self) -> dict[str, Any]:
        return self._call("GET", "/routes")

    def put_route(self, entry: RouteEntry) -> dict[str, Any]:
        return self._call("PUT", f"/routes/{entry.path_id}", entry.as_dict())

    def delete_route(self, path_id: str, *, missing_ok: bool = True) -> dict[str, Any]:
        try:
            return self._call("DELETE", f"/routes/{path_id}")
        except RelayControlError as exc:
            if missing_ok and "404" in str(exc):
                return {"path_id": path_id, "closed": 0}
            raise

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            response = self._client.request(
                method, f"{self.url}{path}", json=body, headers=self._headers, timeout=self._timeout
            )
        except httpx.HTTPError as exc:
            raise RelayControlError(f"relay {self.name} at {self.url}: {exc}") from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail") or response.json().get("title")
            except ValueError:
                detail = response.text[:200]
            raise RelayControlError(f"relay {self.name}: {method} {path}: {response.status_code} {detail}")
        data = response.json()
        assert isinstance(data, dict)
        return data
