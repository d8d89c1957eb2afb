"""The federation's certificate authority: one CA per federation, the certificates it issues to
the aggregator, the sites, the relays and the services, and its certificate revocation list.

On disk (the folder ``paroma pki init`` creates)::

    ca.pem  ca.key (0600)  crl.pem  index.json
    issued/<kind>-<name>/cert.pem  key.pem (0600)

Keys are ECDSA P-256. Leaf certificates follow the CA/Browser Forum's profile for TLS (RFC 5280
§4.2): not a CA, digitalSignature, extendedKeyUsage serverAuth + clientAuth (every service is
both: relays and the aggregator answer, sites and services call), and the hosts as
subjectAltName, which is what TLS clients check (RFC 6125 §6.4.4; the CN is not). Every write
is a temporary file renamed into place under an exclusive lock, so a crash never leaves a
half-written key, certificate, index or CRL behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from interconnect.pki.errors import (
    CertificateExistsError,
    PkiError,
    PkiNotFoundError,
    UnknownCertificateError,
)

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
CRL_FILE = "crl.pem"
INDEX_FILE = "index.json"
ISSUED = "issued"
DEFAULT_CA_DAYS = 3650
DEFAULT_CERT_DAYS = 365
# A CRL past its nextUpdate makes OpenSSL refuse every peer (fail closed), so it is re-signed on
# every issue and revocation and ``refresh_crl`` renews it well before this.
CRL_DAYS = 30
MAX_DAYS = 36_500
DEFAULT_HOSTS = ("localhost", "127.0.0.1")
# Names are file names and DNS labels: lowercase letters, digits, '-' and '.'.
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9.-]{0,61}[a-z0-9])?$")
_DNS = re.compile(
    r"^(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
)


class CertKind(StrEnum):
    AGGREGATOR = "aggregator"
    SITE = "site"
    RELAY = "relay"
    SERVICE = "service"


@dataclass(frozen=True)
class IssuedCert:
    """One issued certificate and the files a TLS endpoint needs."""

    kind: CertKind
    name: str
    serial: int
    not_after: datetime
    cert_path: Path
    key_path: Path
    ca_path: Path
    crl_path: Path
    hosts: tuple[str, ...] = ()
    revoked_at: datetime | None = None

    @property
    def serial_hex(self) -> str:
        return format(self.serial, "x")

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "name": self.name,
            "serial": self.serial_hex,
            "not_after": self.not_after.isoformat(),
            "hosts": list(self.hosts),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "cert_path": str(self.cert_path),
            "key_path": str(self.key_path),
        }


@dataclass(frozen=True)
class Verification:
    """The outcome of checking a certificate against the federation: ``ok`` or the reasons why not."""

    subject: str
    serial: int
    not_after: datetime
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_name(name: object, what: str = "name") -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise PkiError(
            f"{what} {name!r}: expected 1 to 63 lowercase letters, digits, '-' or '.', "
            "starting and ending with a letter or digit"
        )
    return name


def check_kind(kind: object) -> CertKind:
    try:
        return CertKind(str(kind))
    except ValueError:
        allowed = ", ".join(k.value for k in CertKind)
        raise PkiError(f"kind {kind!r}: expected one of {allowed}") from None


def check_days(days: object, what: str = "days") -> int:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise PkiError(f"{what} {days!r}: expected a whole number of days from 1 to {MAX_DAYS}")
    return days


def parse_hosts(hosts: Iterable[str]) -> tuple[list[x509.GeneralName], tuple[str, ...]]:
    """subjectAltName entries for the hosts (IP addresses as iPAddress, names as dNSName)."""
    names: list[x509.GeneralName] = []
    seen: list[str] = []
    for host in hosts:
        if not isinstance(host, str) or not host:
            raise PkiError(f"host {host!r}: expected a DNS name or an IP address")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            if not _DNS.match(host):
                raise PkiError(
                    f"host {host!r}: not a DNS name (letters, digits, '-', dots) or an IP address"
                ) from None
            general: x509.GeneralName = x509.DNSName(host.lower())
            canonical = host.lower()
        else:
            general = x509.IPAddress(address)
            canonical = str(address)
        if canonical not in seen:
            seen.append(canonical)
            names.append(general)
    if not names:
        raise PkiError("hosts: a certificate needs at least one DNS name or IP address")
    return names, tuple(seen)


def _atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class FederationPKI:
    """A federation CA in a folder. ``create`` makes one, ``open`` loads an existing one."""

    def __init__(self, folder: Path, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey) -> None:
        self.folder = folder
        self.ca_cert = ca_cert
        self._ca_key = ca_key

    # ------------------------------------------------------------------ creating and opening

    @classmethod
    def create(
        cls, folder: Path | str, name: str = "paroma-federation", days: int = DEFAULT_CA_DAYS
    ) -> FederationPKI:
        folder = Path(folder)
        check_name(name, "federation name")
        check_days(days)
        if (folder / CA_CERT).exists() or (folder / CA_KEY).exists():
            raise PkiError(f"{folder}: already holds a federation CA ({CA_CERT}); use another folder")
        folder.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{name} federation CA"),
            ]
        )
        now = _now()
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        pki = cls(folder, cert, key)
        with pki._locked():
            _atomic_write(folder / CA_KEY, _key_pem(key), 0o600)
            _atomic_write(folder / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
            (folder / ISSUED).mkdir(exist_ok=True)
            pki._write_index({"federation": name, "crl_number": 0, "certificates": []})
            pki._sign_crl(pki._read_index())
        return pki

    @classmethod
    def open(cls, folder: Path | str) -> FederationPKI:
        folder = Path(folder)
        if not (folder / CA_CERT).is_file() or not (folder / CA_KEY).is_file():
            raise PkiNotFoundError(
                f"{folder}: no federation CA here (create one with `paroma pki init {folder}`)"
            )
        try:
            cert = x509.load_pem_x509_certificate((folder / CA_CERT).read_bytes())
            key = serialization.load_pem_private_key((folder / CA_KEY).read_bytes(), password=None)
        except ValueError as exc:
            raise PkiError(f"{folder}: {CA_CERT} or {CA_KEY} is not a PEM certificate/key: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
            raise PkiError(f"{folder}: {CA_KEY} does not belong to {CA_CERT}")
        return cls(folder, cert, key)

    @property
    def name(self) -> str:
        return str(self._read_index()["federation"])

    @property
    def ca_path(self) -> Path:
        return self.folder / CA_CERT

    @property
    def crl_path(self) -> Path:
        return self.folder / CRL_FILE

    # ------------------------------------------------------------------ issuing

    def issue(
        self,
        kind: CertKind | str,
        name: str,
        hosts: Iterable[str] = (),
        *,
        days: int = DEFAULT_CERT_DAYS,
        reissue: bool = False,
    ) -> IssuedCert:
        """Issue a key and certificate for a service; ``reissue`` revokes a current one of that name first."""
        kind = check_kind(kind)
        check_name(name)
        check_days(days)
        host_list = list(hosts) or list(DEFAULT_HOSTS)
        sans, canonical = parse_hosts(host_list)
        with self._locked():
            index = self._read_index()
            now = _now()
            current = [
                e
                for e in index["certificates"]
                if e["kind"] == kind.value
                and e["name"] == name
                and e["revoked_at"] is None
                and datetime.fromisoformat(e["not_after"]) > now
            ]
            if current and not reissue:
                raise CertificateExistsError(
                    f"a valid {kind.value} certificate for {name!r} exists (serial {current[0]['serial']}); "
                    "revoke it or reissue"
                )
            for entry in current:
                entry["revoked_at"] = now.isoformat()
            not_after = min(now + timedelta(days=days), self.ca_cert.not_valid_after_utc)
            key = ec.generate_private_key(ec.SECP256R1())
            serial = x509.random_serial_number()
            cert = (
                x509.CertificateBuilder()
                .subject_name(
                    x509.Name(
                        [
                            x509.NameAttribute(NameOID.ORGANIZATION_NAME, str(index["federation"])),
                            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind.value),
                            x509.NameAttribute(NameOID.COMMON_NAME, name),
                        ]
                    )
                )
                .issuer_name(self.ca_cert.subject)
                .public_key(key.public_key())
                .serial_number(serial)
                .not_valid_before(now - timedelta(minutes=5))
                .not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=True,
                        content_commitment=False,
                        key_encipherment=False,
                        data_encipherment=False,
                        key_agreement=True,
                        key_cert_sign=False,
                        crl_sign=False,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    critical=True,
                )
                .add_extension(
                    x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                    critical=False,
                )
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()),
                    critical=False,
                )
                .sign(self._ca_key, hashes.SHA256())
            )
            target = self.folder / ISSUED / f"{kind.value}-{name}"
            staging = self.folder / ISSUED / f".{kind.value}-{name}.{secrets.token_hex(4)}"
            staging.mkdir(parents=True)
            try:
                _atomic_write(staging / "key.pem", _key_pem(key), 0o600)
                _atomic_write(staging / "cert.pem", cert.public_bytes(serialization.Encoding.PEM))
                shutil.copyfile(self.ca_path, staging / "ca.pem")
                if target.exists():
                    old = target.with_name(f".{target.name}.old.{secrets.token_hex(4)}")
                    os.replace(target, old)
                    shutil.rmtree(old)
                os.replace(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            entry = {
                "serial": format(serial, "x"),
                "kind": kind.value,
                "name": name,
                "hosts": list(canonical),
                "not_after": not_after.isoformat(),
                "issued_at": now.isoformat(),
                "revoked_at": None,
            }
            index["certificates"].append(entry)
            self._write_index(index)
            self._sign_crl(index)
            return self._issued(entry)

    def revoke(self, serial_or_name: str) -> list[IssuedCert]:
        """Revoke by serial (hex) or by name (every current certificate of that name); re-signs the CRL."""
        with self._locked():
            index = self._read_index()
            wanted = serial_or_name.strip().lower().removeprefix("0x")
            matches = [e for e in index["certificates"] if e["serial"] == wanted]
            if not matches:
                matches = [e for e in index["certificates"] if e["name"] == serial_or_name]
            if not matches:
                raise UnknownCertificateError(
                    f"no certificate of this federation has serial or name {serial_or_name!r} "
                    "(see `paroma pki list`)"
                )
            now = _now().isoformat()
            newly = [e for e in matches if e["revoked_at"] is None]
            if not newly:
                raise PkiError(f"{serial_or_name!r} is already revoked")
            for entry in newly:
                entry["revoked_at"] = now
            self._write_index(index)
            self._sign_crl(index)
            return [self._issued(e) for e in newly]

    def refresh_crl(self) -> Path:
        """Re-sign the CRL with a new nextUpdate (run it well within ``CRL_DAYS``)."""
        with self._locked():
            self._sign_crl(self._read_index())
        return self.crl_path

    # ------------------------------------------------------------------ reading

    def certificates(self) -> list[IssuedCert]:
        return [self._issued(e) for e in self._read_index()["certificates"]]

    def get(self, kind: CertKind | str, name: str) -> IssuedCert:
        """The current (latest, unrevoked) certificate of that kind and name."""
        kind = check_kind(kind)
        for entry in reversed(self._read_index()["certificates"]):
            if entry["kind"] == kind.value and entry["name"] == name and entry["revoked_at"] is None:
                return self._issued(entry)
        raise UnknownCertificateError(f"no current {kind.value} certificate named {name!r}")

    def crl(self) -> x509.CertificateRevocationList:
        try:
            return x509.load_pem_x509_crl(self.crl_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise PkiError(f"{self.crl_path}: unreadable CRL: {exc}") from None

    def is_revoked(self, cert: x509.Certificate | IssuedCert | int) -> bool:
        if isinstance(cert, IssuedCert):
            serial = cert.serial
        elif isinstance(cert, int):
            serial = cert
        else:
            serial = cert.serial_number
        return self.crl().get_revoked_certificate_by_serial_number(serial) is not None

    def verify(self, cert: x509.Certificate | Path | str, *, now: datetime | None = None) -> Verification:
        """Check a certificate against the federation: issued by its CA, in its validity period, not revoked."""
        if not isinstance(cert, x509.Certificate):
            path = Path(cert)
            try:
                cert = x509.load_pem_x509_certificate(path.read_bytes())
            except OSError as exc:
                raise PkiError(f"{path}: {exc.strerror}") from None
            except ValueError:
                raise PkiError(f"{path}: not a PEM certificate") from None
        moment = now or datetime.now(UTC)
        problems: list[str] = []
        if cert.issuer != self.ca_cert.subject:
            problems.append(f"issued by {cert.issuer.rfc4514_string()}, not by this federation's CA")
        else:
            try:
                cert.verify_directly_issued_by(self.ca_cert)
            except (InvalidSignature, ValueError, TypeError):
                problems.append("the signature does not verify with this federation's CA key")
        if moment < cert.not_valid_before_utc:
            problems.append(f"not valid before {cert.not_valid_before_utc.isoformat()}")
        if moment > cert.not_valid_after_utc:
            problems.append(f"expired on {cert.not_valid_after_utc.isoformat()}")
        if moment > self.ca_cert.not_valid_after_utc:
            problems.append(f"the federation CA expired on {self.ca_cert.not_valid_after_utc.isoformat()}")
        crl = self.crl()
        if not crl.is_signature_valid(self.ca_cert.public_key()):  # type: ignore[arg-type]
            problems.append(f"{self.crl_path} is not signed by this federation's CA")
        elif crl.next_update_utc is not None and moment > crl.next_update_utc:
            problems.append(f"the CRL expired on {crl.next_update_utc.isoformat()} (run `paroma pki crl`)")
        revoked = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if revoked is not None:
            problems.append(f"revoked on {revoked.revocation_date_utc.isoformat()}")
        return Verification(
            cert.subject.rfc4514_string(), cert.serial_number, cert.not_valid_after_utc, tuple(problems)
        )

    # ------------------------------------------------------------------ internals

    def _issued(self, entry: dict[str, Any]) -> IssuedCert:
        folder = self.folder / ISSUED / f"{entry['kind']}-{entry['name']}"
        return IssuedCert(
            kind=CertKind(entry["kind"]),
            name=entry["name"],
            serial=int(entry["serial"], 16),
            not_after=datetime.fromisoformat(entry["not_after"]),
            cert_path=folder / "cert.pem",
            key_path=folder / "key.pem",
            ca_path=self.ca_path,
            crl_path=self.crl_path,
            hosts=tuple(entry.get("hosts", ())),
            revoked_at=datetime.fromisoformat(entry["revoked_at"]) if entry["revoked_at"] else None,
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_index(self) -> dict[str, Any]:
        path = self.folder / INDEX_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise PkiNotFoundError(f"{path}: missing (the folder is not a complete federation CA)") from None
        except (OSError, ValueError) as exc:
            raise PkiError(f"{path}: unreadable: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("certificates"), list):
            raise PkiError(f"{path}: expected an object with a 'certificates' list")
        return data

    def _write_index(self, index: dict[str, Any]) -> None:
        _atomic_write(self.folder / INDEX_FILE, json.dumps(index, indent=2).encode())

    def _sign_crl(self, index: dict[str, Any]) -> None:
        now = _now()
        index["crl_number"] = int(index.get("crl_number", 0)) + 1
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ca_cert.subject)
            .last_update(now - timedelta(minutes=5))
            .next_update(now + timedelta(days=CRL_DAYS))
            .add_extension(x509.CRLNumber(index["crl_number"]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()), critical=False
            )
        )
        for entry in index["certificates"]:
            if entry["revoked_at"] is None:
                continue
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(int(entry["serial"], 16))
                .revocation_date(datetime.fromisoformat(entry["revoked_at"]))
                .build()
            )
        crl = builder.sign(self._ca_key, hashes.SHA256())
        self._write_index(index)
        _atomic_write(self.crl_path, crl.public_bytes(serialization.Encoding.PEM))
