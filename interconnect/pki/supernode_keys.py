"""SuperNode authentication keys as Flower 1.42 expects them.

``flower-supernode --auth-supernode-private-key FILE`` reads an OpenSSH private key and accepts
only elliptic-curve keys (``load_ssh_private_key``, ``ec.EllipticCurvePrivateKey``); the
SuperLink, started with ``--enable-supernode-auth``, admits a node whose public key was
registered with ``flwr supernode register PUBLIC_KEY_FILE`` (an OpenSSH public key on a NIST
curve). Ed25519 keys are refused by both, so these are ECDSA P-384 (``ssh-keygen -t ecdsa -b 384``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from interconnect.pki.authority import _atomic_write, check_name
from interconnect.pki.errors import PkiError


@dataclass(frozen=True)
class SupernodeAuthKey:
    name: str
    private_key_path: Path
    public_key_path: Path

    def public_key_openssh(self) -> str:
        return self.public_key_path.read_text().strip()


def create_supernode_auth_key(folder: Path | str, name: str, *, overwrite: bool = False) -> SupernodeAuthKey:
    """Write ``<name>.key`` (0600, OpenSSH private) and ``<name>.pub`` (OpenSSH public) in ``folder``."""
    check_name(name)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    private_path, public_path = folder / f"{name}.key", folder / f"{name}.pub"
    if not overwrite and (private_path.exists() or public_path.exists()):
        raise PkiError(f"{private_path}: a SuperNode key named {name!r} exists already")
    key = ec.generate_private_key(ec.SECP384R1())
    _atomic_write(
        private_path,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
        0o600,
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _atomic_write(public_path, public + f" paroma-{name}\n".encode())
    return SupernodeAuthKey(name, private_path, public_path)
