"""Consent enforcement at hospital scale: cohort decisions for 100,000 patients and
1,000,000 resources with a realistic consent mix.

Measured, on one site built once (cached under --cache):

* cold: a fresh decider decides every patient and redacts on the store's index
  (embedded regorus; the same again through the OPA REST API, batched);
* warm: the next round with no change, and after 1 % of the patients' consents change;
* the per-resource baseline: one opa-python-client query per resource (``paroma.access``,
  HAPI's canSeeResource pattern) against the OPA REST endpoint served in another process,
  timed on a random sample and extrapolated to every resource; the sample's answers are
  checked against the batched decision;
* peak memory (RSS of this process).

Prints a table and writes ``benchmarks/results/consent.json``. Usage::

    python benchmarks/consent.py                       # 100,000 patients, 1,000,000 resources
    python benchmarks/consent.py --patients 2000 --sample 200   # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clinical_node.fhir.bundle import PreparedEntry  # noqa: E402
from clinical_node.fhir.index import iso  # noqa: E402
from clinical_node.site import Site  # noqa: E402
from paroma.demo import DEMO_POLICY, demo_job  # noqa: E402
from protection_layer import ConsentMix, generate_consents, research_consent, revocation  # noqa: E402
from protection_layer.cohort import CohortDecider  # noqa: E402
from protection_layer.consent_mix import nested_deny  # noqa: E402
from protection_layer.consent_store import ConsentStore  # noqa: E402
from protection_layer.engine import OpaServerEngine, PolicySet, RegorusEngine  # noqa: E402
from protection_layer.layer import CONSENT_DB  # noqa: E402

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
LOINC = "http://loinc.org"
UCI = "https://paroma-med.eu/fhir/CodeSystem/uci-heart-disease"
# Codes of the synthetic observations: those the FLamby job reads, and two it does not.
JOB_CODES = [(LOINC, "30525-0"), (LOINC, "8480-6"), (LOINC, "2093-3"), (UCI, "fbs"), (LOINC, "8601-7"),
             (LOINC, "55422-0"), (UCI, "exang"), (UCI, "oldpeak"), (UCI, "cp"), (UCI, "num")]  # fmt: skip
OTHER_CODES = [(UCI, "thal"), (UCI, "ca")]
PSY = ("http://terminology.hl7.org/CodeSystem/v3-ActCode", "PSY")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build_site(folder: Path, patients: int, per_patient: int, seed: int) -> Site:
    """A site with ``patients`` Patients and ``per_patient - 1`` Observations each, and one
    research consent (or none) per patient in the default realistic mix."""
    ids = [f"p{i:07d}" for i in range(patients)]
    if (folder / ".fhir-complete").exists():
        site = Site.open(folder)
    else:
        if folder.exists():
            shutil.rmtree(folder)
        site = Site.create(folder, "bench", "Benchmark Hospital", policy=DEMO_POLICY)
        _build_fhir(site, ids, per_patient, random.Random(seed))
        (folder / ".fhir-complete").write_text("ok")
    if not (folder / ".consents-complete").exists():
        (folder / CONSENT_DB).unlink(missing_ok=True)
        start = time.perf_counter()
        store = ConsentStore(folder / CONSENT_DB, site.key_path.read_bytes())
        drawn = generate_consents(ids, ConsentMix(), now=NOW, seed=seed)
        consents = [g.resource for g in drawn if g.resource]
        for i in range(0, len(consents), 10_000):
            store.put_many(consents[i : i + 10_000])
        store.close()
        print(f"  stored {len(consents):,} validated consents in {time.perf_counter() - start:.0f} s")
        (folder / ".consents-complete").write_text("ok")
    return site


def _build_fhir(site: Site, ids: list[str], per_patient: int, rng: random.Random) -> None:
    start = time.perf_counter()
    batch: list[PreparedEntry] = []

    def flush() -> None:
        # Set-up only: the synthetic resources are written without R4 validation (which is
        # not what is measured), through the store's own transaction and index code.
        site.fhir._write(batch)
        batch.clear()

    for pid in ids:
        batch.append(
            PreparedEntry(
                0,
                "Patient",
                pid,
                {
                    "resourceType": "Patient",
                    "id": pid,
                    "birthDate": f"19{rng.randint(30, 99)}-01-01",
                    "gender": rng.choice(("male", "female")),
                },
            )
        )
        for j in range(per_patient - 1):
            system, code = rng.choice(JOB_CODES) if rng.random() < 0.9 else rng.choice(OTHER_CODES)
            obs: dict[str, Any] = {
                "resourceType": "Observation",
                "id": f"{pid}-{j}",
                "status": "final",
                "code": {"coding": [{"system": system, "code": code}]},
                "subject": {"reference": f"Patient/{pid}"},
                "effectiveDateTime": (datetime(2010, 1, 1, tzinfo=UTC) + timedelta(days=rng.randint(0, 5400)))
                .date()
                .isoformat(),
                "valueQuantity": {"value": rng.randint(1, 300)},
            }
            if rng.random() < 0.02:
                obs["meta"] = {"security": [{"system": PSY[0], "code": PSY[1]}]}
            batch.append(PreparedEntry(0, "Observation", obs["id"], obs))
        if len(batch) >= 20_000:
            flush()
    flush()
    print(
        f"  built {len(ids):,} patients / {len(ids) * per_patient:,} resources in {time.perf_counter() - start:.0f} s"
    )


def churn(store: ConsentStore, patients: list[str], rng: random.Random, now: datetime) -> list[str]:
    """1 % of patients change their consent: revocations, new permits, new nested denies."""
    chosen = rng.sample(patients, max(1, len(patients) // 100))
    changes = []
    for k, pid in enumerate(chosen):
        signed = now - timedelta(minutes=5)
        if k % 3 == 0:
            changes.append(revocation(f"churn-{pid}", pid, signed=signed))
        elif k % 3 == 1:
            changes.append(research_consent(f"churn-{pid}", pid, signed=signed))
        else:
            changes.append(
                research_consent(
                    f"churn-{pid}",
                    pid,
                    signed=signed,
                    nested=[nested_deny(codes=["http://loinc.org|2093-3"])],
                )
            )
    store.put_many(changes)
    return chosen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_opa_server() -> tuple[subprocess.Popen[bytes], str]:
    """``paroma consent serve-opa`` in its own process: the REST endpoint the
    opa-python-client paths talk to."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "paroma.cli", "consent", "serve-opa", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the OPA REST endpoint did not start")


