"""The job service's HTTP API on a live server with the local runner over two real UCI
sites: authentication and roles, a data scientist seeing only their own jobs, invalid specs
listing every problem, refusals with each site's reason, one job's failure not touching the
next, cancellation while queued and while running, the model and its provenance."""

from __future__ import annotations

import hashlib
import io

import httpx
import numpy as np
import pytest
from conftest import JobServiceFixture, heart_job, wait_for_job

from aggregator.jobs.schema import job_spec_schema
from aggregator.run_output import RunOutput

pytestmark = pytest.mark.slow

FINAL = ("completed", "failed", "cancelled")


def test_schema_and_openapi_are_public(job_service: JobServiceFixture) -> None:
    answer = httpx.get(f"{job_service.url}/api/job-spec.schema.json")
    assert answer.status_code == 200
    assert answer.json() == job_spec_schema()
    paths = httpx.get(f"{job_service.url}/openapi.json").json()["paths"]
    assert {"/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/model-card"} <= set(paths)


def test_every_endpoint_needs_a_valid_token(job_service: JobServiceFixture) -> None:
    url = job_service.url
    for method, path in (("GET", "/api/jobs"), ("POST", "/api/jobs"), ("GET", "/api/jobs/job-x/logs")):
        answer = httpx.request(method, f"{url}{path}")
        assert answer.status_code == 401, path
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.headers["www-authenticate"].startswith("Bearer")
    bad = httpx.get(f"{url}/api/jobs", headers={"Authorization": "Bearer not-a-token"})
    assert bad.status_code == 401 and "unknown or revoked" in bad.json()["title"]
    # a site admin follows jobs but does not submit them
    refused = httpx.post(f"{url}/api/jobs", json=heart_job(), headers=job_service.headers("hospital-admin"))
    assert refused.status_code == 403 and "site-admin" in refused.json()["detail"]


def test_an_invalid_spec_lists_every_problem_and_queues_nothing(job_service: JobServiceFixture) -> None:
    url, headers = job_service.url, job_service.headers("bob")
    before = httpx.get(f"{url}/api/jobs", headers=headers).json()
    doc = heart_job(purpose="FUN", rounds=0, strategy={"name": "fedmagic"}, training={"lr": -1})
    answer = httpx.post(f"{url}/api/jobs", json=doc, headers=headers)
    assert answer.status_code == 422
    body = answer.json()
    assert {e["field"] for e in body["errors"]} >= {"purpose", "rounds", "strategy.name", "training.lr"}
    assert "'FUN' is not a known v3-ActReason purpose" in body["detail"]
    toml = httpx.post(
        f"{url}/api/jobs", content=b"name = [", headers={**headers, "Content-Type": "application/toml"}
    )
    assert toml.status_code == 422 and "not valid TOML" in toml.json()["detail"]
    other = httpx.post(f"{url}/api/jobs", content=b"x", headers={**headers, "Content-Type": "text/csv"})
    assert other.status_code == 415
    past = httpx.post(
        f"{url}/api/jobs", json=heart_job(deadline={"at": "2020-01-01T00:00:00Z"}), headers=headers
    )
    assert past.status_code == 422 and past.json()["errors"] == [
        {"field": "deadline.at", "message": "in the past"}
    ]
    assert httpx.get(f"{url}/api/jobs", headers=headers).json() == before


def test_a_data_scientist_sees_and_acts_on_only_their_own_jobs(
    job_service: JobServiceFixture, alice_jobs: dict[str, dict]
) -> None:
    url = job_service.url
    job_id = alice_jobs["completed"]["id"]
    for path in (f"/api/jobs/{job_id}", f"/api/jobs/{job_id}/logs", f"/api/jobs/{job_id}/model"):
        answer = httpx.get(f"{url}{path}", headers=job_service.headers("bob"))
        assert answer.status_code == 404, path  # not 403: another's job is not disclosed
    assert (
        httpx.post(f"{url}/api/jobs/{job_id}/cancel", headers=job_service.headers("bob")).status_code == 404
    )
    assert job_id not in {
        j["id"] for j in httpx.get(f"{url}/api/jobs", headers=job_service.headers("bob")).json()
    }
    for who in ("alice", "hospital-admin", "ops"):
        listed = {j["id"] for j in httpx.get(f"{url}/api/jobs", headers=job_service.headers(who)).json()}
        assert job_id in listed, who
        assert httpx.get(f"{url}/api/jobs/{job_id}", headers=job_service.headers(who)).status_code == 200
    answer = httpx.post(f"{url}/api/jobs/{job_id}/cancel", headers=job_service.headers("hospital-admin"))
    assert answer.status_code == 403


