"""Encryption at rest of FHIR resource bodies (AES-256-GCM, one key per site)."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12


class KeyFileError(Exception):
    """The site's key file is missing, unreadable, malformed or too widely readable."""


def create_key_file(path: Path) -> None:
    """Write a new random key readable by the owner only (mode 0600); never overwrite one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(AESGCM.generate_key(bit_length=KEY_BYTES * 8))


def load_key_file(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode & 0o777
        key = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read the store key {path}: {exc.strerror}") from exc
    if mode & 0o077:
        raise KeyFileError(f"the store key {path} is readable by others (mode {mode:o}); expected 600")
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"the store key {path} has {len(key)} bytes; expected {KEY_BYTES}")
    return key


class ResourceCipher:
    """Seals resource bodies; the associated data binds a ciphertext to its type, id and
    version, so a body moved to another row fails to open."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @staticmethod
    def _aad(rtype: str, rid: str, version: int) -> bytes:
        return f"{rtype}/{rid}/_history/{version}".encode()

    def seal(self, rtype: str, rid: str, version: int, plaintext: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, self._aad(rtype, rid, version))

    def open(self, rtype: str, rid: str, version: int, sealed: bytes) -> bytes:
        nonce, ciphertext = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
        return self._aead.decrypt(nonce, ciphertext, self._aad(rtype, rid, version))