def per_resource_baseline(
    url: str, site: Site, decider: CohortDecider, decision: Any, sample: int, rng: random.Random
) -> dict[str, Any]:
    from opa_client import OpaClient

    job = demo_job()
    keys = [(t, i, p) for p, ks in decider._rows_of(decider_request(job)).items() for t, i in ks]
    chosen = rng.sample(keys, min(sample, len(keys)))
    index = {
        (r.resource_type, r.resource_id): r
        for r in site.fhir.index_rows(patients=sorted({p for _, _, p in chosen}))
    }
    client = OpaClient(host="127.0.0.1", port=int(url.rsplit(":", 1)[1]), timeout=30)
    now = iso(NOW)
    context = {"purpose": job.purpose, "organization": job.organization, "actions": ["access", "use"]}
    released = {(t, i) for p, ks in decision.released.items() for t, i in ks}
    agree = 0
    start = time.perf_counter()
    for rtype, rid, patient in chosen:
        r = index[(rtype, rid)]
        answer = client.query_rule(
            {
                "now": now,
                "job": context,
                "consents": decider.patient_terms(patient),
                "resource": {
                    "type": r.resource_type,
                    "codes": [{"system": s, "code": c} for s, c in r.codes],
                    "labels": [{"system": s, "code": c} for s, c in r.security],
                    "start": r.date_start or "",
                    "end": r.date_end or "",
                },
            },
            "paroma.access",
            "allow",
        )
        agree += answer.get("result") == ((rtype, rid) in released)
    seconds = time.perf_counter() - start
    client.close_connection()
    return {
        "sampled": len(chosen),
        "seconds": seconds,
        "per_query_ms": seconds / len(chosen) * 1000,
        "agree": agree,
        "total_resources": len(keys),
    }


