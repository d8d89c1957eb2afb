"""The clinical nodes the aggregator's services talk to over HTTP, from a ``sites.toml``::

    [[site]]
    id = "cleveland"
    url = "https://cleveland.example.org:8443"   # the node's service
    token_file = "tokens/cleveland"             # a bearer token of role aggregator (or token_env)
    ca_file = "federation-ca.pem"                # optional: the CA its TLS certificate is checked against

Relative paths are relative to the file. Every problem is listed with its site and field.
"""

from __future__ import annotations

import os
import re
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class SitesError(ValueError):
    """An unusable sites file; ``problems`` lists every (field, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))


@dataclass(frozen=True)
class SiteEndpoint:
    site_id: str
    url: str
    token: str
    ca_file: Path | None = None

    def client(self, timeout: float) -> httpx.Client:
        verify: Any = str(self.ca_file) if self.ca_file else True
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=timeout,
            verify=verify,
        )


def load_sites(path: Path) -> list[SiteEndpoint]:
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise SitesError([(str(path), exc.strerror or str(exc))]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise SitesError([(str(path), f"not valid TOML: {exc}")]) from exc
    base = Path(path).parent
    problems: list[tuple[str, str]] = []
    sites: list[SiteEndpoint] = []
    entries = data.get("site")
    if not isinstance(entries, list) or not entries:
        raise SitesError([("site", "expected one or more [[site]] tables")])
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"site[{i}]"
        if not isinstance(entry, dict):
            problems.append((where, "expected a table"))
            continue
        site_id = entry.get("id")
        if not isinstance(site_id, str) or not _ID.match(site_id):
            problems.append((f"{where}.id", f"{site_id!r} is not a site id (lowercase letters, digits, '-')"))
            site_id = f"site-{i}"
        elif site_id in seen:
            problems.append((f"{where}.id", f"{site_id!r} is listed twice"))
        seen.add(site_id)
        url = entry.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            problems.append((f"{where}.url", f"{url!r} is not an http(s) URL"))
            url = ""
        token = ""
        if isinstance(entry.get("token_file"), str):
            token_path = base / entry["token_file"]
            try:
                token = token_path.read_text().strip()
            except OSError as exc:
                problems.append((f"{where}.token_file", f"{token_path}: {exc.strerror}"))
        elif isinstance(entry.get("token_env"), str):
            token = os.environ.get(entry["token_env"], "")
            if not token:
                problems.append(
                    (f"{where}.token_env", f"environment variable {entry['token_env']} is not set")
                )
        else:
            problems.append((where, "token_file or token_env is required (a token of role aggregator)"))
        ca_file = None
        if entry.get("ca_file") is not None:
            ca_file = base / str(entry["ca_file"])
            if not ca_file.is_file():
                problems.append((f"{where}.ca_file", f"{ca_file} does not exist"))
        sites.append(SiteEndpoint(site_id, url.rstrip("/"), token, ca_file))
    if problems:
        raise SitesError(problems)
    return sites


@dataclass
class SiteReply:
    site_id: str
    body: dict[str, Any] | None = None
    error: str = ""


def _problem_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict):
        return f"HTTP {response.status_code}: {body.get('title', '')}{': ' + body['detail'] if body.get('detail') else ''}"
    return f"HTTP {response.status_code}"


def ask_sites(
    sites: list[SiteEndpoint], method: str, path: str, *, json: Any = None, timeout: float = 30.0
) -> list[SiteReply]:
    """The same request to every site at once; a site that fails or does not answer in
    ``timeout`` is a reply with its ``error``, never an exception."""

    def one(site: SiteEndpoint) -> SiteReply:
        try:
            with site.client(timeout) as client:
                response = client.request(method, path, json=json)
        except httpx.TimeoutException:
            return SiteReply(site.site_id, error=f"no answer within {timeout:g} s")
        except httpx.HTTPError as exc:
            return SiteReply(site.site_id, error=f"unreachable: {type(exc).__name__}: {exc}")
        if response.status_code != 200:
            return SiteReply(site.site_id, error=_problem_text(response))
        try:
            body = response.json()
        except ValueError:
            return SiteReply(site.site_id, error="the answer is not JSON")
        if not isinstance(body, dict):
            return SiteReply(site.site_id, error="the answer is not a JSON object")
        return SiteReply(site.site_id, body)

    if not sites:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(sites))) as pool:
        return list(pool.map(one, sites))
