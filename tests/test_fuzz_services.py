"""Schemathesis against every service's OpenAPI, each on a real uvicorn server: requests that
fit the schema and requests that do not, on every operation, authenticated as the service's
most privileged caller so the fuzzing reaches the handlers, then hostile requests no schema
allows (malformed, deeply nested, huge and non-UTF-8 bodies; path traversal, NUL and overlong
path values). No answer may be a 5xx, and none
may carry a stack trace or an exception's repr.

The clinical node is fuzzed three times, each as the caller its routes answer: the FHIR and
consent API as the site's admin, the federation endpoints (feasibility, catalogue) with the
aggregator's token, the patient dashboard in a signed-in patient's session (cookie and CSRF
token). A new service adds one ``FuzzTarget`` line to ``TARGETS``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from conftest import LiveServer
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

from aggregator.jobs.app import create_app as create_jobs_app
from aggregator.jobs.runner import LocalRunner
from aggregator.jobs.service import JobService
from clinical_node.auth import TokenStore
from clinical_node.service import create_app as create_node_app
from clinical_node.site import Site
from interconnect.pce.engine import SecurePathEngine
from interconnect.pce.nvd import NvdClient
from interconnect.pce.scenario import load_scenario
from interconnect.pce.service import create_app as create_pce_app
from protection_layer.opa_api import create_opa_app

# Bounded so that the whole fuzz suite stays well under a minute on two busy cores.
EXAMPLES_PER_OPERATION = 3

# What a leaked Python exception looks like in a body.
STACK_TRACE = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\.py\", line \d+|\b\w+Error\(")


@dataclass(frozen=True)
class FuzzTarget:
    name: str
    # yields (ASGI app, request headers) for a fresh service with its state in tmp
    start: Callable[[Path], Any]
    skip_paths: tuple[str, ...] = ()
    # only the operations under this path prefix (a caller the other routes refuse)
    only_prefix: str = ""
    # operations that end the caller's session or data: fuzzed after the others
    last_paths: tuple[str, ...] = ()


@contextmanager
def _node(tmp: Path, headers: Callable[[Site, Any], dict[str, str]]) -> Iterator[tuple[Any, dict[str, str]]]:
    site = Site.create(tmp / "site", "fuzz-site", "Fuzz Hospital")
    app = create_node_app(site)
    try:
        yield app, headers(site, app)
    finally:
        app.state.protection.close()
        site.close()


def _site_token(role: str) -> Callable[[Site, Any], dict[str, str]]:
    def headers(site: Site, app: Any) -> dict[str, str]:
        token = TokenStore(site.root / "keys" / "api-tokens.json").issue(role, "fuzzer")
        return {"Authorization": f"Bearer {token}"}

    return headers


def _patient_session(site: Site, app: Any) -> dict[str, str]:
    """A signed-in patient with a research consent: the dashboard's cookie and CSRF token."""
    from datetime import UTC, datetime

    from protection_layer.consent_mix import research_consent
    from protection_layer.consent_requests import ConsentRequests
    from protection_layer.dashboard import PatientSessions
    from protection_layer.dashboard.router import COOKIE

    consent = research_consent("fuzz-consent", "fuzz-patient", signed=datetime(2024, 1, 1, tzinfo=UTC))
    app.state.protection.consents.put(consent)
    requests_ = ConsentRequests.for_site(site.root)
    try:
        requests_.add("fuzz-patient", "fuzz-study", "HRESCH", "Organization/fuzz", "join us?")
    finally:
        requests_.close()
    sessions = PatientSessions.for_site(site.root)
    try:
        session = sessions.sign_in(sessions.issue_code("fuzz-patient").code)
    finally:
        sessions.close()
    return {"Cookie": f"{COOKIE}={session.session_id}", "X-CSRF-Token": session.csrf_token}


@contextmanager
def _job_service(tmp: Path) -> Iterator[tuple[Any, dict[str, str]]]:
    # started over no site: a fuzzed spec that is valid is queued and fails at admission
    (tmp / "sites").mkdir()
    service = JobService(tmp / "service", LocalRunner(tmp / "sites"))
    token = service.tokens.issue("operator", "fuzzer")
    service.start()
    try:
        yield create_jobs_app(service), {"Authorization": f"Bearer {token}"}
    finally:
        service.stop()


@contextmanager
def _pce(tmp: Path) -> Iterator[tuple[Any, dict[str, str]]]:
    nvd = NvdClient()
    yield create_pce_app(SecurePathEngine(*load_scenario("demo", nvd)), nvd), {}


