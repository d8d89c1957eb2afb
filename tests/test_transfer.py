"""The simulation's transfer estimates: the path engine's decisions as arithmetic, recorded per
round and site, and following a path that a vulnerability moves mid-job."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.federation import Admission, RoundResult
from deploy.inprocess import run_inprocess_job
from deploy.transfer import TransferRecorder, model_bytes
from interconnect.pce import NvdClient, SecurePathEngine, load_scenario, parse_topology
from interconnect.transfer import TransferPlanner, estimate_transfer_s
from paroma.demo import DEMO_SITE_NODES, demo_job, demo_transfer_planner
from paroma.jobspec import parse_job_spec

NVD = NvdClient()
# Two ways out for both sites: a fast one through router-a, a slow one through router-b.
TWO_WAYS = b"""
name: two ways
nodes:
  - {id: hospital-cleveland, kind: site}
  - {id: hospital-hungary, kind: site}
  - {id: router-a}
  - {id: router-b}
  - {id: aggregator, kind: aggregator}
links:
  - {a: hospital-cleveland, b: router-a, capacity_mbps: 1000, delay_us: 100}
  - {a: hospital-cleveland, b: router-b, capacity_mbps: 1000, delay_us: 100}
  - {a: hospital-hungary, b: router-a, capacity_mbps: 1000, delay_us: 100}
  - {a: hospital-hungary, b: router-b, capacity_mbps: 1000, delay_us: 100}
  - {a: router-a, b: aggregator, capacity_mbps: 1000, delay_us: 400}
  - {a: router-b, b: aggregator, capacity_mbps: 200, delay_us: 20000}
"""


def two_ways() -> TransferPlanner:
    engine = SecurePathEngine(parse_topology(TWO_WAYS, "two-ways.yaml"))
    return TransferPlanner(engine, {"cleveland": "hospital-cleveland", "hungarian": "hospital-hungary"})


def test_estimate_is_serialisation_at_the_bottleneck_plus_delay() -> None:
    assert estimate_transfer_s(2_400, 1_000, 10_000_000) == pytest.approx(0.08 + 0.0024)
    assert estimate_transfer_s(500, 8, 1_000_000) == pytest.approx(1.0 + 0.0005)
    assert estimate_transfer_s(0, 100, 0) == 0
    with pytest.raises(ValueError, match="bottleneck_mbps"):
        estimate_transfer_s(10, 0, 1)


def test_planner_uses_the_installed_paths_and_follows_them() -> None:
    planner = demo_transfer_planner()
    n = 10_000_000
    cleveland = planner.estimate("cleveland", n)
    assert cleveland.nodes == (
        "hospital-cleveland", "access-1", "router-1", "router-5", "router-4", "access-4", "aggregator",
    )  # fmt: skip
    assert (cleveland.delay_us, cleveland.bottleneck_mbps) == (2_400, 1_000)
    assert cleveland.transfer_s == pytest.approx(2 * (n * 8 / 1e9 + 0.0024))
    va = planner.estimate("va", n)
    assert va.nodes == ("hospital-va", "access-4", "aggregator") and va.transfer_s < cleveland.transfer_s  # type: ignore[operator]
    planner.engine.add_vulnerability("router-5", NVD.lookup("CVE-2022-36787"))
    assert "router-5" not in planner.estimate("cleveland", n).nodes
    unknown = planner.estimate("lyon", n)
    assert unknown.transfer_s is None and "lyon" in unknown.reason


def test_a_moved_path_changes_the_estimate() -> None:
    planner = two_ways()
    n = 1_000_000
    fast = planner.estimate("cleveland", n)
    assert fast.nodes == ("hospital-cleveland", "router-a", "aggregator")
    assert fast.transfer_s == pytest.approx(2 * (n * 8 / 1e9 + 500e-6))
    planner.engine.add_vulnerability("router-a", NVD.lookup("CVE-2022-36787"))
    slow = planner.estimate("cleveland", n)
    assert slow.nodes == ("hospital-cleveland", "router-b", "aggregator") and slow.bottleneck_mbps == 200
    assert slow.transfer_s == pytest.approx(2 * (n * 8 / 2e8 + 20_100e-6))


def test_unroutable_site_has_no_estimate() -> None:
    engine = SecurePathEngine(*load_scenario("demo", NVD))
    planner = TransferPlanner(engine, {"switzerland": "hospital-switzerland"})
    engine.set_node_state("router-5", False)  # access-3's only router
    estimate = planner.estimate("switzerland", 100)
    assert estimate.transfer_s is None and estimate.nodes == () and "down" in estimate.reason


class _VulnerabilityAfterRound:
    """The scenario's event: a critical CVE lands on router-a after round 1."""

    def __init__(self, engine: SecurePathEngine) -> None:
        self.engine = engine

    def admissions(self, admissions: list[Admission]) -> None:
        pass

    def round_started(self, server_round: int, total: int) -> None:
        pass

    def round_finished(self, result: RoundResult) -> None:
        if result.server_round == 1:
            self.engine.add_vulnerability("router-a", NVD.lookup("CVE-2022-36787"))


@pytest.mark.slow
def test_a_federation_records_each_round_over_each_sites_path(uci_sites: Path) -> None:
    doc = demo_job(rounds=2).to_dict()
    doc["min_sites"], doc["training"]["local_steps"] = 1, 5
    job = parse_job_spec(doc)
    planner = two_ways()
    n_bytes = model_bytes(job)
    assert n_bytes == (13 + 1) * 4  # logistic regression on 13 features, float32
    recorder = TransferRecorder(planner, n_bytes, _VulnerabilityAfterRound(planner.engine))
    result = run_inprocess_job(job, [uci_sites / "cleveland"], observer=recorder)
    assert result.status == "completed", result.reason
    assert [r["round"] for r in planner.rounds] == [1, 2]
    first, second = (r["sites"] for r in planner.rounds)
    assert set(first) == {"cleveland"}
    for site_id, estimate in first.items():
        assert estimate["path"][0] == DEMO_SITE_NODES[site_id] and estimate["n_bytes"] == n_bytes
        assert estimate["transfer_s"] == pytest.approx(
            2 * estimate_transfer_s(estimate["delay_us"], estimate["bottleneck_mbps"], n_bytes)
        )
    # Round 1 went over router-a; the CVE after it moved the path for round 2.
    assert first["cleveland"]["path"][1] == "router-a" and second["cleveland"]["path"][1] == "router-b"
    assert second["cleveland"]["transfer_s"] > 10 * first["cleveland"]["transfer_s"]
    assert planner.as_dict()["rounds"] == planner.rounds
