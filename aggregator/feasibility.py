"""The aggregator's side of a feasibility query: ask every site, gather the answers, and
add up only what no site suppressed.

A site's count is a number or ``"<k"`` (below its small-count threshold); a suppressed
count is never estimated, so each total is "the sum of the exact counts, plus so many
sites with fewer than their k". A site that does not answer is reported as such.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .sites import SiteEndpoint, SiteReply, ask_sites

CLASSES = ("usable", "needs_consent", "unknown", "refused")


@dataclass
class ClassTotal:
    exact: int = 0  # the sum of the counts no site suppressed
    suppressed: list[str] = field(default_factory=list)  # "site: <k" for each site that did

    @property
    def display(self) -> str:
        if not self.suppressed:
            return str(self.exact)
        return f"{self.exact} + {len(self.suppressed)} site(s) below k"


@dataclass
class FeasibilityReport:
    sites: dict[str, dict[str, Any]]  # site id -> its answer
    failed: dict[str, str]  # site id -> why it did not answer
    totals: dict[str, ClassTotal]

    def to_dict(self) -> dict[str, Any]:
        return {
            "sites": self.sites,
            "failed": self.failed,
            "totals": {
                name: {"exact": t.exact, "suppressed": t.suppressed, "display": t.display}
                for name, t in self.totals.items()
            },
        }


def combine(
    answers: Mapping[str, Mapping[str, Any]], failed: Mapping[str, str] | None = None
) -> FeasibilityReport:
    """Totals per class over the sites' answers (pure)."""
    totals = {name: ClassTotal() for name in CLASSES}
    bad: dict[str, str] = dict(failed or {})
    good: dict[str, dict[str, Any]] = {}
    for site, answer in sorted(answers.items()):
        counts = answer.get("counts")
        if not isinstance(counts, Mapping) or any(name not in counts for name in CLASSES):
            bad[site] = "the answer has no counts for every class"
            continue
        good[site] = dict(answer)
        for name in CLASSES:
            value = counts[name]
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                totals[name].exact += value
            else:
                totals[name].suppressed.append(f"{site}: {value}")
    return FeasibilityReport(good, dict(sorted(bad.items())), totals)


def query_feasibility(
    sites: Sequence[SiteEndpoint], query: Mapping[str, Any], *, timeout: float = 30.0
) -> FeasibilityReport:
    """POST the query (the document of :func:`protection_layer.feasibility.parse_query`) to
    every site's ``/federation/feasibility`` at once and combine the answers."""
    replies: list[SiteReply] = ask_sites(
        list(sites), "POST", "/federation/feasibility", json=dict(query), timeout=timeout
    )
    return combine(
        {r.site_id: r.body for r in replies if r.body is not None},
        {r.site_id: r.error for r in replies if r.body is None},
    )
