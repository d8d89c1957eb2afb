"""The federation PKI: a CA per federation, certificates for the aggregator, sites, relays and
services (mutual TLS, CRL checked), and SuperNode authentication keys in Flower's format.

    from interconnect.pki import FederationPKI, ssl_client_context, ssl_server_context

    pki = FederationPKI.create("pki", name="local-4")
    aggregator = pki.issue("aggregator", "aggregator", ["localhost", "127.0.0.1"])
    server_side = ssl_server_context(aggregator)               # clients must hold a federation cert
    site = pki.issue("site", "cleveland")
    client_side = ssl_client_context(site)                     # verifies chain, host name and CRL
    pki.revoke("cleveland")                                    # refused from the next handshake on
"""

from __future__ import annotations

from interconnect.pki.authority import (
    DEFAULT_HOSTS,
    CertKind,
    FederationPKI,
    IssuedCert,
    Verification,
)
from interconnect.pki.errors import (
    CertificateExistsError,
    PkiError,
    PkiNotFoundError,
    UnknownCertificateError,
)
from interconnect.pki.supernode_keys import SupernodeAuthKey, create_supernode_auth_key
from interconnect.pki.tls import ssl_client_context, ssl_server_context

__all__ = [
    "DEFAULT_HOSTS",
    "CertKind",
    "CertificateExistsError",
    "FederationPKI",
    "IssuedCert",
    "PkiError",
    "PkiNotFoundError",
    "SupernodeAuthKey",
    "UnknownCertificateError",
    "Verification",
    "create_supernode_auth_key",
    "ssl_client_context",
    "ssl_server_context",
]
