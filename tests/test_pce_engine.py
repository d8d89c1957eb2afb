"""The stateful engine on the demo network: reservations, re-routing of exactly the affected
paths, unroutable paths coming back, events, and refused changes leaving no trace."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from interconnect.pce.cve import Vulnerability, vulnerability_from_vector
from interconnect.pce.engine import Event, NoPathError, PathStatus, SecurePathEngine
from interconnect.pce.errors import (
    ExposureExistsError,
    InvalidRequestError,
    PathExistsError,
    PceError,
    TopologyInUseError,
    UnknownExposureError,
    UnknownLinkError,
    UnknownNodeError,
    UnknownPathError,
    VulnerabilityError,
)
from interconnect.pce.loaders import load_topology
from interconnect.pce.nvd import NvdClient
from interconnect.pce.routing import PathRequest
from interconnect.pce.scenario import load_scenario

NVD = NvdClient()
DEMO = load_scenario("demo", NVD)
DSL_224 = NVD.lookup("CVE-2022-36786")  # 9.9, a D-Link router command injection

# Through router-5 (the most secure route at first): access-1 router-1 router-5 router-4 access-4.
P1 = PathRequest("p1", "access-1", "access-4", 100, 20_000, 50)
# Least delay, threshold 0: access-2 router-2 router-3 router-4 access-4.
P2 = PathRequest("p2", "access-2", "access-4", 100, 20_000, 0)


@pytest.fixture
def engine() -> SecurePathEngine:
    return SecurePathEngine(*DEMO)


def reserved(engine: SecurePathEngine, link: str) -> float:
    return engine.link_status(link).reserved_mbps


def snapshot(engine: SecurePathEngine) -> dict[str, Any]:
    return {
        "si": engine.security_indices(),
        "exposures": sorted(
            (e.node, e.vulnerability.cve_id, e.remediation, e.alpha) for e in engine.exposures()
        ),
        "paths": [p.as_dict() for p in engine.paths()],
        "links": [(link.id, link.reserved_mbps, link.up) for link in engine.links()],
        "nodes": [(n.id, n.up) for n in engine.nodes()],
        "events": engine.last_event_seq,
    }


def test_install_reserves_and_remove_frees(engine: SecurePathEngine) -> None:
    path = engine.install(P1)
    assert path.route is not None
    assert path.route.nodes == ("access-1", "router-1", "router-5", "router-4", "access-4")
    for link in path.route.links:
        assert reserved(engine, link) == 100
    assert reserved(engine, "router-1--router-2") == 0
    engine.remove("p1")
    assert all(link.reserved_mbps == 0 for link in engine.links())
    with pytest.raises(UnknownPathError, match="'p1'"):
        engine.path("p1")


def test_reservations_make_later_requests_fail_on_bandwidth(engine: SecurePathEngine) -> None:
    engine.install(PathRequest("big", "hospital-cleveland", "aggregator", 600, 20_000, 50))
    with pytest.raises(NoPathError) as refused:
        engine.install(PathRequest("second", "hospital-cleveland", "aggregator", 600, 20_000, 50))
    assert refused.value.no_path.constraint == "bandwidth"
    assert "widest offers 400 Mbit/s" in str(refused.value)
    assert [p.name for p in engine.paths()] == ["big"]


def test_a_new_critical_cve_moves_only_the_paths_through_that_node(engine: SecurePathEngine) -> None:
    p1, p2 = engine.install(P1), engine.install(P2)
    assert p1.route and "router-5" in p1.route.nodes
    assert p2.route and "router-5" not in p2.route.nodes
    events: list[Event] = []
    engine.subscribe(events.append)

    report = engine.add_vulnerability("router-5", DSL_224)

    moved = engine.path("p1")
    assert moved.route is not None and "router-5" not in moved.route.nodes
    assert moved.route.nodes == ("access-1", "router-1", "router-2", "router-3", "router-4", "access-4")
    assert moved.version == 2
    assert [p.name for p in report.rerouted] == ["p1"]
    assert engine.path("p2") == p2  # not affected: router-3's SI went up, not down
    # The reservation followed the path.
    assert reserved(engine, "router-1--router-5") == 0
    assert reserved(engine, "router-2--router-3") == 200
    assert [e.kind for e in events] == ["vulnerability-added", "security-index", "path-rerouted"]
    assert tuple(events[2].data["previous"]["nodes"]) == p1.route.nodes
    assert report.security_index_changes["router-5"][1] < report.security_index_changes["router-5"][0]


def test_security_index_drop_below_threshold_with_no_alternative_makes_the_path_unroutable(
    engine: SecurePathEngine,
) -> None:
    engine.install(PathRequest("h1", "hospital-cleveland", "aggregator", 100, 20_000, 80))
    # router-1 is the only way out of access-1; the CVE takes it to SI 70.8 (0.99 of 3.39).
    report = engine.add_vulnerability("router-1", DSL_224)
    path = engine.path("h1")
    assert path.status is PathStatus.UNROUTABLE and path.route is None
    assert path.constraint == "security"
    assert [p.name for p in report.unroutable] == ["h1"]
    assert all(link.reserved_mbps == 0 for link in engine.links())
    # Hardening router-1 brings it back.
    restored = engine.set_remediation("router-1", "CVE-2022-36786", remediation=20)
    assert [p.name for p in restored.restored] == ["h1"]
    back = engine.path("h1")
    assert back.status is PathStatus.ACTIVE and back.route is not None and back.version == 3


def test_node_and_link_down_and_up(engine: SecurePathEngine) -> None:
    engine.install(P1)
    engine.set_link_state("router-1--router-5", False)
    route = engine.path("p1").route
    assert route is not None and "router-1--router-5" not in route.links
    engine.set_node_state("router-4", False)
    path = engine.path("p1")
    assert path.status is PathStatus.UNROUTABLE and path.constraint == "connectivity"
    engine.set_node_state("router-4", True)
    assert engine.path("p1").status is PathStatus.ACTIVE
    # Setting the state it already has is no change and no event.
    seq = engine.last_event_seq
    engine.set_node_state("router-4", True)
    assert engine.last_event_seq == seq


def test_lower_remediation_is_a_change_that_moves_paths(engine: SecurePathEngine) -> None:
    engine.install(P1)
    report = engine.set_remediation("router-5", "CVE-2022-44204", remediation=1)
    assert report.security_index_changes["router-5"][1] < report.security_index_changes["router-5"][0]
    route = engine.path("p1").route
    assert route is not None and "router-5" not in route.nodes


def test_improvements_do_not_move_paths_until_reoptimized(engine: SecurePathEngine) -> None:
    engine.install(P1)
    engine.add_vulnerability("router-5", DSL_224)
    moved = engine.path("p1")
    assert moved.route and "router-5" not in moved.route.nodes
    # Hardening router-5 raises its SI only (remediation is local): p1 is not affected.
    report = engine.set_remediation("router-5", "CVE-2022-36786", remediation=100)
    assert list(report.security_index_changes) == ["router-5"]
    assert engine.path("p1") == moved
    report = engine.reoptimize()
    assert [p.name for p in report.rerouted] == ["p1"]
    back = engine.path("p1").route
    assert back is not None and "router-5" in back.nodes


def test_a_removed_vulnerability_lowers_others_and_moves_the_paths_through_them(
    engine: SecurePathEngine,
) -> None:
    engine.install(P1)
    engine.add_vulnerability("router-5", DSL_224)
    during = engine.path("p1").route
    assert during is not None and "router-3" in during.nodes
    # Without the CVE router-3 is a larger share of a smaller total: its SI drops, p1 is
    # recomputed, and router-5 is the most secure way again.
    engine.remove_vulnerability("router-5", "CVE-2022-36786")
    route = engine.path("p1").route
    assert route is not None and "router-5" in route.nodes


def test_removing_a_vulnerability_elsewhere_lowers_other_indices(engine: SecurePathEngine) -> None:
    before = engine.security_indices()
    report = engine.remove_vulnerability("router-6", "CVE-2023-0001")
    after = engine.security_indices()
    assert after["router-6"] == 100.0
    assert after["router-3"] < before["router-3"] and after["router-5"] < before["router-5"]
    assert set(report.security_index_changes) == {"router-3", "router-5", "router-6"}


def test_subscribers_get_events_in_order_and_can_leave(engine: SecurePathEngine) -> None:
    seen: list[int] = []
    subscription = engine.subscribe(lambda event: seen.append(event.seq))

    def broken(event: Event) -> None:
        raise RuntimeError("a broken subscriber")

    engine.subscribe(broken)
    engine.install(P1)
    engine.set_link_state("access-2--router-2", False)
    subscription.close()
    engine.set_link_state("access-2--router-2", True)
    assert seen == sorted(seen) and len(seen) == 2
    assert [e.kind for e in engine.events_since(seen[0] - 1)] == [
        "path-installed",
        "link-state",
        "link-state",
    ]


CHANGES: list[tuple[str, Callable[[SecurePathEngine], object], type[PceError], str]] = [
    ("unknown node", lambda e: e.add_vulnerability("router-9", DSL_224), UnknownNodeError, "'router-9'"),
    (
        "duplicate CVE",
        lambda e: e.add_vulnerability("router-5", NVD.lookup("CVE-2022-44204")),
        ExposureExistsError,
        "already carries",
    ),
    (
        "RE below 1",
        lambda e: e.add_vulnerability("router-2", DSL_224, remediation=0.5),
        InvalidRequestError,
        "remediation level",
    ),
    ("alpha 0", lambda e: e.add_vulnerability("router-2", DSL_224, alpha=0), InvalidRequestError, "alpha"),
    (
        "CVE not on node",
        lambda e: e.set_remediation("router-2", "CVE-2022-44204", 2),
        UnknownExposureError,
        "does not carry",
    ),
    (
        "bad CVE id",
        lambda e: e.remove_vulnerability("router-5", "CVE-nope"),
        VulnerabilityError,
        "is not a CVE id",
    ),
    (
        "RE NaN",
        lambda e: e.set_remediation("router-5", "CVE-2022-44204", float("nan")),
        InvalidRequestError,
        "remediation",
    ),
    ("unknown link", lambda e: e.set_link_state("router-1--router-9", False), UnknownLinkError, "router-9"),
    ("unknown node state", lambda e: e.set_node_state("nowhere", False), UnknownNodeError, "'nowhere'"),
    (
        "unknown source",
        lambda e: e.install(PathRequest("x", "nowhere", "access-4", 1, 100, 0)),
        UnknownNodeError,
        "'nowhere'",
    ),
    (
        "existing name",
        lambda e: e.install(PathRequest("p1", "access-2", "access-3", 1, 20_000, 0)),
        PathExistsError,
        "'p1'",
    ),
    (
        "no path",
        lambda e: e.install(PathRequest("x", "access-1", "access-4", 1, 10, 0)),
        NoPathError,
        "max delay",
    ),
    ("unknown path", lambda e: e.remove("nope"), UnknownPathError, "'nope'"),
    ("topology in use", lambda e: e.replace_topology(load_topology("geant")), TopologyInUseError, "1 path"),
]


@pytest.mark.parametrize(("label", "change", "error", "message"), CHANGES, ids=[c[0] for c in CHANGES])
def test_refused_changes_leave_the_engine_unchanged(
    engine: SecurePathEngine,
    label: str,
    change: Callable[[SecurePathEngine], object],
    error: type[PceError],
    message: str,
) -> None:
    engine.install(P1)
    before = snapshot(engine)
    with pytest.raises(error, match=message):
        change(engine)
    assert snapshot(engine) == before


def test_replace_topology_with_force_removes_the_paths(engine: SecurePathEngine) -> None:
    engine.install(P1)
    engine.replace_topology(load_topology("geant"), force=True)
    assert engine.paths() == [] and engine.topology.name == "Geant2012"
    assert engine.events_since(0)[-1].kind == "topology"


def test_a_manual_cve_with_a_vector_counts_like_an_nvd_one(engine: SecurePathEngine) -> None:
    manual: Vulnerability = vulnerability_from_vector(
        "CVE-2031-0001", "CVSS:3.1/AV:N/AC:L/PR:L/UI:N/S:C/C:H/I:H/A:H", 9.9
    )
    a, b = SecurePathEngine(*DEMO), SecurePathEngine(*DEMO)
    a.add_vulnerability("router-5", manual)
    b.add_vulnerability("router-5", DSL_224)
    assert a.security_indices() == b.security_indices()
