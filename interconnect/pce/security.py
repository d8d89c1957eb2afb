"""The security index of a node, as the seed defines it (PAROMA-MED slides, "Secure Networking").

For vulnerability i on node j, with CVSS^norm_i = CVSS_i / 10, remediation level RE_ij >= 1
(1 = nothing done) and an optional weight alpha_ij (default 1):

    P_ij  = (alpha_ij * CVSS^norm_i / RE_ij) / D        D = sum over all (i, j) of alpha_ij * CVSS^norm_i
    P_j   = sum_i P_ij                                   probability that node j falls victim of an attack
    SI_j  = (1 - P_j) * 100                              a node without vulnerabilities has SI 100

Interpretation of the denominator D: the sum runs over every vulnerability of every node of the
network, unremediated (the seed's double sum over i = 1..m, j = 1..n, with RE only in the
numerator). So:

* P_j is node j's share of the network's total exposure, reduced by its own hardening. Every
  P_j lies in [0, 1] and the P_j add up to at most 1 (exactly 1 when nothing is remediated), so
  they read as probabilities, as the seed says.
* Remediation is local: raising RE_ij lowers P_j and leaves every other node's SI unchanged.
* A new vulnerability is global: it grows D, so the node that gets it loses SI while every other
  vulnerable node gains a little (it is now a smaller share of the exposure).
* Scores of different magnitudes count: a node with one low CVE keeps a high SI next to nodes
  with critical ones. A per-node denominator (D_j = sum_i alpha_ij * CVSS^norm_i) would instead
  make P_j a weighted mean of 1/RE_ij, giving the same SI 0 to a node with one unremediated low
  CVE as to one with ten critical ones, which is why it is not the reading taken here.

The seed's second form, P_i = (alpha_i * CVSS^norm_i / RE_i) / sum_i (alpha_i * CVSS^norm_i / RE_i)
over one node's vulnerabilities, is the probability that an attack on that node was of type i;
``attack_type_shares`` computes it for the vulnerability panel.

SI values are rounded to 9 decimals so that a threshold such as 75 compares as the hand
computation does, not one ulp off.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from interconnect.pce.cve import Vulnerability
from interconnect.pce.errors import InvalidRequestError

MAX_REMEDIATION = 1_000_000.0
MAX_ALPHA = 1_000.0
SI_DECIMALS = 9


@dataclass(frozen=True)
class Exposure:
    """Vulnerability i present on node j, with the remediation applied there and its weight."""

    node: str
    vulnerability: Vulnerability
    remediation: float = 1.0
    alpha: float = 1.0

    def __post_init__(self) -> None:
        check_remediation(self.remediation)
        check_alpha(self.alpha)

    @property
    def weight(self) -> float:
        """alpha_ij * CVSS^norm_i: this exposure's term of the denominator."""
        return self.alpha * self.vulnerability.normalised_score

    @property
    def residual(self) -> float:
        """alpha_ij * CVSS^norm_i / RE_ij: this exposure's term of the numerator."""
        return self.weight / self.remediation


def check_remediation(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequestError(f"remediation level: expected a number >= 1, got {value!r}")
    if not 1.0 <= value <= MAX_REMEDIATION:
        raise InvalidRequestError(
            f"remediation level: {value:g} is out of range (1 = no remediation, at most {MAX_REMEDIATION:g})"
        )
    return float(value)


def check_alpha(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequestError(f"alpha: expected a number > 0, got {value!r}")
    if not 0.0 < value <= MAX_ALPHA:
        raise InvalidRequestError(f"alpha: {value:g} is out of range (expected > 0 and <= {MAX_ALPHA:g})")
    return float(value)


def security_indices(exposures: Iterable[Exposure], nodes: Iterable[str]) -> dict[str, float]:
    """SI_j for every node in ``nodes`` (100 for a node without exposures)."""
    exposures = list(exposures)
    result = dict.fromkeys(nodes, 100.0)
    denominator = math.fsum(e.weight for e in exposures)
    if denominator <= 0.0:
        # No vulnerability with a non-zero score anywhere: nothing to fall victim to.
        return result
    numerators: dict[str, list[float]] = {}
    for e in exposures:
        numerators.setdefault(e.node, []).append(e.residual)
    for node, terms in numerators.items():
        if node in result:
            probability = min(1.0, math.fsum(terms) / denominator)
            result[node] = round((1.0 - probability) * 100.0, SI_DECIMALS)
    return result


def attack_type_shares(exposures: Iterable[Exposure]) -> dict[str, float]:
    """The seed's P_i for one node: the probability that an attack on it was of type i."""
    exposures = list(exposures)
    total = math.fsum(e.residual for e in exposures)
    if total <= 0.0:
        return {e.vulnerability.cve_id: 0.0 for e in exposures}
    return {e.vulnerability.cve_id: e.residual / total for e in exposures}
