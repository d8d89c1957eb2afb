"""What data discovery costs a site: a feasibility query and a catalogue rebuild, beside
the consent decision every training round makes (the baseline, measured in the same run).

On the four UCI hospitals with the demo's consent mixes: per site, the median of several
repetitions of (a) the protection layer's cohort decision for the demo job on a fresh
layer, (b) a feasibility query for the same cohort on a fresh layer (cold) and (c) again
on the same layer (warm: the decider's cache), and (d) a catalogue rebuild.

    python -m benchmarks.discovery [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._common import markdown_table, write_result
from clinical_node.catalogue import CataloguePublisher
from clinical_node.site import Site
from paroma.demo import DEMO_MIXES, DEMO_ORGANIZATION, build_demo_sites, demo_job
from protection_layer import ProtectionLayer
from protection_layer.feasibility import answer_feasibility, parse_query


def _median_ms(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    job = demo_job()
    query = parse_query(
        {"purpose": job.purpose, "organization": DEMO_ORGANIZATION, "spec": "flamby-heart-disease"}
    )
    rows: list[list[Any]] = []
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for folder in build_demo_sites(Path(tmp), DEMO_MIXES):
            site = Site.open(folder)
            try:

                def cohort(site: Site = site) -> None:
                    layer = ProtectionLayer(site)
                    layer.decide_cohort(job)
                    layer.close()

                def cold(site: Site = site) -> None:
                    layer = ProtectionLayer(site)
                    answer_feasibility(layer, query, requester="benchmark")
                    layer.close()

                warm_layer = ProtectionLayer(site)
                answer_feasibility(warm_layer, query, requester="benchmark")
                publisher = CataloguePublisher(site)
                measured = {
                    "patients": len(site.fhir.patients()),
                    "cohort_decision_ms": _median_ms(cohort, args.repeat),
                    "feasibility_cold_ms": _median_ms(cold, args.repeat),
                    "feasibility_warm_ms": _median_ms(
                        lambda layer=warm_layer: answer_feasibility(layer, query, requester="benchmark"),  # type: ignore[misc]
                        args.repeat,
                    ),
                    "catalogue_rebuild_ms": _median_ms(publisher.publish, args.repeat),
                }
                warm_layer.close()
            finally:
                site.close()
            measured["feasibility_cold_vs_cohort"] = (
                measured["feasibility_cold_ms"] / measured["cohort_decision_ms"]
            )
            results[folder.name] = measured
            rows.append(
                [
                    folder.name,
                    measured["patients"],
                    measured["cohort_decision_ms"],
                    measured["feasibility_cold_ms"],
                    measured["feasibility_warm_ms"],
                    measured["feasibility_cold_vs_cohort"],
                    measured["catalogue_rebuild_ms"],
                ]
            )
    table = markdown_table(
        [
            "site",
            "patients",
            "cohort decision ms (baseline)",
            "feasibility cold ms",
            "feasibility warm ms",
            "cold / baseline",
            "catalogue rebuild ms",
        ],
        rows,
    )
    print(table)
    path = write_result("discovery", {"repeat": args.repeat, "sites": results, "table_markdown": table})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
