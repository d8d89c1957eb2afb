"""A clinical node's site: its folder, identity, keys and stores.

Layout of a site folder::

    site.toml          identity (id, name, organisation) and the site's [policy]
    keys/store.key     AES-256 key of the FHIR store (0600), made at set-up
    fhir.sqlite        the FHIR store (index + encrypted bodies)
    plans/             approved training plans (copies, by sha256) and approved.json

Other parts of the node (protection layer, sandbox, audit log) keep their files in the
same folder; each documents its own.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fhir.crypto import create_key_file, load_key_file
from .fhir.store import FhirStore
from .plans.approvals import PlanApprovals
from .policy import SitePolicy

SITE_FILE = "site.toml"
_SITE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise SiteError(f"site.toml: cannot write a value of type {type(value).__name__}")


def _flat_table(name: str, table: dict[str, Any]) -> str:
    return f"[{name}]\n" + "".join(f"{key} = {_toml_value(value)}\n" for key, value in table.items())


class SiteError(Exception):
    """A site folder that is missing, not initialised, or malformed."""


@dataclass(frozen=True)
class SiteIdentity:
    site_id: str
    name: str
    organization: str

    def to_toml(self) -> str:
        def q(v: str) -> str:
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'

        return (
            f"[site]\nid = {q(self.site_id)}\nname = {q(self.name)}\norganization = {q(self.organization)}\n"
        )


class Site:
    """An initialised site folder. Open with :meth:`open`, create with :meth:`create`."""

    def __init__(self, root: Path, identity: SiteIdentity, settings: dict[str, Any]) -> None:
        self.root = root
        self.identity = identity
        self.settings = settings
        self._fhir: FhirStore | None = None

    @property
    def site_id(self) -> str:
        return self.identity.site_id

    @property
    def key_path(self) -> Path:
        return self.root / "keys" / "store.key"

    @property
    def policy(self) -> SitePolicy:
        return SitePolicy.from_mapping(self.settings.get("policy"))

    @property
    def plans(self) -> PlanApprovals:
        return PlanApprovals(self.root)

    def write_policy(self, policy: SitePolicy) -> None:
        """Replace the [policy] table of site.toml (atomically), keeping the other tables
        (such as the protection layer's [protection])."""
        text = self.identity.to_toml() + "\n" + policy.to_toml()
        for name, table in self.settings.items():
            if name not in ("site", "policy") and isinstance(table, dict):
                text += "\n" + _flat_table(name, table)
        tmp = self.root / (SITE_FILE + ".tmp")
        tmp.write_text(text)
        tmp.replace(self.root / SITE_FILE)
        self.settings = tomllib.loads(text)

    @classmethod
    def create(
        cls,
        root: Path,
        site_id: str,
        name: str,
        organization: str | None = None,
        policy: SitePolicy | None = None,
    ) -> Site:
        """Initialise a new site folder: identity file, policy and a fresh store key (0600)."""
        if not _SITE_ID.match(site_id):
            raise SiteError(f"site id {site_id!r} is not valid: use 1-63 lowercase letters, digits and '-'")
        root = Path(root)
        if (root / SITE_FILE).exists():
            raise SiteError(f"{root} is already a site folder ({SITE_FILE} exists)")
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o700)  # the store, its key and the audit log are the site's alone
        identity = SiteIdentity(site_id, name, organization or f"Organization/{site_id}")
        create_key_file(root / "keys" / "store.key")
        (root / SITE_FILE).write_text(identity.to_toml() + "\n" + (policy or SitePolicy()).to_toml())
        return cls.open(root)

    @classmethod
    def open(cls, root: Path) -> Site:
        root = Path(root)
        path = root / SITE_FILE
        if not path.is_file():
            raise SiteError(f"{root} is not a site folder: {SITE_FILE} is missing (run `paroma node init`)")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise SiteError(f"{path}: not valid TOML: {exc}") from exc
        site = data.get("site")
        if not isinstance(site, dict) or not isinstance(site.get("id"), str):
            raise SiteError(f"{path}: the [site] table with an 'id' is missing")
        identity = SiteIdentity(
            site["id"], str(site.get("name", site["id"])), str(site.get("organization", ""))
        )
        return cls(root, identity, data)

    @property
    def fhir(self) -> FhirStore:
        if self._fhir is None:
            self._fhir = FhirStore(self.root / "fhir.sqlite", load_key_file(self.key_path))
        return self._fhir

    def close(self) -> None:
        if self._fhir is not None:
            self._fhir.close()
            self._fhir = None
