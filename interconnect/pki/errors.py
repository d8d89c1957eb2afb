"""What can go wrong with the federation's certificates, each error naming the file or value."""

from __future__ import annotations


class PkiError(Exception):
    """Base of the PKI's errors; the message is meant for the operator as is."""


class PkiNotFoundError(PkiError):
    """The folder holds no federation CA (``paroma pki init`` creates one)."""


class CertificateExistsError(PkiError):
    """A valid certificate of that kind and name was already issued (revoke it or reissue)."""


class UnknownCertificateError(PkiError):
    """No certificate of the federation has that serial number or name."""