def test_a_refused_job_fails_with_every_sites_reason_and_the_next_job_runs(
    job_service: JobServiceFixture, alice_jobs: dict[str, dict]
) -> None:
    refused = alice_jobs["refused"]
    assert refused["state"] == "failed"
    assert "0 of 2 sites admitted the job, 2 needed" in refused["reason"]
    assert [a["site_id"] for a in refused["admissions"]] == ["cleveland", "hungarian"]
    for admission in refused["admissions"]:
        assert not admission["accepted"]
        assert "purpose CLINTRCH is not admitted at this site" in admission["reason"]
        assert f"{admission['site_id']}: {admission['reason']}" in refused["reason"]
    assert refused["participating_sites"] == [] and refused["model_id"] == ""
    logs = httpx.get(f"{job_service.url}/api/jobs/{refused['id']}/logs", headers=job_service.headers("alice"))
    refusals = [line["message"] for line in logs.json() if "refuses the job" in line["message"]]
    assert len(refusals) == 2 and all("purpose CLINTRCH is not admitted" in line for line in refusals)
    # the job queued after it was not touched by its failure
    good = alice_jobs["completed"]
    assert good["state"] == "completed", good["reason"]
    assert good["participating_sites"] == ["cleveland", "hungarian"]
    assert [r["round"] for r in good["rounds"]] == [1, 2]


def test_the_model_and_its_provenance(job_service: JobServiceFixture, alice_jobs: dict[str, dict]) -> None:
    url, headers = job_service.url, job_service.headers("alice")
    job = alice_jobs["completed"]
    answer = httpx.get(f"{url}/api/jobs/{job['id']}/model", headers=headers)
    assert answer.status_code == 200
    assert hashlib.sha256(answer.content).hexdigest() == answer.headers["x-weights-sha256"]
    with np.load(io.BytesIO(answer.content), allow_pickle=False) as npz:
        weights = {k: npz[k] for k in npz.files}
    checkpoint = RunOutput(job_service.root / "runs" / job["id"]).checkpoint(job["spec_sha256"])
    assert checkpoint is not None and checkpoint.completed_round == 2
    assert weights.keys() == checkpoint.weights.keys()
    assert all(np.array_equal(weights[k], checkpoint.weights[k]) for k in weights)
    card = httpx.get(f"{url}/api/jobs/{job['id']}/model-card", headers=headers).json()
    assert card["model_id"] == job["model_id"] and card["state"] == "registered"
    provenance = card["card"]["provenance"] if "provenance" in card["card"] else card["card"]
    text = str(provenance)
    assert job["spec_sha256"] in text
    assert "aafa44dc53b4effcb546fd09b8eec463ee07be910b4a0d09adcd2a41aa7da713" in text  # the plan's sha256
    assert "cleveland" in card["markdown"] and "hungarian" in card["markdown"]
    # a queued or refused job has no model yet
    no_model = httpx.get(f"{url}/api/jobs/{alice_jobs['refused']['id']}/model", headers=headers)
    assert no_model.status_code == 409 and "failed" in no_model.json()["detail"]


def test_cancel_while_queued_and_while_running(job_service: JobServiceFixture) -> None:
    url, headers = job_service.url, job_service.headers("bob")
    long = httpx.post(
        f"{url}/api/jobs",
        json=heart_job(name="long", rounds=50, training={"local_steps": 2}),
        headers=headers,
    ).json()
    running = wait_for_job(url, headers, long["id"], ("running", *FINAL))
    assert running["state"] == "running"
    queued = httpx.post(f"{url}/api/jobs", json=heart_job(name="waits"), headers=headers).json()
    assert queued["state"] == "queued"  # one worker: it waits for the running job
    cancelled = httpx.post(f"{url}/api/jobs/{queued['id']}/cancel", headers=headers).json()
    assert cancelled["state"] == "cancelled" and "while queued" in cancelled["reason"]
    httpx.post(f"{url}/api/jobs/{long['id']}/cancel", headers=headers).raise_for_status()
    stopped = wait_for_job(url, headers, long["id"], FINAL)
    assert stopped["state"] == "cancelled"
    assert stopped["reason"] == f"cancelled after round {stopped['completed_rounds']}"
    assert stopped["completed_rounds"] < 50 and stopped["model_id"] == ""
    again = httpx.post(f"{url}/api/jobs/{long['id']}/cancel", headers=headers)
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    assert wait_for_job(url, headers, queued["id"], FINAL)["rounds"] == []


def test_a_job_resumed_while_registering_does_not_register_twice(
    job_service: JobServiceFixture, alice_jobs: dict[str, dict]
) -> None:
    from aggregator.jobs.service import result_from_output
    from paroma.jobspec import JobSpec

    service = job_service.service
    job = service.store.get(alice_jobs["completed"]["id"])
    spec = JobSpec.from_json(job.spec)
    output = service.output(job.id)
    assert (output.folder / "registering.json").exists()
    # as if the service had been killed after the registry wrote the model and before the
    # job service recorded it
    (output.folder / "model.json").unlink()
    models = len(service.registry.list())
    assert service._register(job, spec, result_from_output(output, spec), output) == job.model_id
    assert len(service.registry.list()) == models
