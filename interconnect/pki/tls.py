"""TLS contexts for the federation's services: mutual TLS, the federation CA as the only trust
anchor, and the federation's CRL checked on every handshake.

``VERIFY_CRL_CHECK_LEAF`` makes OpenSSL refuse a peer whose certificate is on the CRL, and also
refuse every peer when the CRL is missing or expired (fail closed; RFC 5280 §6.3).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from interconnect.pki.authority import CRL_FILE, IssuedCert
from interconnect.pki.errors import PkiError


def _trust(context: ssl.SSLContext, ca_path: Path, crl_path: Path | None) -> None:
    try:
        context.load_verify_locations(cafile=str(ca_path))
        if crl_path is not None:
            context.load_verify_locations(cafile=str(crl_path))
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    except (OSError, ssl.SSLError) as exc:
        raise PkiError(f"cannot load the federation's CA {ca_path} or CRL {crl_path}: {exc}") from None
    # Only the federation CA is trusted: no system roots are loaded.
    context.verify_flags |= ssl.VERIFY_X509_STRICT


def _identity(context: ssl.SSLContext, issued: IssuedCert) -> None:
    try:
        context.load_cert_chain(certfile=str(issued.cert_path), keyfile=str(issued.key_path))
    except (OSError, ssl.SSLError) as exc:
        raise PkiError(f"cannot load {issued.cert_path} with {issued.key_path}: {exc}") from None


def ssl_server_context(
    issued: IssuedCert, *, require_client_cert: bool = True, check_crl: bool = True
) -> ssl.SSLContext:
    """A server's context: its certificate, and (by default) clients must present one of the federation."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _identity(context, issued)
    _trust(context, issued.ca_path, issued.crl_path if check_crl else None)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    return context


def ssl_client_context(
    issued: IssuedCert | None = None,
    *,
    ca_path: Path | None = None,
    crl_path: Path | None = None,
    check_crl: bool = True,
) -> ssl.SSLContext:
    """A client's context: the server must hold a federation certificate for the host name dialled;
    with ``issued`` the client presents its own certificate (mutual TLS)."""
    if issued is None and ca_path is None:
        raise PkiError(
            "a TLS client needs the federation's CA certificate (ca_path) or an issued certificate"
        )
    ca = ca_path or (issued.ca_path if issued else None)
    assert ca is not None
    # The federation folder keeps its CRL beside the CA certificate.
    crl = crl_path or (issued.crl_path if issued else ca.with_name(CRL_FILE))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    _trust(context, ca, crl if check_crl else None)
    if issued is not None:
        _identity(context, issued)
    return context
