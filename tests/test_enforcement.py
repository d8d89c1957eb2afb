"""Enforcement at the clinical node: a job's data is the non-redacted resources of PERMIT
patients decided at the start of each round; consent changes count from the next round;
every failure to decide releases nothing."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import LiveServer

from aggregator.federation import initial_weights
from clinical_node.datasets.uci_heart import hospital_bundle
from clinical_node.node import ClinicalNode, RoundFailure
from clinical_node.site import Site
from clinical_node.training import InProcessExecutor, LocalResult, LocalTask
from paroma.demo import DEMO_POLICY, demo_job
from paroma.jobspec import JobSpec
from protection_layer import ConsentDecision, ConsentUnavailable, ProtectionLayer
from protection_layer.consent_mix import nested_deny, research_consent, revocation
from protection_layer.engine import OpaServerEngine, PolicyEngine, RegorusEngine
from protection_layer.opa_api import create_opa_app

SENTINEL = 987654.0
START = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)
PSY = "http://terminology.hl7.org/CodeSystem/v3-ActCode|PSY"
# Patients with a complete FLamby record in the Cleveland file, one per consent situation.
OPTED_OUT, NO_CONSENT, OTHER_PURPOSE, EXPIRED, CHOL_DENIED, PSY_DENIED, ENDS_SOON = (
    f"cleveland-{i:04d}" for i in (1, 2, 3, 4, 5, 6, 7)
)
SENTINEL_PATIENTS = (OPTED_OUT, NO_CONSENT, OTHER_PURPOSE, EXPIRED)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


class RecordingExecutor(InProcessExecutor):
    """The real in-process executor, keeping every task it was given (the model input)."""

    def __init__(self) -> None:
        self.tasks: list[LocalTask] = []

    def run(self, task: LocalTask) -> LocalResult:
        self.tasks.append(task)
        return super().run(task)


def _bundle() -> dict[str, Any]:
    bundle = hospital_bundle("cleveland")
    extra = []
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] != "Observation" or "valueQuantity" not in resource:
            continue
        patient = resource["id"].rsplit("-", 1)[0]
        column = resource["id"].rsplit("-", 1)[1]
        if patient in SENTINEL_PATIENTS or (patient == CHOL_DENIED and column == "chol"):
            resource["valueQuantity"]["value"] = SENTINEL
        if patient == PSY_DENIED and column == "thalach":
            # A later, PSY-labelled measurement: the extractor would take it if it leaked.
            labelled = {
                **resource,
                "id": f"{patient}-thalach-psy",
                "effectiveDateTime": "1988-08-01",
                "valueQuantity": {**resource["valueQuantity"], "value": SENTINEL},
                "meta": {"security": [{"system": PSY.split("|")[0], "code": "PSY"}]},
            }
            extra.append(
                {
                    "fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000001",
                    "resource": labelled,
                    "request": {"method": "PUT", "url": f"Observation/{labelled['id']}"},
                }
            )
    bundle["entry"] += extra
    return bundle


def _consents(patients: list[str]) -> list[dict[str, Any]]:
    signed = START - timedelta(days=200)
    period = (signed, START + timedelta(days=1000))
    out = []
    for p in patients:
        cid = f"rc-{p}"
        if p == NO_CONSENT:
            continue
        if p == OPTED_OUT:
            out.append(research_consent(cid, p, decision="deny", purposes=(), signed=signed))
        elif p == OTHER_PURPOSE:
            out.append(research_consent(cid, p, purposes=("CLINTRCH",), signed=signed))
        elif p == EXPIRED:
            out.append(research_consent(cid, p, signed=signed, period=(signed, START - timedelta(days=1))))
        elif p == CHOL_DENIED:
            out.append(
                research_consent(
                    cid,
                    p,
                    signed=signed,
                    period=period,
                    nested=[nested_deny(codes=["http://loinc.org|2093-3"])],
                )
            )
        elif p == PSY_DENIED:
            out.append(
                research_consent(cid, p, signed=signed, period=period, nested=[nested_deny(labels=[PSY])])
            )
        elif p == ENDS_SOON:
            out.append(research_consent(cid, p, signed=signed, period=(signed, START + timedelta(hours=2))))
        else:
            out.append(research_consent(cid, p, signed=signed, period=period, explicit_type=hash(p) % 2 == 0))
    return out


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("enforcement") / "cleveland"
    # The recording executor runs in-process (to see the model input), so this site admits
    # isolation "none"; what is checked here is the data the protection layer releases.
    site = Site.create(root, "cleveland", "Cleveland", policy=replace(DEMO_POLICY, min_isolation="none"))
    site.fhir.ingest_bundle(_bundle())
    site.plans.approve_builtin("logistic-regression", by="test")
    layer = ProtectionLayer(site)
    layer.consents.put_many(_consents(site.fhir.patients()))
    layer.close()
    site.close()
    return root


@pytest.fixture
def site(template: Path, tmp_path: Path) -> Iterator[Site]:
    root = tmp_path / "cleveland"
    shutil.copytree(template, root)
    for key in (root / "keys").iterdir():
        key.chmod(0o600)
    made = Site.open(root)
    yield made
    made.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


Node = tuple[ClinicalNode, ProtectionLayer, RecordingExecutor]


@pytest.fixture
def make_node(site: Site, clock: Clock) -> Iterator[Callable[..., Node]]:
    layers: list[ProtectionLayer] = []

    def make(engine: PolicyEngine | None = None) -> Node:
        layer = ProtectionLayer(site, clock=clock, engine=engine)
        layers.append(layer)
        executor = RecordingExecutor()
        node = ClinicalNode(site, view=layer.view, executor=executor, admission=layer.admission, events=layer)
        return node, layer, executor

    yield make
    for layer in layers:
        layer.close()


@pytest.fixture
def job() -> JobSpec:
    return demo_job(rounds=3)


def _values(resource: dict[str, Any]) -> list[float]:
    quantity = resource.get("valueQuantity")
    return [float(quantity["value"])] if quantity else []


def test_no_data_of_deny_or_no_consent_patients_and_no_redacted_resource_reaches_the_model(
    make_node: Callable[..., Node], job: JobSpec
) -> None:
    node, layer, executor = make_node()
    weights = initial_weights(job)
    node.train(job, 1, weights)
    node.evaluate(job, 1, weights)
    decision = layer.view.decision_for_round(job, 1)
    assert decision.decisions[OPTED_OUT].decision is ConsentDecision.DENY
    for p in (NO_CONSENT, OTHER_PURPOSE, EXPIRED):
        assert decision.decisions[p].decision is ConsentDecision.NO_CONSENT
    assert decision.decisions[PSY_DENIED].decision is ConsentDecision.PERMIT
    assert decision.counts == {"PERMIT": 299, "DENY": 1, "NO_CONSENT": 3}

    cohort = layer.view.cohort(job, 1)
    owners = {
        r["id"] if r["resourceType"] == "Patient" else r["subject"]["reference"][8:]
        for r in list(cohort.load())
    }
    assert owners.isdisjoint(SENTINEL_PATIENTS)
    assert all(SENTINEL not in _values(r) for r in list(cohort.load()))
    ids = {r["id"] for r in list(cohort.load())}
    assert f"{CHOL_DENIED}-chol" not in ids and f"{PSY_DENIED}-thalach-psy" not in ids
    assert f"{CHOL_DENIED}-age" in ids  # the rest of a redacted patient's data stays
    assert cohort.redacted_resources == 2

    data, _ = node.dataset(job, 1)
    used = set(data.train_patients) | set(data.test_patients)
    assert used.isdisjoint(SENTINEL_PATIENTS) and CHOL_DENIED not in used
    assert PSY_DENIED in used  # usable without the redacted measurement
    assert len(executor.tasks) == 2
    for task in executor.tasks:
        raw = task.x.astype(np.float64) * (data.std.astype(np.float64) + 1e-9) + data.mean
        assert np.all(np.abs(raw - SENTINEL) > 1.0)
    thalach = data.columns.index("thalach")
    row = data.train_patients.index(PSY_DENIED) if PSY_DENIED in data.train_patients else None
    matrix, position = (
        (data.x_train, row) if row is not None else (data.x_test, data.test_patients.index(PSY_DENIED))
    )
    genuine = next(
        r
        for r in node.site.fhir.iter_resources("Observation", patients=[PSY_DENIED])
        if r["id"] == f"{PSY_DENIED}-thalach"
    )
    value = matrix[position, thalach] * (data.std[thalach] + 1e-9) + data.mean[thalach]
    assert value == pytest.approx(genuine["valueQuantity"]["value"], abs=1e-3)


def test_a_revocation_counts_from_the_next_round_and_only_that_patient_is_decided_again(
    make_node: Callable[..., Node], job: JobSpec, clock: Clock
) -> None:
    node, layer, _ = make_node()
    weights = initial_weights(job)
    first = node.train(job, 1, weights)
    data, _ = node.dataset(job, 1)
    leaving = data.train_patients[10]
    clock.advance(minutes=1)
    layer.consents.put(revocation(f"withdrawal-{leaving}", leaving, signed=clock.now))
    # The next decision re-decides only the patient whose consent changed ...
    assert layer.decide_cohort(job).redecided == {leaving}
    # ... but round 1's data was decided at its start: the revocation does not change round 1
    assert node.evaluate(job, 1, weights).cohort["permit"] == first.cohort["permit"]
    clock.advance(minutes=1)
    second = node.train(job, 2, weights)
    assert second.cohort["permit"] == first.cohort["permit"] - 1
    assert second.cohort["deny"] == first.cohort["deny"] + 1
    assert second.cohort["usable"] == first.cohort["usable"] - 1
    later, _ = node.dataset(job, 2)
    assert leaving not in later.train_patients + later.test_patients
    decision = layer.view.decision_for_round(job, 2)
    assert decision.decisions[leaving].decision is ConsentDecision.DENY
    # the patient sees which jobs used their data, when, under which consent
    own = layer.audit.for_patient(leaving)
    releases = [e for e in own if e["kind"] == "data-release"]
    assert [(e["round"], e["consent"]) for e in releases] == [(1, f"rc-{leaving}/1")]
    assert {e["kind"] for e in own} == {"consent-change", "data-release"}
    assert all(leaving not in str(e) or e["kind"] != "data-release" or e["round"] == 1 for e in own)


def test_a_changed_or_expired_consent_counts_from_the_next_round(
    make_node: Callable[..., Node], job: JobSpec, clock: Clock
) -> None:
    _, layer, _ = make_node()
    first = layer.view.decision_for_round(job, 1)
    assert first.decisions[ENDS_SOON].decision is ConsentDecision.PERMIT
    changed = "cleveland-0100"
    layer.consents.put(
        research_consent(
            f"rc-{changed}", changed, purposes=("CLINTRCH",), signed=clock.now - timedelta(days=200)
        )
    )
    clock.advance(hours=3)  # ENDS_SOON's period is over
    second = layer.view.decision_for_round(job, 2)
    assert second.redecided == {changed, ENDS_SOON}
    assert second.decisions[changed].decision is ConsentDecision.NO_CONSENT
    assert second.decisions[changed].consent_id == ""
    assert second.decisions[ENDS_SOON].decision is ConsentDecision.NO_CONSENT
    assert second.count(ConsentDecision.PERMIT) == first.count(ConsentDecision.PERMIT) - 2
    assert second.snapshot != first.snapshot
    clock.advance(minutes=1)
    third = layer.view.decision_for_round(job, 3)
    assert third.redecided == frozenset() and third.snapshot == second.snapshot


def test_new_fhir_data_redecides_the_cohort(make_node: Callable[..., Node], job: JobSpec, site: Site) -> None:
    _, layer, _ = make_node()
    before = layer.view.decision_for_round(job, 1)
    site.fhir.put_resource({"resourceType": "Patient", "id": "newcomer", "gender": "female"})
    after = layer.view.decision_for_round(job, 2)
    assert after.decisions["newcomer"].decision is ConsentDecision.NO_CONSENT
    assert len(after.decisions) == len(before.decisions) + 1


# -- fail closed -------------------------------------------------------------------------------


def _override(site: Site, name: str, text: str) -> None:
    (site.root / "policies").mkdir(exist_ok=True)
    (site.root / "policies" / name).write_text(text)


BROKEN_POLICIES = {
    "engine error": "package paroma.consent\nimport rego.v1\ndecisions[key] := x if {\n\tsome key, _ in input.patients\n\tx := 1 / 0\n}\n",
    "undefined result": "package paroma.consent\nimport rego.v1\nsomething_else := true\n",
    "malformed decision": 'package paroma.consent\nimport rego.v1\ndecisions[key] := {"decision": "MAYBE"} if {\n\tsome key, _ in input.patients\n}\n',
    "missing patients": 'package paroma.consent\nimport rego.v1\ndecisions := {"nobody": {"decision": "PERMIT"}}\n',
}


@pytest.mark.parametrize("failure", sorted(BROKEN_POLICIES))
def test_a_policy_that_cannot_decide_releases_no_data(
    make_node: Callable[..., Node], job: JobSpec, site: Site, failure: str
) -> None:
    _override(site, "consent.rego", BROKEN_POLICIES[failure])
    node, layer, executor = make_node()
    with pytest.raises(ConsentUnavailable, match="released no data"):
        layer.view.cohort(job, 1)
    with pytest.raises(RoundFailure, match="could not decide its consent cohort"):
        node.train(job, 1, initial_weights(job))
    assert executor.tasks == []
    failed = [e for e in layer.audit.entries() if e["kind"] == "cohort" and e["data"]["status"] == "failed"]
    assert failed and not [e for e in layer.audit.entries() if e["kind"] == "data-release"]
    admission = node.admit(job)
    assert not admission.accepted and "could not decide its consent cohort" in admission.reason


def test_a_decision_over_the_timeout_releases_no_data(make_node: Callable[..., Node], job: JobSpec) -> None:
    node, layer, executor = make_node(RegorusEngine(timeout_s=1e-9))
    with pytest.raises(ConsentUnavailable, match=r"no decision within|over the limit"):
        layer.view.cohort(job, 1)
    with pytest.raises(RoundFailure):
        node.train(job, 1, initial_weights(job))
    assert executor.tasks == []


def test_an_unreachable_opa_server_releases_no_data(make_node: Callable[..., Node], job: JobSpec) -> None:
    with LiveServer(create_opa_app()) as server:
        engine = OpaServerEngine(server.url, timeout_s=2.0)
    node, layer, executor = make_node(engine)
    with pytest.raises(ConsentUnavailable, match="released no data: the OPA server could not be asked"):
        layer.view.cohort(job, 1)
    with pytest.raises(RoundFailure):
        node.train(job, 1, initial_weights(job))
    assert executor.tasks == []


def test_a_policy_that_fails_to_compile_on_reload_leaves_the_previous_one_active(
    make_node: Callable[..., Node], job: JobSpec, site: Site, clock: Clock
) -> None:
    node, layer, _ = make_node()
    active = layer.engine.policy_version
    first = layer.view.decision_for_round(job, 1)
    _override(site, "consent.rego", "package paroma.consent\nimport rego.v1\ndecisions[k] := v if {\n")
    second = layer.view.decision_for_round(job, 2)
    assert layer.engine.policy_version == active and second.policy_version == active
    assert second.counts == first.counts
    assert layer.policy_error is not None and "consent.rego" in layer.policy_error
    rejected = [e["data"] for e in layer.audit.entries() if e["kind"] == "policy"]
    assert rejected == [
        {
            "event": "rejected",
            "version": rejected[0]["version"],
            "active": active,
            "error": layer.policy_error,
        }
    ]
    # A corrected policy that compiles replaces the active one (here: nobody is asked).
    _override(
        site,
        "consent.rego",
        'package paroma.consent\nimport rego.v1\ndecisions[key] := {"decision": "NO_CONSENT", "reason": "closed"} if {\n\tsome key, _ in input.patients\n}\n',
    )
    third = layer.view.decision_for_round(job, 3)
    assert layer.policy_error is None and third.policy_version != active
    assert third.counts["PERMIT"] == 0
    with pytest.raises(RoundFailure, match="only 0 patients consent to this job here"):
        node.train(job, 3, initial_weights(job))


# -- admission ---------------------------------------------------------------------------------


def test_admission_by_rego_on_both_engines(
    make_node: Callable[..., Node], site: Site, engine: PolicyEngine
) -> None:
    node, layer, _ = make_node(engine)
    job = demo_job(rounds=1)
    assert node.admit(job).accepted
    refusals = {
        "purpose CLINTRCH is not admitted at this site (admitted: HRESCH)": {"purpose": "CLINTRCH"},
        "organisation Organization/pharma is not admitted at this site": {
            "organization": "Organization/pharma"
        },
        "is not approved at this site": {"plan": {"reference": "logistic-regression", "sha256": "0" * 64}},
        "round timeout 1000 s exceeds the site's limit of 900 s": {"deadline": {"round_timeout_s": 1000}},
    }
    for reason, change in refusals.items():
        refused = node.admit(_job_with(job, change))
        assert not refused.accepted and reason in refused.reason, refused.reason
    strict = DEMO_POLICY.__class__(
        purposes=("HRESCH",),
        organizations=(job.organization,),
        min_cohort=400,
        min_isolation="bubblewrap",
        require_dp=True,
        dp_clip_norm=1.0,
        dp_noise_multiplier=0.8,
    )
    site.write_policy(strict)
    refused = node.admit(job)
    assert not refused.accepted
    for reason in (
        "only 299 patients consent to this job here; the site trains on at least 400",
        "this site requires sandbox isolation bubblewrap; its sandbox provides none",
    ):
        assert reason in refused.reason, refused.reason
    assert "privacy" not in refused.reason  # site DP is enforced by the node, not a refusal
    site.write_policy(replace(strict, min_cohort=10, min_isolation="none"))
    admitted = node.admit(job)
    assert admitted.accepted
    assert (
        "site-enforced differential privacy: each update clipped to norm 1 with Gaussian noise multiplier 0.8"
        in admitted.reason
    )
    admissions = [e["data"] for e in layer.audit.entries() if e["kind"] == "admission"]
    assert admissions[0]["accepted"] is True and admissions[-2]["accepted"] is False
    assert admissions[-1]["accepted"] is True
    assert len(admissions) == len(refusals) + 3  # one entry per distinct decision


def test_an_admission_policy_without_a_decision_refuses(make_node: Callable[..., Node], site: Site) -> None:
    _override(site, "admission.rego", "package paroma.admission\nimport rego.v1\nother := 1\n")
    node, _, _ = make_node()
    refused = node.admit(demo_job(rounds=1))
    assert not refused.accepted and "admission policy could not decide" in refused.reason


def _job_with(job: JobSpec, change: dict[str, Any]) -> JobSpec:
    from paroma.jobspec import parse_job_spec

    doc = job.to_dict()
    for key, value in change.items():
        doc[key] = (
            {**doc[key], **value} if isinstance(value, dict) and isinstance(doc.get(key), dict) else value
        )
    return parse_job_spec(doc)


def test_the_site_chooses_its_engine_in_site_toml(site: Site, job: JobSpec) -> None:
    from protection_layer import PolicyError

    with LiveServer(create_opa_app()) as server:
        text = (site.root / "site.toml").read_text()
        (site.root / "site.toml").write_text(
            text + f'\n[protection]\nengine = "opa"\nopa_url = "{server.url}"\n'
        )
        reopened = Site.open(site.root)
        reopened.write_policy(reopened.policy)  # rewriting the policy keeps [protection]
        reopened = Site.open(site.root)
        layer = ProtectionLayer(reopened, clock=Clock())
        try:
            assert isinstance(layer.engine, OpaServerEngine) and layer.engine.url == server.url
            assert layer.decide_cohort(job).counts == {"PERMIT": 299, "DENY": 1, "NO_CONSENT": 3}
        finally:
            layer.close()
            reopened.close()
    (site.root / "site.toml").write_text(text + '\n[protection]\nengine = "opa"\n')
    with pytest.raises(PolicyError, match=r"protection\.opa_url"):
        ProtectionLayer(Site.open(site.root))
