"""The security index against values computed by hand from the seed's formula.

Network used below (CVSS^norm = score / 10):
  node A: CVE-1 9.8 (RE 1), CVE-2 6.5 (RE 2)
  node B: CVE-3 7.5 (RE 3)
  node C: nothing
  D = 0.98 + 0.65 + 0.75 = 2.38
  P_A = (0.98/1 + 0.65/2) / 2.38 = 1.305 / 2.38   SI_A = 107.5 / 2.38 = 45.168067227
  P_B = (0.75/3) / 2.38         = 0.25 / 2.38    SI_B = 213.0 / 2.38 = 89.495798319
  SI_C = 100
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interconnect.pce.cve import Vulnerability, vulnerability_from_vector
from interconnect.pce.errors import InvalidRequestError
from interconnect.pce.security import Exposure, attack_type_shares, security_indices

CRITICAL_98 = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"
MEDIUM_65 = "CVSS:3.1/AV:N/AC:L/PR:L/UI:N/S:U/C:H/I:N/A:N"
HIGH_75 = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N"

CVE1 = vulnerability_from_vector("CVE-2024-0001", CRITICAL_98, 9.8)
CVE2 = vulnerability_from_vector("CVE-2024-0002", MEDIUM_65, 6.5)
CVE3 = vulnerability_from_vector("CVE-2024-0003", HIGH_75, 7.5)
NODES = ["A", "B", "C"]


def network(re_b: float = 3.0, alpha_b: float = 1.0) -> list[Exposure]:
    return [
        Exposure("A", CVE1, 1.0),
        Exposure("A", CVE2, 2.0),
        Exposure("B", CVE3, re_b, alpha_b),
    ]


def test_hand_computed_indices() -> None:
    si = security_indices(network(), NODES)
    assert si["A"] == pytest.approx(107.5 / 2.38, abs=1e-9)
    assert si["A"] == pytest.approx(45.168067227, abs=1e-9)
    assert si["B"] == pytest.approx(89.495798319, abs=1e-9)
    assert si["C"] == 100.0


def test_alpha_weighs_numerator_and_denominator() -> None:
    # alpha_B = 2: D = 0.98 + 0.65 + 1.5 = 3.13; P_B = (1.5 / 3) / 3.13; P_A = 1.305 / 3.13
    si = security_indices(network(alpha_b=2.0), NODES)
    assert si["B"] == pytest.approx((1 - 0.5 / 3.13) * 100, abs=1e-9)
    assert si["A"] == pytest.approx((1 - 1.305 / 3.13) * 100, abs=1e-9)


def test_remediation_is_local() -> None:
    before = security_indices(network(re_b=3.0), NODES)
    after = security_indices(network(re_b=6.0), NODES)
    assert after["A"] == before["A"]
    assert after["B"] == pytest.approx((1 - 0.125 / 2.38) * 100, abs=1e-9)
    assert after["B"] > before["B"]


def test_a_new_vulnerability_is_global() -> None:
    before = security_indices(network(), NODES)
    after = security_indices([*network(), Exposure("C", CVE1)], NODES)
    # D grows to 3.36: C gets 0.98 / 3.36 of the exposure; A and B become smaller shares.
    assert after["C"] == pytest.approx((1 - 0.98 / 3.36) * 100, abs=1e-9)
    assert after["A"] > before["A"] and after["B"] > before["B"]


def test_no_vulnerability_anywhere_means_index_100() -> None:
    assert security_indices([], NODES) == {"A": 100.0, "B": 100.0, "C": 100.0}


def test_single_unremediated_vulnerability_means_index_0() -> None:
    assert security_indices([Exposure("A", CVE2)], NODES)["A"] == 0.0


def test_zero_score_vulnerabilities_weigh_nothing() -> None:
    zero = vulnerability_from_vector("CVE-2024-0009", "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N", 0.0)
    assert security_indices([Exposure("A", zero)], NODES)["A"] == 100.0


def test_seed_attack_type_shares() -> None:
    # P_i on node A: (0.98/1) / 1.305 and (0.65/2) / 1.305.
    shares = attack_type_shares(network()[:2])
    assert shares["CVE-2024-0001"] == pytest.approx(0.98 / 1.305)
    assert shares["CVE-2024-0002"] == pytest.approx(0.325 / 1.305)
    assert math.fsum(shares.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("remediation", [0.5, 0, -1, math.nan, math.inf, True])
def test_remediation_below_one_is_refused(remediation: float) -> None:
    with pytest.raises(InvalidRequestError, match="remediation level"):
        Exposure("A", CVE1, remediation)


@pytest.mark.parametrize("alpha", [0, -1, math.nan, 1e9])
def test_bad_alpha_is_refused(alpha: float) -> None:
    with pytest.raises(InvalidRequestError, match="alpha"):
        Exposure("A", CVE1, 1.0, alpha)


scores = st.sampled_from([CVE1, CVE2, CVE3])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(NODES), scores, st.floats(min_value=1, max_value=100)),
        max_size=12,
        unique_by=lambda t: (t[0], t[1].cve_id),
    )
)
def test_indices_are_probabilities_that_add_up(entries: list[tuple[str, Vulnerability, float]]) -> None:
    exposures = [Exposure(node, v, re) for node, v, re in entries]
    si = security_indices(exposures, NODES)
    assert all(0.0 <= value <= 100.0 for value in si.values())
    # The P_j add up to at most 1, and to exactly 1 when nothing is remediated.
    total = sum(100.0 - value for value in si.values()) / 100.0
    assert total <= 1.0 + 1e-8
    if exposures and all(e.remediation == 1.0 for e in exposures):
        assert total == pytest.approx(1.0, abs=1e-8)
