"""Freeing a crashed SuperNode's place at the SuperLink before it is started again.

A SuperNode is online at the SuperLink until twice its heartbeat interval (60 s) after its last
heartbeat. One that crashed (killed, no ``DeactivateNode`` on its way out) stays online that
long, and the SuperLink refuses to activate the same node again meanwhile (``Failed to
activate SuperNode``, exit code 305): a restart right after a crash fails. The site's operator
holds the node's authentication key, so the restart first deactivates the dead incarnation
over the Fleet API, signed with that key (the SuperLink checks that the key is the node's);
its outstanding instructions are then answered "Node Unavailable" at once, and the aggregator
asks the node again when it is back (``aggregator/delivery.py``).
"""

from __future__ import annotations

from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.proto.fleet_pb2 import DeactivateNodeRequest  # type: ignore[attr-defined]
from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor
from flwr.supercore.protobuf.client import ProtobufClientInterceptor
from flwr.supernode.fleet_http_client import FleetHttpClient
from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor


class LeaseError(RuntimeError):
    """The SuperLink did not deactivate the node; the message says why."""


def deactivate(superlink: str, ca: Path, private_key: Path, node_id: int) -> None:
    """Deactivate ``node_id`` at the SuperLink (``host:port`` of its Fleet API, verified with
    the federation CA ``ca``), authenticated with the node's own key."""
    key = load_ssh_private_key(private_key.read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise LeaseError(f"{private_key}: not an EC SuperNode key")
    interceptors: list[ProtobufClientInterceptor] = [
        RuntimeVersionHttpInterceptor(component_name="SuperNode"),
        NodeAuthHttpInterceptor(key, key.public_key()),
    ]
    try:
        with FleetHttpClient.from_server_address(superlink, False, str(ca), interceptors) as client:
            client.DeactivateNode(DeactivateNodeRequest(node_id=node_id))
    except httpx.HTTPError as exc:
        raise LeaseError(f"deactivating node {node_id} at {superlink} failed: {exc}") from exc
