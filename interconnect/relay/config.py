"""A relay process's configuration file (TOML)::

    [relay]
    name = "router-1"            # the topology node this relay stands for
    host = "127.0.0.1"           # transit and ingress listeners
    port = 7101                  # transit listener (previous relays connect here)
    control_host = "127.0.0.1"
    control_port = 7201
    token_file = "relay.token"   # the control API's bearer secret (relative to this file; 0600)
    tls_cert_file = "cert.pem"   # optional: the control API over HTTPS (a federation relay
    tls_key_file = "key.pem"     # certificate, `paroma pki issue --kind relay`)

Every problem names the file and field.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interconnect.relay.control import MIN_TOKEN_LENGTH
from interconnect.relay.routes import MAX_PORT


class RelayConfigError(ValueError):
    """The relay's configuration file is wrong; the message names the file and field."""


@dataclass(frozen=True)
class RelayConfig:
    name: str
    host: str
    port: int
    control_host: str
    control_port: int
    token: str
    # The control API over HTTPS with a federation certificate (kind relay); None: plain HTTP.
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def control_scheme(self) -> str:
        return "https" if self.tls_cert is not None else "http"


_KEYS = {
    "name",
    "host",
    "port",
    "control_host",
    "control_port",
    "token_file",
    "tls_cert_file",
    "tls_key_file",
}


def load_relay_config(path: Path | str) -> RelayConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise RelayConfigError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RelayConfigError(f"{path}: not TOML: {exc}") from None
    table = data.get("relay")
    if not isinstance(table, dict):
        raise RelayConfigError(f"{path}: a [relay] table is required")
    unknown = set(table) - _KEYS
    if unknown:
        raise RelayConfigError(f"{path}: [relay] unknown field(s) {', '.join(sorted(unknown))}")
    problems: list[str] = []
    name = table.get("name")
    if not isinstance(name, str) or not name:
        problems.append(f"relay.name: expected the topology node's id, got {name!r}")
    host = _host(table.get("host", "127.0.0.1"), "relay.host", problems)
    control_host = _host(table.get("control_host", "127.0.0.1"), "relay.control_host", problems)
    port = _port(table.get("port"), "relay.port", problems)
    control_port = _port(table.get("control_port"), "relay.control_port", problems)
    token = ""
    token_file = table.get("token_file")
    if not isinstance(token_file, str) or not token_file:
        problems.append("relay.token_file: the path of the control secret is required")
    else:
        token = read_secret(path.parent / token_file, problems)
    tls: list[Path | None] = []
    for key in ("tls_cert_file", "tls_key_file"):
        value = table.get(key)
        if value is None:
            tls.append(None)
        elif not isinstance(value, str) or not (path.parent / value).is_file():
            problems.append(f"relay.{key}: {value!r} is not a readable file")
            tls.append(None)
        else:
            tls.append(path.parent / value)
    if (tls[0] is None) != (tls[1] is None):
        problems.append("relay.tls_cert_file and relay.tls_key_file go together")
    if problems:
        raise RelayConfigError(f"{path}: " + "; ".join(problems))
    assert isinstance(name, str)
    return RelayConfig(name, host, port, control_host, control_port, token, tls[0], tls[1])


def _host(value: Any, where: str, problems: list[str]) -> str:
    if not isinstance(value, str) or not value:
        problems.append(f"{where}: expected an address, got {value!r}")
        return ""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if value != "localhost":
            problems.append(f"{where}: expected an IP address (or localhost), got {value!r}")
    return value


def _port(value: Any, where: str, problems: list[str]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PORT:
        problems.append(f"{where}: expected a TCP port from 0 to {MAX_PORT}, got {value!r}")
        return 0
    return value


def read_secret(path: Path, problems: list[str], where: str = "relay.token_file") -> str:
    try:
        mode = path.stat().st_mode
        token = path.read_text().strip()
    except OSError as exc:
        problems.append(f"{where}: {path}: {exc.strerror}")
        return ""
    if stat.S_IMODE(mode) & 0o077:
        problems.append(
            f"relay.token_file: {path} is readable by others (mode {stat.S_IMODE(mode):o}; expected 0600)"
        )
    if len(token) < MIN_TOKEN_LENGTH:
        problems.append(
            f"relay.token_file: {path}: the secret must be at least {MIN_TOKEN_LENGTH} characters"
        )
    return token


def write_token(path: Path | str) -> str:
    """Create a fresh control secret in ``path`` (0600) and return it."""
    import secrets

    path = Path(path)
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, path)
    return token
