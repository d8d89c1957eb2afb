"""The authorisation matrix: every endpoint of every service, called as every role, on a real
server; each answer must be the expected allow (neither 401 nor 403, and no 5xx) or deny
(401 or 403). The rows must cover every operation the service's OpenAPI lists, so a new
endpoint cannot go unlisted. A new service adds one ``Service`` to ``SERVICES``.

Roles: anonymous, patients A and B (site tokens of role ``patient``), data scientists X and
Y (job-service tokens of role ``data-scientist``; no site or engine knows them, so what they
present there is a bearer token of their own), the site's admin (site token ``site-admin``;
the job service's ``site-admin`` token) and the federation's operator (the site's
``aggregator`` token; the Secure Traffic Engine's and the job service's operator tokens).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LiveServer, heart_job
from dashboard_support import enrolment_code

from aggregator.jobs.app import create_app as create_jobs_app
from aggregator.jobs.runner import LocalRunner
from aggregator.jobs.service import JobService
from clinical_node.auth import TokenStore
from clinical_node.service import create_app as create_node_app
from clinical_node.site import Site
from interconnect.pce.access import OperatorTokens
from interconnect.pce.engine import SecurePathEngine
from interconnect.pce.nvd import NvdClient
from interconnect.pce.scenario import load_scenario
from interconnect.pce.service import create_app as create_pce_app
from paroma.jobspec import parse_job_spec
from protection_layer.consent_mix import research_consent
from protection_layer.consent_requests import ConsentRequests
from protection_layer.opa_api import create_opa_app

ROLES = ("anonymous", "patient-a", "patient-b", "scientist-x", "scientist-y", "site-admin", "operator")
EVERYONE = frozenset(ROLES)
SITE_ADMIN = frozenset({"site-admin"})
OPERATOR = frozenset({"operator"})


@dataclass(frozen=True)
class Endpoint:
    method: str
    template: str  # the OpenAPI path
    url: str  # a concrete request to it
    allowed: frozenset[str]
    json: Any = None
    content: bytes | None = None
    stream: bool = False  # an endpoint that answers with an endless stream
    # what a deny may answer: 404 too where a resource of another subject must look unknown
    denied_as: tuple[int, ...] = (401, 403)
    # a bearer-token endpoint's 401 carries a Bearer challenge; the patient dashboard's
    # cookie sessions do not
    bearer: bool = True


PATIENTS = frozenset({"patient-a", "patient-b"})
PATIENT_A = frozenset({"patient-a"})


@dataclass
class Service:
    name: str
    # a running service: its base URL and each role's request headers
    start: Callable[[Path], AbstractContextManager[tuple[str, dict[str, dict[str, str]]]]]
    endpoints: list[Endpoint] = field(default_factory=list)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _outsiders() -> dict[str, dict[str, str]]:
    return {
        "anonymous": {},
        "scientist-x": _bearer(secrets.token_urlsafe(32)),
        "scientist-y": _bearer(secrets.token_urlsafe(32)),
    }


# -- the clinical node: FHIR API and consent endpoints --------------------------------------


@contextmanager
def _clinical_node(tmp: Path) -> Iterator[tuple[str, dict[str, dict[str, str]]]]:
    site = Site.create(tmp / "site", "matrix-site", "Matrix Hospital")
    tokens = TokenStore(site.root / "keys" / "api-tokens.json")
    headers = _outsiders() | {
        "patient-a": _bearer(tokens.issue("patient", "pa")),
        "patient-b": _bearer(tokens.issue("patient", "pb")),
        "site-admin": _bearer(tokens.issue("site-admin", "staff")),
        "operator": _bearer(tokens.issue("aggregator", "federation")),
    }
    app = create_node_app(site)
    app.state.protection.consents.put(_consent())
    # a study's consent request to patient A, answered once in the matrix
    requests = ConsentRequests.for_site(site.root)
    request_id = requests.add("pa", "matrix-study", "HRESCH", "Organization/matrix", "join us?")
    requests.close()
    _REQUEST_ID[0] = request_id
    try:
        with LiveServer(app) as live:
            # each patient signed in to the dashboard: its session cookie and CSRF token
            # beside the site token (which the dashboard does not accept)
            for role, patient in (("patient-a", "pa"), ("patient-b", "pb")):
                headers[role] |= _dashboard_session(live.url, site.root, patient)
            yield live.url, headers
    finally:
        app.state.protection.close()
        site.close()


_REQUEST_ID = [""]
# the request row's URL is only known once the site exists; it is read when the row is called
REQUEST_URL = "/patient/api/requests/{request}"


def _dashboard_session(url: str, site_root: Path, patient: str) -> dict[str, str]:
    answer = httpx.post(
        f"{url}/patient/api/session", json={"code": enrolment_code(site_root, patient)}, timeout=20
    )
    assert answer.status_code == 201, answer.text
    return {
        "Cookie": f"paroma_patient={answer.cookies['paroma_patient']}",
        "X-CSRF-Token": answer.json()["csrf_token"],
    }


def _consent() -> dict[str, Any]:
    from datetime import UTC, datetime

    return research_consent("ca", "pa", signed=datetime(2024, 1, 1, tzinfo=UTC))


BUNDLE = {
    "resourceType": "Bundle",
    "type": "collection",
    "entry": [{"resource": {"resourceType": "Patient", "id": "pa", "gender": "female"}}],
}

CLINICAL_NODE = Service(
    "clinical-node",
    _clinical_node,
    [
        Endpoint("GET", "/healthz", "/healthz", EVERYONE),
        Endpoint("GET", "/fhir/metadata", "/fhir/metadata", EVERYONE),
        Endpoint("POST", "/fhir", "/fhir", SITE_ADMIN, json=BUNDLE),
        Endpoint("GET", "/fhir/{rtype}/{rid}", "/fhir/Patient/pa", SITE_ADMIN),
        Endpoint("GET", "/fhir/{rtype}", "/fhir/Observation?patient=pa", SITE_ADMIN),
        Endpoint("POST", "/fhir/Consent", "/fhir/Consent", SITE_ADMIN, json=_consent() | {"id": "cb"}),
        Endpoint("GET", "/fhir/Consent", "/fhir/Consent?patient=pa", SITE_ADMIN),
        Endpoint("PUT", "/fhir/Consent/{consent_id}", "/fhir/Consent/ca", SITE_ADMIN, json=_consent()),
        Endpoint("GET", "/fhir/Consent/{consent_id}", "/fhir/Consent/ca", SITE_ADMIN),
        Endpoint("GET", "/fhir/Consent/{consent_id}/_history", "/fhir/Consent/ca/_history", SITE_ADMIN),
        Endpoint(
            "GET", "/fhir/Consent/{consent_id}/_history/{version}", "/fhir/Consent/ca/_history/1", SITE_ADMIN
        ),
        # the federation's questions to the site: its aggregator token
        Endpoint(
            "POST",
            "/federation/feasibility",
            "/federation/feasibility",
            OPERATOR,
            json={"purpose": "HRESCH", "organization": "Organization/matrix", "spec": "flamby-heart-disease"},
        ),
        Endpoint("GET", "/federation/catalog", "/federation/catalog", OPERATOR),
        # the patient dashboard: a patient's own session only. Without a valid enrolment code
        # nobody signs in; another patient's consent or request looks unknown (404).
        Endpoint(
            "POST",
            "/patient/api/session",
            "/patient/api/session",
            frozenset(),
            json={"code": "x" * 32},
            bearer=False,
        ),
        Endpoint("GET", "/patient/api/session", "/patient/api/session", PATIENTS, bearer=False),
        Endpoint("GET", "/patient/api/overview", "/patient/api/overview", PATIENTS, bearer=False),
        Endpoint(
            "GET",
            "/patient/api/consents/{consent_id}",
            "/patient/api/consents/ca",
            PATIENT_A,
            denied_as=(401, 403, 404),
            bearer=False,
        ),
        Endpoint(
            "PUT",
            "/patient/api/research/{purpose}",
            "/patient/api/research/CLINTRCH",
            PATIENTS,
            json={"decision": "permit"},
            bearer=False,
        ),
        Endpoint("GET", "/patient/api/requests", "/patient/api/requests", PATIENTS, bearer=False),
        Endpoint(
            "POST",
            "/patient/api/requests/{request_id}",
            REQUEST_URL,
            PATIENT_A,
            json={"accept": True},
            denied_as=(401, 403, 404),
            bearer=False,
        ),
        Endpoint("GET", "/patient/api/activity", "/patient/api/activity", PATIENTS, bearer=False),
        Endpoint("GET", "/patient/api/export", "/patient/api/export", PATIENTS, bearer=False),
        Endpoint("GET", "/patient/api/events", "/patient/api/events", PATIENTS, stream=True, bearer=False),
        # last: erasure, then signing out, end what the rows above use
        Endpoint(
            "POST",
            "/patient/api/erasure",
            "/patient/api/erasure",
            PATIENTS,
            json={"confirm": True},
            bearer=False,
        ),
        Endpoint("DELETE", "/patient/api/session", "/patient/api/session", PATIENTS, bearer=False),
    ],
)


# -- the Secure Traffic Engine, started with an operator token --------------------------------


@contextmanager
def _traffic_engine(tmp: Path) -> Iterator[tuple[str, dict[str, dict[str, str]]]]:
    nvd = NvdClient()
    operator = secrets.token_urlsafe(32)
    site_tokens = {
        role: _bearer(secrets.token_urlsafe(32)) for role in ("patient-a", "patient-b", "site-admin")
    }
    app = create_pce_app(
        SecurePathEngine(*load_scenario("demo", nvd)),
        nvd,
        operator_tokens=OperatorTokens.of_tokens([operator]),
    )
    with LiveServer(app) as live:
        yield live.url, _outsiders() | site_tokens | {"operator": _bearer(operator)}


PATH = {
    "name": "m1",
    "source": "access-1",
    "destination": "access-4",
    "bandwidth_mbps": 1,
    "max_delay_us": 100000,
    "min_security": 0,
}
TRAFFIC_ENGINE = Service(
    "secure-traffic-engine",
    _traffic_engine,
    [
        Endpoint("GET", "/api/topology", "/api/topology", EVERYONE),
        Endpoint("PUT", "/api/topology", "/api/topology?format=json", OPERATOR, content=b"{}"),
        Endpoint("GET", "/api/nodes/{node_id}", "/api/nodes/router-1", EVERYONE),
        Endpoint(
            "PUT", "/api/nodes/{node_id}/state", "/api/nodes/router-1/state", OPERATOR, json={"up": True}
        ),
        Endpoint(
            "POST",
            "/api/nodes/{node_id}/vulnerabilities",
            "/api/nodes/router-1/vulnerabilities",
            OPERATOR,
            json={"cve_id": "CVE-2024-99999", "vector": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"},
        ),
        Endpoint(
            "PATCH",
            "/api/nodes/{node_id}/vulnerabilities/{cve_id}",
            "/api/nodes/router-1/vulnerabilities/CVE-2024-99999",
            OPERATOR,
            json={"remediation": 2.0},
        ),
        Endpoint(
            "DELETE",
            "/api/nodes/{node_id}/vulnerabilities/{cve_id}",
            "/api/nodes/router-1/vulnerabilities/CVE-2024-99999",
            OPERATOR,
        ),
        Endpoint(
            "PUT", "/api/links/{link_id}/state", "/api/links/no-such-link/state", OPERATOR, json={"up": True}
        ),
        Endpoint("GET", "/api/paths", "/api/paths", EVERYONE),
        Endpoint("POST", "/api/paths", "/api/paths", OPERATOR, json=PATH),
        Endpoint("POST", "/api/paths/compute", "/api/paths/compute", EVERYONE, json=PATH),
        Endpoint("POST", "/api/paths/reoptimize", "/api/paths/reoptimize", OPERATOR, json={}),
        Endpoint("GET", "/api/paths/{name}", "/api/paths/m1", EVERYONE),
        Endpoint("DELETE", "/api/paths/{name}", "/api/paths/m1", OPERATOR),
        Endpoint("GET", "/api/cves/{cve_id}", "/api/cves/CVE-2022-36786", EVERYONE),
        Endpoint("GET", "/api/events", "/api/events", EVERYONE, stream=True),
    ],
)


# -- the OPA-compatible endpoint ----------------------------------------------------------
# It answers as OPA does by default: no authentication. It is the node's own policy engine
# and listens on loopback only (``paroma consent serve-opa --host 127.0.0.1``), so every row
# is an allow; a token gate there would turn these rows into denies.


@contextmanager
def _opa(tmp: Path) -> Iterator[tuple[str, dict[str, dict[str, str]]]]:
    with LiveServer(create_opa_app()) as live:
        insiders = ("patient-a", "patient-b", "site-admin", "operator")
        yield live.url, _outsiders() | {role: _bearer(secrets.token_urlsafe(16)) for role in insiders}


POLICY = b"package matrix\n\nimport rego.v1\n\nallow if input.x == 1\n"
OPA = Service(
    "opa-compatible",
    _opa,
    [
        Endpoint("GET", "/health", "/health", EVERYONE),
        Endpoint("GET", "/v1/policies", "/v1/policies", EVERYONE),
        Endpoint("PUT", "/v1/policies/{policy_id}", "/v1/policies/matrix", EVERYONE, content=POLICY),
        Endpoint("GET", "/v1/policies/{policy_id}", "/v1/policies/matrix", EVERYONE),
        Endpoint("DELETE", "/v1/policies/{policy_id}", "/v1/policies/matrix", EVERYONE),
        Endpoint("GET", "/v1/data", "/v1/data", EVERYONE),
        Endpoint("POST", "/v1/data", "/v1/data", EVERYONE, json={"input": {}}),
        Endpoint("GET", "/v1/data/{path}", "/v1/data/matrix/allow", EVERYONE),
        Endpoint("POST", "/v1/data/{path}", "/v1/data/matrix/allow", EVERYONE, json={"input": {"x": 1}}),
        Endpoint("PUT", "/v1/data/{path}", "/v1/data/store/x", EVERYONE, json={"a": 1}),
        Endpoint("DELETE", "/v1/data/{path}", "/v1/data/store/x", EVERYONE),
        Endpoint("GET", "/v1/query", "/v1/query?q=1%20%3D%3D%201", EVERYONE),
        Endpoint("POST", "/v1/query", "/v1/query", EVERYONE, json={"query": "1 == 1"}),
    ],
)

# -- the job service: data scientists submit and follow their own jobs --------------------


@contextmanager
def _job_service(tmp: Path) -> Iterator[tuple[str, dict[str, dict[str, str]]]]:
    (tmp / "sites").mkdir()
    # not started: submitted jobs stay queued, so every row meets the same job
    service = JobService(tmp / "service", LocalRunner(tmp / "sites"))
    tokens = service.tokens
    headers = _outsiders() | {
        "patient-a": _bearer(secrets.token_urlsafe(32)),
        "patient-b": _bearer(secrets.token_urlsafe(32)),
        "scientist-x": _bearer(tokens.issue("data-scientist", "x")),
        "scientist-y": _bearer(tokens.issue("data-scientist", "y")),
        "site-admin": _bearer(tokens.issue("site-admin", "hospital")),
        "operator": _bearer(tokens.issue("operator", "federation")),
    }
    _JOB_ID[0] = service.submit("x", parse_job_spec(heart_job())).id
    with LiveServer(create_jobs_app(service)) as live:
        yield live.url, headers


_JOB_ID = [""]
SCIENTISTS = frozenset({"scientist-x", "scientist-y"})
# who follows the job of scientist X: X, and the roles that see every job
FOLLOWERS = frozenset({"scientist-x", "site-admin", "operator"})
# another's job looks unknown (404), as the rows of a patient's consent do
HIDDEN = (401, 403, 404)
JOB_SERVICE = Service(
    "job-service",
    _job_service,
    [
        Endpoint("GET", "/api/job-spec.schema.json", "/api/job-spec.schema.json", EVERYONE),
        Endpoint("GET", "/api/whoami", "/api/whoami", SCIENTISTS | {"site-admin", "operator"}),
        Endpoint("GET", "/api/jobs", "/api/jobs", SCIENTISTS | {"site-admin", "operator"}),
        # a site admin follows jobs but does not submit them
        Endpoint("POST", "/api/jobs", "/api/jobs", SCIENTISTS | OPERATOR, json=heart_job()),
        Endpoint("GET", "/api/jobs/{job_id}", "/api/jobs/{job}", FOLLOWERS, denied_as=HIDDEN),
        Endpoint("GET", "/api/jobs/{job_id}/logs", "/api/jobs/{job}/logs", FOLLOWERS, denied_as=HIDDEN),
        # the job is queued: allowed callers are answered 409 (no model yet), which is no deny
        Endpoint("GET", "/api/jobs/{job_id}/model", "/api/jobs/{job}/model", FOLLOWERS, denied_as=HIDDEN),
        Endpoint(
            "GET", "/api/jobs/{job_id}/model-card", "/api/jobs/{job}/model-card", FOLLOWERS, denied_as=HIDDEN
        ),
        # last: the operator's cancel ends the job; X's cancel after it is a 409, no deny
        Endpoint(
            "POST",
            "/api/jobs/{job_id}/cancel",
            "/api/jobs/{job}/cancel",
            frozenset({"scientist-x", "operator"}),
            denied_as=HIDDEN,
        ),
    ],
)

SERVICES = [CLINICAL_NODE, TRAFFIC_ENGINE, OPA, JOB_SERVICE]


def _call(http: httpx.Client, endpoint: Endpoint, headers: dict[str, str]) -> httpx.Response:
    url = endpoint.url.replace("{request}", _REQUEST_ID[0]).replace("{job}", _JOB_ID[0])
    if endpoint.stream:
        with http.stream(endpoint.method, url, headers=headers) as response:
            return response
    return http.request(endpoint.method, url, headers=headers, json=endpoint.json, content=endpoint.content)


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_every_endpoint_allows_and_denies_as_the_matrix_says(service: Service, tmp_path: Path) -> None:
    with service.start(tmp_path) as (url, headers), httpx.Client(base_url=url, timeout=20) as http:
        listed = {
            (method.upper(), path)
            for path, operations in http.get("/openapi.json").json()["paths"].items()
            for method in operations
        }
        rows = {(e.method, e.template) for e in service.endpoints}
        assert listed == rows, (
            f"operations without a row: {sorted(listed - rows)}; rows without one: {sorted(rows - listed)}"
        )
        assert set(headers) == set(ROLES)

        wrong: list[str] = []
        for endpoint in service.endpoints:
            # the deniers first, so that a wrongly allowed change would show on the allowed calls
            for role in sorted(ROLES, key=lambda r: r in endpoint.allowed):
                response = _call(http, endpoint, headers[role])
                denied = response.status_code in endpoint.denied_as
                expected = "allow" if role in endpoint.allowed else "deny"
                if (expected == "allow") == denied or response.status_code >= 500:
                    wrong.append(
                        f"{endpoint.method} {endpoint.url} as {role}: {response.status_code}, expected {expected}"
                    )
                if response.status_code == 401 and endpoint.bearer:
                    assert response.headers.get("www-authenticate", "").startswith("Bearer")
        assert not wrong, "\n".join(wrong)