def decider_request(job: Any) -> Any:
    from protection_layer.cohort import DataRequest

    return DataRequest.of(job)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument(
        "--resources-per-patient", type=int, default=10, help="including the Patient resource"
    )
    parser.add_argument("--sample", type=int, default=2_000, help="per-resource baseline queries to time")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/paroma-bench-consent"))
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("PAROMA_BENCHMARK_RESULTS") or ROOT / "benchmarks" / "results")
        / "consent.json",
    )
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    folder = args.cache / f"site-{args.patients}-{args.resources_per_patient}-{args.seed}"
    print(f"Site: {args.patients:,} patients x {args.resources_per_patient} resources ({folder})")
    site = build_site(folder, args.patients, args.resources_per_patient, args.seed)
    rss_before = _rss_mb()
    job = demo_job()
    rng = random.Random(args.seed)
    results: dict[str, Any] = {"patients": args.patients, "resources": site.fhir.counts()}

    # -- embedded engine: cold, warm, warm after 1 % churn ---------------------------------
    store = ConsentStore(folder / CONSENT_DB, site.key_path.read_bytes())
    engine = RegorusEngine(PolicySet.builtin(), timeout_s=600)
    decider = CohortDecider(site.fhir, store, lambda: engine)
    start = time.perf_counter()
    cold = decider.decide(job, iso(NOW))
    results["cold_s"] = time.perf_counter() - start
    results["counts"] = dict(cold.counts)
    results["released_resources"] = len(cold.resource_keys())
    results["redacted_resources"] = cold.redacted
    start = time.perf_counter()
    again = decider.decide(job, iso(NOW + timedelta(seconds=30)))
    results["warm_unchanged_s"] = time.perf_counter() - start
    assert again.snapshot == cold.snapshot and not again.redecided
    start = time.perf_counter()
    changed = churn(store, sorted(cold.decisions), rng, NOW + timedelta(minutes=1))
    results["churn_write_s"] = time.perf_counter() - start
    start = time.perf_counter()
    warm = decider.decide(job, iso(NOW + timedelta(minutes=1)))
    results["warm_churn_s"] = time.perf_counter() - start
    results["warm_churn_patients"] = len(changed)
    results["warm_churn_redecided"] = len(warm.redecided)
    results["warm_counts"] = dict(warm.counts)
    results["rss_peak_mb"] = _rss_mb()
    results["rss_before_decisions_mb"] = rss_before

    # -- the same policies through the OPA REST API (opa-python-client) --------------------
    server, url = start_opa_server()
    try:
        opa = OpaServerEngine(url, PolicySet.builtin(), timeout_s=600)
        fresh = CohortDecider(site.fhir, store, lambda: opa)
        start = time.perf_counter()
        via_opa = fresh.decide(job, iso(NOW + timedelta(minutes=1)))
        results["cold_opa_batched_s"] = time.perf_counter() - start
        results["opa_agrees"] = via_opa.snapshot == warm.snapshot
        opa.close()
        baseline = per_resource_baseline(url, site, decider, warm, args.sample, rng)
    finally:
        server.terminate()
        server.wait(timeout=10)
    baseline["extrapolated_s"] = baseline["per_query_ms"] / 1000 * baseline["total_resources"]
    results["per_resource_baseline"] = baseline
    results["speedup_cold_vs_per_resource"] = baseline["extrapolated_s"] / results["cold_s"]
    results["speedup_warm_vs_per_resource"] = baseline["extrapolated_s"] / results["warm_churn_s"]
    results["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    results["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    engine.close()
    store.close()

    rows = [
        ("cold: every patient decided + redaction (embedded regorus)", f"{results['cold_s']:.2f} s"),
        ("warm: next round, no consent changed", f"{results['warm_unchanged_s'] * 1000:.0f} ms"),
        (
            f"warm: next round after 1 % churn ({len(changed):,} patients)",
            f"{results['warm_churn_s'] * 1000:.0f} ms",
        ),
        (
            "cold through the OPA REST API (batched, opa-python-client)",
            f"{results['cold_opa_batched_s']:.2f} s",
        ),
        (
            f"per-resource opa-python-client queries ({baseline['sampled']:,} timed, x{baseline['total_resources']:,})",
            f"{baseline['extrapolated_s']:.0f} s ({baseline['per_query_ms']:.2f} ms/query)",
        ),
        ("speed-up, cold vs per-resource", f"{results['speedup_cold_vs_per_resource']:.0f}x"),
        ("speed-up, warm after churn vs per-resource", f"{results['speedup_warm_vs_per_resource']:.0f}x"),
        (
            "peak RSS of the process (before deciding)",
            f"{results['rss_peak_mb']:.0f} MB ({rss_before:.0f} MB)",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print()
    print(f"{'measurement':{width}s}  result")
    print(f"{'-' * width}  {'-' * 24}")
    for name, value in rows:
        print(f"{name:{width}s}  {value}")
    counts = results["counts"]
    print(
        f"\ncohort: PERMIT {counts['PERMIT']:,}, DENY {counts['DENY']:,}, NO_CONSENT {counts['NO_CONSENT']:,}; "
        f"{results['released_resources']:,} resources released, {results['redacted_resources']:,} redacted; "
        f"after churn {results['warm_churn_redecided']:,} patients re-decided; "
        f"OPA batched agrees: {results['opa_agrees']}; per-resource sample agrees {baseline['agree']}/{baseline['sampled']}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
