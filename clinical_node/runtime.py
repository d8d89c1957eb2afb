"""Wiring of a clinical node from its site folder (used by the ClientApp and the services)."""

from __future__ import annotations

import threading
from pathlib import Path

from .node import ClinicalNode
from .sandbox import SandboxExecutor
from .site import Site

_NODES: dict[str, ClinicalNode] = {}
_LOCK = threading.Lock()


def open_node(site_dir: Path | str) -> ClinicalNode:
    """The process-wide ClinicalNode of a site folder (opened once per process)."""
    key = str(Path(site_dir).resolve())
    with _LOCK:
        node = _NODES.get(key)
        if node is None:
            # The protection layer imports the node's types, so it is imported here.
            from protection_layer import ProtectionLayer

            site = Site.open(Path(key))
            # The strongest sandbox that proves its isolation here; its level is what the
            # site's admission checks and what every round reports.
            executor = SandboxExecutor.strongest(private_paths=[site.root])
            layer = ProtectionLayer(site, isolation=executor.isolation)
            node = ClinicalNode(
                site, view=layer.view, executor=executor, admission=layer.admission, events=layer
            )
            node.protection = layer
            _NODES[key] = node
        return node


def forget_nodes() -> None:
    with _LOCK:
        for node in _NODES.values():
            close = getattr(node.executor, "close", None)
            if close is not None:
                close()
            if node.protection is not None:
                node.protection.close()
            node.site.close()
        _NODES.clear()


def site_dirs(root: Path | str) -> list[Path]:
    """The site folders directly under ``root``, in name order (partition i is the i-th)."""
    base = Path(root)
    return sorted(p for p in base.iterdir() if (p / "site.toml").is_file()) if base.is_dir() else []
