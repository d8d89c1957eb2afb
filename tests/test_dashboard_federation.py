"""A consent change made on the dashboard counts from the next round of a running job: a
real federation (the in-process Grid over two UCI sites, every site training in its
sandbox) while patients use the Cleveland node's dashboard over HTTP. After round 1 a
patient withdraws (round 2's cohort there is one smaller); after round 2 another accepts a
study's consent request (round 3's cohort is one larger again)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import LiveServer
from dashboard_support import PatientClient

from aggregator.federation import Admission, RoundResult
from clinical_node.features import extract
from clinical_node.service import create_app
from clinical_node.site import Site
from deploy.inprocess import run_inprocess_job
from paroma.demo import DEMO_ORGANIZATION, demo_job
from paroma.jobspec import JobSpec, parse_job_spec
from protection_layer import ProtectionLayer

pytestmark = pytest.mark.slow
SITE = "cleveland"


def short_job(rounds: int) -> JobSpec:
    doc = demo_job(rounds).to_dict()
    doc["training"] = {**doc["training"], "local_steps": 5}
    doc["min_sites"] = 1
    return parse_job_spec(doc)


def complete_patients(layer: ProtectionLayer, job: JobSpec, n: int) -> list[str]:
    """Permitted patients whose records give the job a complete row (so each one counts)."""
    decision = layer.decide_cohort(job)
    out = []
    for patient in decision.permitted:
        resources = layer.site.fhir.read_many(decision.released[patient])
        if extract(job.feature_spec, resources).complete == 1:
            out.append(patient)
        if len(out) == n:
            return out
    raise AssertionError("not enough complete records")


class PatientsDuringTheJob:
    """The federation's observer: between rounds, patients act on the dashboard."""

    def __init__(self, leaving: PatientClient, joining: PatientClient, request_id: str) -> None:
        self.leaving, self.joining, self.request_id = leaving, joining, request_id
        self.permit: dict[int, int] = {}
        self.answers: list[Any] = []

    def admissions(self, admissions: list[Admission]) -> None:
        assert all(a.accepted for a in admissions), admissions

    def round_started(self, server_round: int, total: int) -> None:
        pass

    def round_finished(self, result: RoundResult) -> None:
        self.permit[result.server_round] = result.sites[SITE].cohort["permit"]
        if result.server_round == 1:
            self.answers.append(self.leaving.change("PUT", "/research/HRESCH", {"decision": "deny"}))
        elif result.server_round == 2:
            self.answers.append(self.joining.change("POST", f"/requests/{self.request_id}", {"accept": True}))


def test_dashboard_changes_count_from_the_next_round_of_a_running_job(uci_sites: Path) -> None:
    job = short_job(3)
    site = Site.open(uci_sites / SITE)
    app = create_app(site)
    layer: ProtectionLayer = app.state.protection
    leaving, joining = complete_patients(layer, job, 2)
    with LiveServer(app) as live:
        a = PatientClient.sign_in(live.url, site.root, leaving)
        b = PatientClient.sign_in(live.url, site.root, joining)
        # Before the job, B refused health research; a study then asks B.
        assert b.change("PUT", "/research/HRESCH", {"decision": "deny"}).status_code == 200
        request_id = app.state.dashboard.requests.add(
            joining, "Heart disease model", "HRESCH", DEMO_ORGANIZATION, "Would you take part?"
        )
        observer = PatientsDuringTheJob(a, b, request_id)
        result = run_inprocess_job(job, [uci_sites / SITE], observer=observer)
        assert result.status == "completed", result.reason
        assert [r.status_code for r in observer.answers] == [200, 200], [r.text for r in observer.answers]
        assert observer.permit[2] == observer.permit[1] - 1
        assert observer.permit[3] == observer.permit[2] + 1

        # The audit log says the same, patient by patient, and the dashboard shows it.
        releases = {
            e["data"]["round"]: e["data"]["patients"]
            for e in layer.audit.entries()
            if e["kind"] == "data-release" and e["data"]["job"] == job.sha256
        }
        assert leaving in releases[1] and leaving not in releases[2] and leaving not in releases[3]
        assert joining not in releases[2] and releases[3][joining] == f"request-{request_id}/1"
        used = a.get("/activity").json()["jobs"]
        assert [(j["job"], j["rounds"]) for j in used] == [(job.sha256, [1])]
        assert b.get("/activity").json()["jobs"][0]["rounds"] == [3]
        a.close()
        b.close()
    layer.close()
    site.close()