@contextmanager
def _opa(tmp: Path) -> Iterator[tuple[Any, dict[str, str]]]:
    yield create_opa_app(), {}


TARGETS = [
    FuzzTarget("fhir-api", lambda tmp: _node(tmp, _site_token("site-admin"))),
    FuzzTarget(
        "federation-endpoints", lambda tmp: _node(tmp, _site_token("aggregator")), only_prefix="/federation/"
    ),
    FuzzTarget(
        "patient-dashboard",
        lambda tmp: _node(tmp, _patient_session),
        # the event stream never ends by design; test_dashboard_api.py reads it
        skip_paths=("/patient/api/events",),
        only_prefix="/patient/",
        last_paths=("/patient/api/erasure", "/patient/api/session"),
    ),
    FuzzTarget("job-service", _job_service),
    # the event stream never ends by design; its answer is checked in test_pce_api.py
    FuzzTarget("secure-traffic-engine", _pce, skip_paths=("/api/events",)),
    FuzzTarget("opa-compatible", _opa),
]


JSON = {"Content-Type": "application/json"}
HOSTILE_BODIES: list[tuple[bytes, dict[str, str]]] = [
    (b"", JSON),
    (b"{", JSON),
    (b"null", JSON),
    (b"[1, 2, 3]", JSON),
    (b'"a string"', JSON),
    (b"1e999999", JSON),
    (b"[" * 5000 + b"]" * 5000, JSON),
    (b'{"resourceType": "Bundle", "type": "transaction", "entry": [null, 1, "x", {"resource": []}]}', JSON),
    (b'{"a": "\ud800"}', JSON),
    (b"\xff\xfe\x00garbage", JSON),
    (b"x" * 300_000, {"Content-Type": "text/plain"}),
    (b"<xml/>", {"Content-Type": "application/xml"}),
]
HOSTILE_SEGMENTS = ["..", "%2e%2e%2f%2e%2e", "%00", "x" * 3000, "%ff%fe", "-1", "1e309", "Patient%2F..%2F.."]


def _hostile_urls(template: str) -> list[str]:
    """The path with every parameter set to one hostile value at a time."""
    if "{" not in template:
        return [template]
    return [re.sub(r"\{[^}]+\}", segment, template) for segment in HOSTILE_SEGMENTS]


def _problems(response: requests.Response) -> list[str]:
    found = []
    if response.status_code >= 500:
        found.append(f"status {response.status_code}")
    if STACK_TRACE.search(response.text):
        found.append("a stack trace in the body")
    return found


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_no_5xx_and_no_stack_trace(target: FuzzTarget, tmp_path: Path) -> None:
    with target.start(tmp_path) as (app, headers), LiveServer(app) as live:
        schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
        operations = [r.ok() for r in schema.get_all_operations()]
        operations = [
            op
            for op in operations
            if op.path not in target.skip_paths and op.path.startswith(target.only_prefix)
        ]
        operations.sort(key=lambda op: (op.path in target.last_paths, op.method.upper() == "DELETE"))
        assert operations, "the schema lists no operation"
        failures: list[str] = []
        # statuses of the schema-conforming requests: some must get past authentication
        answered: list[int] = []
        session = requests.Session()
        for op in operations:

            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=op.as_strategy(generation_mode=GenerationMode.POSITIVE))
            def fuzz(case: Any) -> None:
                response = case.call(base_url=live.url, session=session, headers=headers, timeout=20)
                answered.append(response.status_code)
                for problem in _problems(response):
                    failures.append(
                        f"{case.method} {case.formatted_path} -> {problem}: {response.text[:300]!r}"
                    )

            fuzz()
            # Requests no schema allows (schemathesis's negative mode finds none for free-form
            # string parameters and raw bodies): hostile path values and bodies.
            for url in _hostile_urls(op.path):
                for body in HOSTILE_BODIES if op.method.upper() in ("POST", "PUT", "PATCH") else [None]:
                    # a fresh connection each: a server may close one whose body it refused unread
                    response = requests.request(
                        op.method.upper(),
                        live.url + url,
                        headers={**headers, **(body[1] if body else {}), "Connection": "close"},
                        data=body[0] if body else None,
                        timeout=20,
                    )
                    for problem in _problems(response):
                        failures.append(f"{op.method.upper()} {url} -> {problem}: {response.text[:300]!r}")
        assert not failures, "\n".join(sorted(set(failures))[:20])
        assert any(code < 400 for code in answered), f"no request was accepted: {sorted(set(answered))}"
