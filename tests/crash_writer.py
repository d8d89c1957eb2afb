"""A child process for the crash-safety test: writes to a site's stores until it is killed.

    python tests/crash_writer.py SITE_DIR START

Each step, in turn: a FHIR transaction bundle of one Patient and two Observations, a Bundle
of three Consents (each a new version of an existing consent once they exist), and a batch
of one to five audit entries. Prints ``ready`` once the stores are open, so that the parent
kills it while it is writing.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from clinical_node.site import Site
from protection_layer.consent_mix import research_consent
from protection_layer.layer import ProtectionLayer

OBSERVATION_CODES = ("2093-3", "8480-6")


def clinical_bundle(n: int) -> dict[str, Any]:
    patient = f"urn:uuid:00000000-0000-4000-8000-{n:012d}"
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": patient,
            "resource": {"resourceType": "Patient", "gender": "female", "birthDate": "1960-04-01"},
            "request": {"method": "POST", "url": "Patient"},
        }
    ]
    for code in OBSERVATION_CODES:
        entries.append(
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                    "subject": {"reference": patient},
                    "effectiveDateTime": "2020-01-02",
                    "valueQuantity": {"value": 100 + n % 50, "unit": "mg/dL"},
                },
                "request": {"method": "POST", "url": "Observation"},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def consent_bundle(n: int) -> dict[str, Any]:
    signed = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=n)
    consents = [research_consent(f"c{k}", f"p{k}", signed=signed) for k in range(3)]
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": c} for c in consents]}


def main() -> None:
    site = Site.open(Path(sys.argv[1]))
    start = int(sys.argv[2])
    layer = ProtectionLayer(site)
    print("ready", flush=True)
    n = start
    while True:
        site.fhir.ingest_bundle(clinical_bundle(n))
        layer.consents.ingest(consent_bundle(n))
        layer.audit.append_many(
            [("test-event", {"n": n, "k": k}) for k in range(1 + n % 5)], site=site.site_id
        )
        n += 1


if __name__ == "__main__":
    main()
