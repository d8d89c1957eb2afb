"""The Secure Traffic Engine's REST API and event stream on a real server: paths, vulnerabilities,
network state, topology upload, OpenAPI, problem details for bad input with the state unchanged."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import LiveServer

from interconnect.pce.engine import SecurePathEngine
from interconnect.pce.loaders import builtin_path
from interconnect.pce.nvd import NVD_NOTICE, NvdClient
from interconnect.pce.scenario import load_scenario
from interconnect.pce.service import create_app

NVD = NvdClient()
DEMO = load_scenario("demo", NVD)
P1 = {
    "name": "p1",
    "source": "access-1",
    "destination": "access-4",
    "bandwidth_mbps": 100,
    "max_delay_us": 20000,
    "min_security": 50,
}


@pytest.fixture
def server() -> Iterator[tuple[httpx.Client, SecurePathEngine]]:
    engine = SecurePathEngine(*DEMO)
    with LiveServer(create_app(engine, NVD)) as live, httpx.Client(base_url=live.url, timeout=10) as http:
        yield http, engine


@pytest.fixture(scope="module")
def shared_server() -> Iterator[httpx.Client]:
    """One server for the bad-input cases: each of them must leave the state as it found it."""
    engine = SecurePathEngine(*DEMO)
    with LiveServer(create_app(engine, NVD)) as live, httpx.Client(base_url=live.url, timeout=10) as http:
        http.post("/api/paths", json=P1 | {"name": "taken"}).raise_for_status()
        yield http


def state(http: httpx.Client) -> dict[str, Any]:
    topology = http.get("/api/topology").json()
    topology.pop("last_event")
    nodes = {n["id"]: http.get(f"/api/nodes/{n['id']}").json() for n in topology["nodes"]}
    return {"topology": topology, "nodes": nodes, "paths": http.get("/api/paths").json()}


def test_install_list_show_and_delete_a_path(server: tuple[httpx.Client, SecurePathEngine]) -> None:
    http, _ = server
    created = http.post("/api/paths", json=P1)
    assert created.status_code == 201
    route = created.json()["route"]
    assert route["nodes"] == ["access-1", "router-1", "router-5", "router-4", "access-4"]
    assert route["delay_us"] == 2300 and route["bottleneck_mbps"] == 1000
    assert route["min_security_index"] == pytest.approx(91.833333333)
    assert [p["name"] for p in http.get("/api/paths").json()] == ["p1"]
    links = {link["id"]: link for link in http.get("/api/topology").json()["links"]}
    assert links["router-1--router-5"]["reserved_mbps"] == 100
    assert links["router-1--router-5"]["available_mbps"] == 2400
    assert http.get("/api/paths/p1").json()["status"] == "active"
    assert http.delete("/api/paths/p1").status_code == 200
    assert http.get("/api/paths/p1").status_code == 404


def test_compute_without_installing_and_a_no_path_answer(
    server: tuple[httpx.Client, SecurePathEngine],
) -> None:
    http, _ = server
    found = http.post("/api/paths/compute", json=P1).json()
    assert found["found"] is True and found["route"]["nodes"][2] == "router-5"
    slow = http.post("/api/paths/compute", json=P1 | {"max_delay_us": 1000}).json()
    assert slow["found"] is False and slow["constraint"] == "delay"
    assert "2300.0 µs" in slow["reason"]
    assert http.get("/api/paths").json() == []
    refused = http.post("/api/paths", json=P1 | {"min_security": 99.9})
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["constraint"] == "security" and refused.json()["title"] == "No path"


def test_adding_a_critical_cve_by_id_moves_the_path(server: tuple[httpx.Client, SecurePathEngine]) -> None:
    http, _ = server
    http.post("/api/paths", json=P1)
    answer = http.post("/api/nodes/router-5/vulnerabilities", json={"cve_id": "CVE-2022-36786"})
    assert answer.status_code == 201
    body = answer.json()
    assert body["change"]["rerouted"][0]["route"]["nodes"][2:4] == ["router-2", "router-3"]
    cves = {v["cve_id"]: v for v in body["node"]["vulnerabilities"]}
    assert cves["CVE-2022-36786"]["base_score"] == 9.9 and cves["CVE-2022-36786"]["source"] == "NVD"
    assert body["node"]["nvd_notice"] == NVD_NOTICE
    assert http.get("/api/paths/p1").json()["version"] == 2
    # Remediation edited from the panel: SI of router-5 back up, the path stays (no flapping).
    patched = http.patch("/api/nodes/router-5/vulnerabilities/CVE-2022-36786", json={"remediation": 50})
    assert patched.status_code == 200
    assert patched.json()["node"]["security_index"] > 90
    assert http.get("/api/paths/p1").json()["version"] == 2
    assert http.delete("/api/nodes/router-5/vulnerabilities/CVE-2022-36786").status_code == 200


def test_manual_cve_with_vector_and_link_and_node_state(
    server: tuple[httpx.Client, SecurePathEngine],
) -> None:
    http, _ = server
    http.post("/api/paths", json=P1)
    manual = {
        "cve_id": "CVE-2031-0001",
        "vector": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N",
        "base_score": 7.5,
    }
    assert (
        http.post("/api/nodes/router-2/vulnerabilities", json=manual | {"remediation": 2}).status_code == 201
    )
    down = http.put("/api/links/router-1--router-5/state", json={"up": False}).json()
    assert down["rerouted"][0]["name"] == "p1"
    node_down = http.put("/api/nodes/router-4/state", json={"up": False}).json()
    assert node_down["unroutable"][0]["constraint"] == "connectivity"
    assert http.get("/api/paths/p1").json()["status"] == "unroutable"
    assert http.put("/api/nodes/router-4/state", json={"up": True}).json()["restored"][0]["name"] == "p1"


def test_cve_lookup_shows_the_nvd_notice(server: tuple[httpx.Client, SecurePathEngine]) -> None:
    http, _ = server
    found = http.get("/api/cves/CVE-2023-0001").json()
    assert found["base_score"] == 6.7 and found["nvd_notice"] == NVD_NOTICE
    assert http.get("/api/cves/CVE-2099-0001").status_code == 404


BAD: list[tuple[str, str, Any, int, str]] = [
    ("POST", "/api/paths", P1 | {"source": "router-9"}, 404, "unknown node 'router-9'"),
    ("POST", "/api/paths", P1 | {"bandwidth_mbps": -5}, 422, "bandwidth_mbps: -5 is out of range"),
    ("POST", "/api/paths", P1 | {"bandwidth_mbps": 1e15}, 422, "bandwidth_mbps: 1e+15 is out of range"),
    ("POST", "/api/paths", P1 | {"bandwidth_mbps": "lots"}, 422, "bandwidth_mbps"),
    ("POST", "/api/paths", P1 | {"max_delay_us": 0}, 422, "max_delay_us: 0 is out of range"),
    ("POST", "/api/paths", P1 | {"min_security": 150}, 422, "min_security: 150 is out of range"),
    ("POST", "/api/paths", P1 | {"destination": "access-1"}, 422, "same node"),
    ("POST", "/api/paths", {"name": "x"}, 422, "source"),
    ("POST", "/api/paths", P1 | {"name": "taken"}, 409, "already installed"),
    (
        "POST",
        "/api/nodes/router-2/vulnerabilities",
        {"cve_id": "CVE-2099-0001"},
        422,
        "not in the local NVD data",
    ),
    (
        "POST",
        "/api/nodes/router-2/vulnerabilities",
        {"cve_id": "CVE-2099-0001", "vector": "CVSS:3.1/AV:N"},
        422,
        "Missing mandatory",
    ),
    (
        "POST",
        "/api/nodes/router-2/vulnerabilities",
        {
            "cve_id": "CVE-2099-0001",
            "vector": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N",
            "base_score": 9.0,
        },
        422,
        "disagrees",
    ),
    (
        "POST",
        "/api/nodes/router-2/vulnerabilities",
        {"cve_id": "CVE-2022-36786", "base_score": 5.0},
        422,
        "disagrees with NVD",
    ),
    ("POST", "/api/nodes/router-2/vulnerabilities", {"cve_id": "not-a-cve"}, 422, "is not a CVE id"),
    (
        "POST",
        "/api/nodes/router-2/vulnerabilities",
        {"cve_id": "CVE-2022-36786", "remediation": 0.2},
        422,
        "remediation level",
    ),
    ("POST", "/api/nodes/router-9/vulnerabilities", {"cve_id": "CVE-2022-36786"}, 404, "router-9"),
    ("POST", "/api/nodes/router-5/vulnerabilities", {"cve_id": "CVE-2022-44204"}, 409, "already carries"),
    (
        "PATCH",
        "/api/nodes/router-5/vulnerabilities/CVE-2022-44204",
        {"remediation": 0},
        422,
        "remediation level",
    ),
    ("PATCH", "/api/nodes/router-5/vulnerabilities/CVE-2022-44204", {}, 422, "give a remediation level"),
    (
        "PATCH",
        "/api/nodes/router-2/vulnerabilities/CVE-2022-44204",
        {"remediation": 2},
        404,
        "does not carry",
    ),
    ("PUT", "/api/links/nope/state", {"up": False}, 404, "unknown link 'nope'"),
    ("PUT", "/api/nodes/router-1/state", {"up": "maybe"}, 422, "up"),
    ("DELETE", "/api/paths/nope", None, 404, "'nope'"),
]


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "detail"), BAD, ids=[f"{b[0]} {b[1]} {b[4]}" for b in BAD]
)
def test_bad_input_gets_a_problem_and_changes_nothing(
    shared_server: httpx.Client, method: str, url: str, body: Any, status: int, detail: str
) -> None:
    http = shared_server
    before = state(http)
    answer = http.request(method, url, json=body)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert detail in answer.json()["detail"]
    assert state(http) == before


def test_topology_upload(server: tuple[httpx.Client, SecurePathEngine]) -> None:
    http, _ = server
    http.post("/api/paths", json=P1)
    before = state(http)
    malformed = http.put("/api/topology?format=graphml", content=b"<graphml><graph><node id='a'/>")
    assert malformed.status_code == 422 and "not valid GraphML" in malformed.json()["detail"]
    in_use = http.put("/api/topology?format=graphml", content=builtin_path("geant").read_bytes())
    assert in_use.status_code == 409
    bad_yaml = http.put(
        "/api/topology?format=yaml&force=true", content=b"nodes: [{id: a}]\nlinks: [{a: a, b: z}]"
    )
    assert bad_yaml.status_code == 422 and "unknown node 'z'" in bad_yaml.json()["detail"]
    assert state(http) == before
    geant = http.put("/api/topology?format=graphml&force=true", content=builtin_path("geant").read_bytes())
    assert geant.status_code == 200 and len(geant.json()["nodes"]) == 40
    assert http.get("/api/paths").json() == []


def test_openapi_describes_the_api(server: tuple[httpx.Client, SecurePathEngine]) -> None:
    http, _ = server
    spec = http.get("/openapi.json").json()
    for path in ("/api/paths", "/api/paths/compute", "/api/nodes/{node_id}/vulnerabilities", "/api/events"):
        assert path in spec["paths"]
    assert "PathRequestBody" in spec["components"]["schemas"]
    assert NVD_NOTICE in spec["info"]["description"]


def test_gui_is_served_without_anything_from_outside(server: tuple[httpx.Client, SecurePathEngine]) -> None:
    http, _ = server
    page = http.get("/").text
    assert "Compute Secure Path" in page and "Minimum Security Threshold" in page
    for asset in ("/static/app.js", "/static/style.css"):
        text = http.get(asset).text
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
    assert "https://" not in page and "http://" not in page


def read_events(
    url: str, count: int, out: list[dict[str, Any]], ready: threading.Event, headers: dict[str, str]
) -> None:
    with httpx.Client(timeout=10) as http, http.stream("GET", url, headers=headers) as stream:
        ready.set()
        kind = ""
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                out.append({"kind": kind, **json.loads(line[6:])})
                if len(out) >= count:
                    return


def test_event_stream_publishes_every_change(server: tuple[httpx.Client, SecurePathEngine]) -> None:
    http, engine = server
    url = str(http.base_url) + "/api/events"
    seen: list[dict[str, Any]] = []
    ready = threading.Event()
    reader = threading.Thread(target=read_events, args=(url, 4, seen, ready, {}), daemon=True)
    reader.start()
    assert ready.wait(10)
    # The subscription exists once the stream's first line arrived; wait for it on the engine.
    for _ in range(100):
        if engine._subscribers:
            break
        threading.Event().wait(0.02)
    http.post("/api/paths", json=P1)
    http.post("/api/nodes/router-5/vulnerabilities", json={"cve_id": "CVE-2022-36786"})
    reader.join(10)
    assert [e["kind"] for e in seen] == [
        "path-installed",
        "vulnerability-added",
        "security-index",
        "path-rerouted",
    ]
    assert seen[3]["data"]["path"]["route"]["nodes"][2] == "router-2"
    assert [e["seq"] for e in seen] == sorted(e["seq"] for e in seen)
    # A client coming back with Last-Event-ID gets what it missed.
    missed: list[dict[str, Any]] = []
    again = threading.Event()
    read_events(url, 2, missed, again, {"Last-Event-ID": str(seen[1]["seq"])})
    assert [e["kind"] for e in missed] == ["security-index", "path-rerouted"]
