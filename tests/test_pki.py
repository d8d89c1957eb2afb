"""The federation PKI: CA, issued certificates, CRL, mutual TLS that refuses what the
federation did not issue, SuperNode keys in Flower's format, and ``paroma pki``."""

from __future__ import annotations

import hashlib
import os
import ssl
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from transport_support import TlsClient, TlsHashServer, federation
from typer.testing import CliRunner

from interconnect.pki import (
    CertificateExistsError,
    FederationPKI,
    IssuedCert,
    PkiError,
    UnknownCertificateError,
    create_supernode_auth_key,
    ssl_client_context,
    ssl_server_context,
)
from paroma.cli import app

runner = CliRunner()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ca_and_issued_certificate(tmp_path: Path) -> None:
    pki, aggregator, site = federation(tmp_path)
    assert mode(pki.folder / "ca.key") == 0o600
    assert mode(aggregator.key_path) == 0o600 and mode(site.key_path) == 0o600
    ca = pki.ca_cert
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert = x509.load_pem_x509_certificate(aggregator.cert_path.read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "aggregator"
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert cert.not_valid_after_utc - datetime.now(UTC) > timedelta(days=360)
    cert.verify_directly_issued_by(ca)
    assert pki.verify(aggregator.cert_path).ok
    # Reopening the folder gives the same CA and the same list.
    again = FederationPKI.open(pki.folder)
    assert again.ca_cert == ca
    assert [c.serial for c in again.certificates()] == [aggregator.serial, site.serial]


def test_hosts_expiry_and_bad_input(tmp_path: Path) -> None:
    pki = FederationPKI.create(tmp_path / "pki", name="f")
    relay = pki.issue("relay", "router-1", ["r1.example.org", "10.0.0.7", "::1"], days=2)
    cert = x509.load_pem_x509_certificate(relay.cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["r1.example.org"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7", "::1"]
    assert relay.not_after - datetime.now(UTC) < timedelta(days=2, minutes=1)
    later = pki.verify(relay.cert_path, now=datetime.now(UTC) + timedelta(days=3))
    assert not later.ok and any("expired" in p for p in later.problems)
    with pytest.raises(PkiError, match="kind 'router'"):
        pki.issue("router", "x")
    with pytest.raises(PkiError, match="name 'Bad Name'"):
        pki.issue("site", "Bad Name")
    with pytest.raises(PkiError, match="host 'not a host'"):
        pki.issue("site", "y", ["not a host"])
    with pytest.raises(PkiError, match="days 0"):
        pki.issue("site", "z", days=0)
    with pytest.raises(CertificateExistsError, match="router-1"):
        pki.issue("relay", "router-1")
    # A refused issue leaves nothing behind.
    assert sorted(p.name for p in (pki.folder / "issued").iterdir()) == ["relay-router-1"]
    with pytest.raises(PkiError, match="already holds a federation CA"):
        FederationPKI.create(pki.folder)
    with pytest.raises(PkiError, match="no federation CA"):
        FederationPKI.open(tmp_path / "nowhere")


def test_revocation_and_reissue(tmp_path: Path) -> None:
    pki, _, site = federation(tmp_path)
    assert not pki.is_revoked(site)
    (revoked,) = pki.revoke(site.serial_hex)
    assert revoked.serial == site.serial
    assert pki.is_revoked(site)
    crl = pki.crl()
    assert crl.is_signature_valid(pki.ca_cert.public_key())  # type: ignore[arg-type]
    result = pki.verify(site.cert_path)
    assert not result.ok and any("revoked" in p for p in result.problems)
    with pytest.raises(PkiError, match="already revoked"):
        pki.revoke("cleveland")
    with pytest.raises(UnknownCertificateError, match="nobody"):
        pki.revoke("nobody")
    renewed = pki.issue("site", "cleveland")
    assert renewed.serial != site.serial and pki.verify(renewed.cert_path).ok
    third = pki.issue("site", "cleveland", reissue=True)
    assert pki.is_revoked(renewed) and not pki.is_revoked(third)
    assert pki.get("site", "cleveland").serial == third.serial


def _foreign_cert(tmp_path: Path, pki: FederationPKI) -> IssuedCert:
    """A self-signed certificate whose subject copies the federation CA's (an impostor)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cleveland")]))
        .issuer_name(pki.ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path / "impostor"
    folder.mkdir()
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return IssuedCert(
        pki.get("site", "cleveland").kind,
        "impostor",
        cert.serial_number,
        cert.not_valid_after_utc,
        folder / "cert.pem",
        folder / "key.pem",
        pki.ca_path,
        pki.crl_path,
    )


def test_mutual_tls_refuses_what_the_federation_did_not_issue(tmp_path: Path) -> None:
    pki, aggregator, site = federation(tmp_path)
    other = FederationPKI.create(tmp_path / "other", name="other")
    stranger = other.issue("site", "cleveland")
    impostor = _foreign_cert(tmp_path, pki)
    assert not pki.verify(impostor.cert_path).ok
    assert not pki.verify(stranger.cert_path).ok
    with TlsHashServer(aggregator) as server:
        with TlsClient(server.port, site) as client:
            assert client.send_and_hash(b"x" * 1000) == hashlib.sha256(b"x" * 1000).digest()
        assert server.peers == ["cleveland"]

        def refused(make: object) -> None:
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                client = make()  # type: ignore[operator]
                client.ping()  # TLS 1.3: the server's verdict arrives after the client's handshake

        # No certificate at all, a self-signed impostor, one from another federation's CA.
        refused(lambda: TlsClient(server.port, None, ca=pki.ca_path))
        refused(lambda: _client_with(server.port, impostor))
        refused(lambda: _client_with(server.port, stranger, ca=other.ca_path, crl=other.crl_path))
        # Revoked: the server loads the CRL when its context is built.
        pki.revoke("cleveland")
    with TlsHashServer(aggregator) as server:
        refused(lambda: TlsClient(server.port, site))
        # The server thread records its side of the refused handshake just after the client's.
        deadline = time.monotonic() + 10
        while not server.handshake_errors and time.monotonic() < deadline:
            time.sleep(0.01)
        assert any("revoked" in e for e in server.handshake_errors)
        assert server.connections == 0


class _Client(TlsClient):
    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        import socket

        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.conn = context.wrap_socket(raw, server_hostname="127.0.0.1")


def _client_with(
    port: int, issued: IssuedCert, *, ca: Path | None = None, crl: Path | None = None
) -> TlsClient:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(ca or issued.ca_path))
    context.load_cert_chain(str(issued.cert_path), str(issued.key_path))
    return _Client(port, context)


def test_client_refuses_a_server_outside_the_federation(tmp_path: Path) -> None:
    pki, _, site = federation(tmp_path)
    other = FederationPKI.create(tmp_path / "other", name="other")
    rogue = other.issue("aggregator", "aggregator")
    plain = ssl_server_context(rogue, require_client_cert=False)
    with TlsHashServer(rogue, context=plain) as server, pytest.raises(ssl.SSLCertVerificationError):
        TlsClient(server.port, site)
    # A server certificate for another host name is refused too (RFC 6125 §6.4).
    elsewhere = pki.issue("aggregator", "elsewhere", ["elsewhere.example.org"])
    with TlsHashServer(elsewhere) as server, pytest.raises(ssl.SSLCertVerificationError):
        TlsClient(server.port, site)
    with pytest.raises(PkiError, match="CA certificate"):
        ssl_client_context(None)


def test_supernode_auth_key_is_what_flower_loads(tmp_path: Path) -> None:
    key = create_supernode_auth_key(tmp_path / "keys", "cleveland")
    assert mode(key.private_key_path) == 0o600
    private = serialization.load_ssh_private_key(key.private_key_path.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    # Flower's `flwr supernode register` check: an OpenSSH EC public key on a NIST curve.
    from flwr.cli.supernode.register import try_load_public_key

    assert try_load_public_key(key.public_key_path)
    with pytest.raises(PkiError, match="exists already"):
        create_supernode_auth_key(tmp_path / "keys", "cleveland")


def cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["pki", *args])
    return result.exit_code, result.stdout, result.stderr


def test_cli(tmp_path: Path) -> None:
    folder = str(tmp_path / "pki")
    code, out, _ = cli("init", folder, "--name", "local-4")
    assert code == 0 and "federation CA 'local-4'" in out
    code, out, _ = cli(
        "issue", folder, "--kind", "site", "--name", "cleveland", "--ip", "10.1.0.2", "--dns", "h1.local"
    )
    assert code == 0 and "hosts h1.local, 10.1.0.2" in out
    cert = tmp_path / "pki" / "issued" / "site-cleveland" / "cert.pem"
    assert mode(cert.with_name("key.pem")) == 0o600
    code, out, _ = cli("verify", folder, str(cert))
    assert code == 0 and out.startswith("valid: CN=cleveland")
    code, out, _ = cli("list", folder, "--json")
    assert code == 0 and '"name": "cleveland"' in out
    code, out, _ = cli("revoke", folder, "cleveland")
    assert code == 0 and "revoked site cleveland" in out
    code, _, err = cli("verify", folder, str(cert))
    assert code == 1 and "revoked on" in err
    code, _, err = cli("issue", folder, "--kind", "site", "--name", "h2", "--ip", "999.1.1.1")
    assert code == 2 and err.strip() == "error: --ip '999.1.1.1': not an IPv4 or IPv6 address"
    code, _, err = cli("issue", folder, "--kind", "printer", "--name", "h2")
    assert code == 2 and "kind 'printer': expected one of aggregator, site, relay, service" in err
    code, _, err = cli("verify", folder, str(tmp_path / "missing.pem"))
    assert code == 2 and "missing.pem" in err
    code, _, err = cli("list", str(tmp_path / "empty"))
    assert code == 2 and "no federation CA here" in err
    code, out, _ = cli("crl", folder)
    assert code == 0
    code, out, _ = cli("supernode-key", str(tmp_path / "keys"), "--name", "cleveland")
    assert code == 0 and os.path.exists(tmp_path / "keys" / "cleveland.pub")
