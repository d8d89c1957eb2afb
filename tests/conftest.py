"""Shared fixtures: site folders, the real UCI sites (every patient consenting to health
research), live HTTP servers on free ports, and both policy engines."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import uvicorn

from clinical_node.datasets.uci_heart import HOSPITALS, hospital_bundle
from clinical_node.site import Site
from paroma.demo import DEMO_POLICY
from protection_layer import ConsentMix, ProtectionLayer, generate_consents
from protection_layer.engine import OpaServerEngine, PolicyEngine, RegorusEngine
from protection_layer.opa_api import create_opa_app

DATA = Path(__file__).parent / "data"
SYNTHEA = DATA / "synthea"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """A real uvicorn server in a thread, on a free port of 127.0.0.1."""

    def __init__(self, app: object) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site.create(tmp_path / "site", "test-site", "Test Hospital")
    yield s
    s.close()


@pytest.fixture(scope="session")
def uci_sites_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four UCI hospitals as site folders, built once per test session."""
    root = tmp_path_factory.mktemp("uci-sites")
    for key, hospital in HOSPITALS.items():
        s = Site.create(root / key, key, hospital.name, policy=DEMO_POLICY)
        s.fhir.ingest_bundle(hospital_bundle(key))
        s.plans.approve_builtin("logistic-regression", by="test set-up")
        layer = ProtectionLayer(s)
        consents = generate_consents(s.fhir.patients(), ConsentMix.full(), now=datetime.now(UTC), seed=7)
        layer.consents.put_many([c.resource for c in consents if c.resource])
        layer.close()
        s.close()
    return root


@pytest.fixture
def uci_sites(uci_sites_template: Path, tmp_path: Path) -> Path:
    """A private copy of the four UCI site folders (tests may change them)."""
    root = tmp_path / "uci-sites"
    shutil.copytree(uci_sites_template, root)
    for key in HOSPITALS:
        for key_file in (root / key / "keys").iterdir():
            key_file.chmod(0o600)
    return root


@pytest.fixture(scope="session")
def opa_server() -> Iterator[LiveServer]:
    """The protection layer's OPA REST API on a live server (no OPA binary is available)."""
    with LiveServer(create_opa_app()) as server:
        yield server


@pytest.fixture(params=["embedded", "opa"])
def engine(request: pytest.FixtureRequest, opa_server: LiveServer) -> Iterator[PolicyEngine]:
    """Each policy engine, loaded with the built-in policies: tests using it run twice."""
    made: PolicyEngine = RegorusEngine() if request.param == "embedded" else OpaServerEngine(opa_server.url)
    yield made
    made.close()
