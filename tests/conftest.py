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


# -- the job service (tests/test_jobs_*.py) --------------------------------------------------


def copy_uci_sites(template: Path, root: Path, keys: tuple[str, ...] = ("cleveland", "hungarian")) -> Path:
    """Copies of some UCI site folders under ``root`` (the sites a job service runs over)."""
    for key in keys:
        shutil.copytree(template / key, root / key)
        for key_file in (root / key / "keys").iterdir():
            key_file.chmod(0o600)
    return root


class JobServiceFixture:
    """A job service (local runner over two UCI sites) on a live server, with tokens."""

    def __init__(self, root: Path, sites: Path) -> None:
        from aggregator.jobs.app import create_app
        from aggregator.jobs.runner import LocalRunner
        from aggregator.jobs.service import JobService

        self.root = root
        self.sites = sites
        self.service = JobService(root, LocalRunner(sites))
        self.tokens = {
            name: self.service.tokens.issue(role, name)
            for name, role in (
                ("alice", "data-scientist"),
                ("bob", "data-scientist"),
                ("hospital-admin", "site-admin"),
                ("ops", "operator"),
            )
        }
        self.server = LiveServer(create_app(self.service))

    @property
    def url(self) -> str:
        return self.server.url

    def headers(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}


@pytest.fixture(scope="session")
def job_service(
    uci_sites_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JobServiceFixture]:
    base = tmp_path_factory.mktemp("job-service")
    fixture = JobServiceFixture(base / "service", copy_uci_sites(uci_sites_template, base / "sites"))
    fixture.service.start()
    with fixture.server:
        yield fixture
    fixture.service.stop()


def wait_for_job(
    url: str, headers: dict[str, str], job_id: str, states: tuple[str, ...], timeout: float = 300
) -> dict:
    """Poll the job service until the job is in one of ``states``; its status."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{url}/api/jobs/{job_id}", headers=headers, timeout=30).json()
        if job["state"] in states:
            return dict(job)
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s: {job}")
        time.sleep(0.1)


def heart_job(**changes: object) -> dict:
    """The shipped example job spec (aggregator/jobs/examples/heart.toml) as a document."""
    import tomllib

    doc = tomllib.loads((Path(__file__).parent.parent / "aggregator/jobs/examples/heart.toml").read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            doc.setdefault(key, {}).update(value)
        else:
            doc[key] = value
    return doc


@pytest.fixture(scope="session")
def alice_jobs(job_service: JobServiceFixture) -> dict[str, dict]:
    """Two jobs of alice, queued together: one every site refuses, then a good one (2 rounds)."""
    import httpx

    headers = job_service.headers("alice")
    refused = httpx.post(
        f"{job_service.url}/api/jobs", json=heart_job(purpose="CLINTRCH", name="refused"), headers=headers
    ).json()
    good = httpx.post(
        f"{job_service.url}/api/jobs", json=heart_job(rounds=2, name="heart-2"), headers=headers
    ).json()
    final = ("completed", "failed", "cancelled")
    return {
        "refused": wait_for_job(job_service.url, headers, refused["id"], final),
        "completed": wait_for_job(job_service.url, headers, good["id"], final),
    }
