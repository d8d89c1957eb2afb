"""The model registry: provenance from a real short in-process federation of two UCI
hospitals, the lifecycle, tamper evidence and crash safety."""

from __future__ import annotations

import json
import multiprocessing
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from aggregator.federation import FederationResult
from aggregator.registry import ModelRegistry, RegistryError
from clinical_node.runtime import forget_nodes
from clinical_node.site import Site
from deploy.inprocess import run_inprocess_job
from paroma.demo import DEMO_POLICY, demo_job, revoke_one_patient
from paroma.jobspec import JobSpec, parse_job_spec

pytestmark = pytest.mark.slow  # one real federation, shared by the module


def _short_job(rounds: int = 2) -> JobSpec:
    doc = demo_job(rounds=rounds).to_dict()
    doc["training"]["local_steps"] = 5
    return parse_job_spec(doc)


@pytest.fixture(scope="module")
def federation(
    tmp_path_factory: pytest.TempPathFactory, uci_sites_template: Path
) -> tuple[JobSpec, FederationResult]:
    """One real two-round job over Cleveland and Hungary (Hungary enforces site DP)."""
    import shutil

    root = tmp_path_factory.mktemp("registry-sites")
    for key in ("cleveland", "hungarian"):
        shutil.copytree(uci_sites_template / key, root / key)
        for key_file in (root / key / "keys").iterdir():
            key_file.chmod(0o600)
    hungary = Site.open(root / "hungarian")
    hungary.write_policy(replace(DEMO_POLICY, require_dp=True, dp_clip_norm=5.0, dp_noise_multiplier=0.01))
    hungary.close()
    job = _short_job()

    class WithdrawAfterRoundOne:
        """A Cleveland patient withdraws consent after round 1, as in the demo."""

        def admissions(self, admissions: object) -> None:
            pass

        def round_started(self, server_round: int, total: int) -> None:
            pass

        def round_finished(self, result: object) -> None:
            if getattr(result, "server_round", 0) == 1:
                revoke_one_patient(root / "cleveland", job)

    try:
        result = run_inprocess_job(
            job, [root / "cleveland", root / "hungarian"], observer=WithdrawAfterRoundOne()
        )
    finally:
        forget_nodes()
    assert result.status == "completed", result.reason
    return job, result


def test_register_records_provenance_from_the_federation(
    tmp_path: Path, federation: tuple[JobSpec, FederationResult]
) -> None:
    job, result = federation
    registry = ModelRegistry(tmp_path / "registry")
    model = registry.register(job, result, owner="alice")
    assert model.state == "registered" and model.owner == "alice" and model.job_name == job.name
    assert (tmp_path / "registry" / "keys" / "registry-ed25519.pem").stat().st_mode & 0o777 == 0o600
    p = registry.get(model.model_id).provenance
    assert p["job"]["sha256"] == job.sha256
    assert p["training_plan"]["sha256"] == job.plan_sha256
    assert p["strategy"]["name"] == job.strategy and p["rounds"] == 2
    assert [a["site_id"] for a in p["admissions"] if a["accepted"]] == ["cleveland", "hungarian"]
    for name in ("cleveland", "hungarian"):
        site = p["sites"][name]
        assert site["rounds"] == [1, 2]
        assert site["cohort"]["permit"] > 0 and site["cohort"]["train"] > 0
        # the consent snapshot and policy version each round's data was decided under
        assert all(len(s) == 64 for s in site["snapshots"])
        assert len(site["policy_versions"]) == 1 and site["policy_versions"][0]
        assert site["isolation_levels"] == [result.rounds[-1].sites[name].isolation]
        assert [r["round"] for r in site["per_round"]] == [1, 2]
        assert [r["snapshot"] for r in site["per_round"]] == [
            result.rounds[0].sites[name].snapshot,
            result.rounds[1].sites[name].snapshot,
        ]
        assert site["per_round"][1]["cohort"] == site["cohort"]
    # the withdrawal after round 1 shows: Cleveland's round 2 read other data, one patient fewer
    cleveland = p["sites"]["cleveland"]["per_round"]
    assert cleveland[0]["snapshot"] != cleveland[1]["snapshot"]
    assert cleveland[1]["cohort"]["permit"] == cleveland[0]["cohort"]["permit"] - 1
    assert len(p["sites"]["cleveland"]["snapshots"]) == 2 and len(p["sites"]["hungarian"]["snapshots"]) == 1
    assert p["sites"]["cleveland"]["per_round"][0]["cohort"]["train"] == 199
    assert p["sites"]["cleveland"]["privacy_spent"] == {}
    dp = p["sites"]["hungarian"]["privacy_spent"]
    assert dp["clip-norm"] == 5.0 and dp["releases"] == 2.0 and dp["epsilon"] > 0
    assert p["privacy"]["delta"] == job.privacy.delta
    assert [m["round"] for m in p["metrics"]] == [1, 2]
    assert 0.0 < p["metrics"][-1]["sites"]["cleveland"]["evaluate"]["accuracy"] <= 1.0
    weights, pulled = registry.pull(model.model_id)
    assert pulled == registry.get(model.model_id)
    assert set(weights) == set(result.weights or {})
    for name, array in (result.weights or {}).items():
        np.testing.assert_array_equal(weights[name], array)
    # the registry outlives its process: a new instance on the folder sees the same model
    assert ModelRegistry(tmp_path / "registry").list() == [registry.get(model.model_id)]
    assert registry.verify() == []


def test_model_card_markdown_and_json(tmp_path: Path, federation: tuple[JobSpec, FederationResult]) -> None:
    job, result = federation
    registry = ModelRegistry(tmp_path)
    model = registry.register(job, result, owner="alice")
    registry.transition(model.model_id, "validated", by="bob")
    markdown, card = registry.model_card(model.model_id)
    json.dumps(card, allow_nan=False)  # strict JSON
    assert card["state"] == "validated"
    assert [h["state"] for h in card["lifecycle"]] == ["registered", "validated"]
    assert card["training"]["job_sha256"] == job.sha256
    assert card["intended_use"]["purpose"] == "HRESCH"
    assert f"# Model card: {model.model_id}" in markdown
    assert "| cleveland | yes | " in markdown and "| hungarian | yes | " in markdown
    assert job.plan_sha256 in markdown and "validated by bob" in markdown


def test_lifecycle_only_forward_and_retired_cannot_be_pulled(
    tmp_path: Path, federation: tuple[JobSpec, FederationResult]
) -> None:
    job, result = federation
    registry = ModelRegistry(tmp_path)
    a = registry.register(job, result, owner="alice")
    b = registry.register(job, result, owner="bob")
    assert a.model_id != b.model_id
    assert [m.model_id for m in registry.list(owner="bob")] == [b.model_id]
    with pytest.raises(
        RegistryError, match="registered: it can move to validated or retired, not to released"
    ):
        registry.transition(a.model_id, "released", by="carol")
    assert registry.transition(a.model_id, "validated", by="carol").state == "validated"
    with pytest.raises(RegistryError, match="not to registered"):
        registry.transition(a.model_id, "registered", by="carol")
    assert registry.transition(a.model_id, "released", by="carol").state == "released"
    registry.pull(a.model_id)
    assert registry.transition(a.model_id, "retired", by="carol").state == "retired"
    with pytest.raises(RegistryError, match="retired and cannot be pulled"):
        registry.pull(a.model_id)
    with pytest.raises(RegistryError, match="retired is final"):
        registry.transition(a.model_id, "released", by="carol")
    with pytest.raises(RegistryError, match="'published' is not one of"):
        registry.transition(b.model_id, "published", by="carol")
    with pytest.raises(RegistryError, match="no model 'nope'"):
        registry.get("nope")
    with pytest.raises(RegistryError, match="not valid"):
        registry.get("../etc")
    assert registry.get(b.model_id).state == "registered"
    assert registry.verify() == []


def test_only_completed_jobs_are_registered(
    tmp_path: Path, federation: tuple[JobSpec, FederationResult]
) -> None:
    job, result = federation
    registry = ModelRegistry(tmp_path)
    with pytest.raises(RegistryError, match="did not complete"):
        registry.register(job, replace(result, status="failed"), owner="alice")
    with pytest.raises(RegistryError, match="not of"):
        registry.register(_short_job(rounds=3), result, owner="alice")
    with pytest.raises(RegistryError, match="owner"):
        registry.register(job, result, owner="")
    assert registry.list() == []


@pytest.fixture
def three_models(tmp_path: Path, federation: tuple[JobSpec, FederationResult]) -> ModelRegistry:
    job, result = federation
    registry = ModelRegistry(tmp_path / "reg")
    first = registry.register(job, result, owner="alice")
    registry.transition(first.model_id, "validated", by="bob")
    registry.register(job, result, owner="alice")
    assert registry.verify() == []
    return registry


def _lines(registry: ModelRegistry) -> list[bytes]:
    return registry.log.path.read_bytes().splitlines(keepends=True)


def test_verify_detects_an_edited_entry(three_models: ModelRegistry) -> None:
    lines = _lines(three_models)
    entry = json.loads(lines[0])
    entry["data"]["owner"] = "mallory"
    lines[0] = json.dumps(entry).encode() + b"\n"
    three_models.log.path.write_bytes(b"".join(lines))
    assert any("entry edited" in p for p in three_models.verify())
    with pytest.raises(RegistryError, match="tampered, nothing is pulled"):
        three_models.pull(entry["data"]["model_id"])


def test_verify_detects_a_deleted_entry(three_models: ModelRegistry) -> None:
    lines = _lines(three_models)
    three_models.log.path.write_bytes(lines[0] + lines[2])
    problems = three_models.verify()
    assert any("deleted or moved" in p for p in problems)


def test_verify_detects_a_deleted_last_entry(three_models: ModelRegistry) -> None:
    three_models.log.path.write_bytes(b"".join(_lines(three_models)[:-1]))
    assert any("deleted at the end" in p for p in three_models.verify())


def test_verify_detects_reordered_entries(three_models: ModelRegistry) -> None:
    a, b, c = _lines(three_models)
    three_models.log.path.write_bytes(a + c + b)
    problems = three_models.verify()
    assert any("does not chain" in p for p in problems)


def test_verify_detects_a_deleted_log(three_models: ModelRegistry) -> None:
    three_models.log.path.unlink()
    three_models.log.head_path.unlink()
    assert any("is missing (deleted)" in p for p in three_models.verify())


def test_verify_and_pull_detect_a_changed_weights_file(three_models: ModelRegistry) -> None:
    model = three_models.list()[0]
    path = three_models.weights_path(model.model_id)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["linear.bias"] = arrays["linear.bias"] + 1.0
    np.savez(path, **arrays)  # a well-formed .npz with other weights
    assert any(
        model.model_id in p and "does not match its recorded sha256" in p for p in three_models.verify()
    )
    with pytest.raises(RegistryError, match="tampered"):
        three_models.pull(model.model_id)
    path.unlink()
    assert any("is missing" in p for p in three_models.verify())


def _register_then_die(root: str, job_json: str, result: FederationResult) -> None:
    """Register, but die (no clean-up, no flush) just before the log entry is committed."""
    from aggregator import registry as module

    def die(self: object, kind: str, data: object) -> None:
        os._exit(0)

    module.ModelRegistry._append = die  # type: ignore[method-assign]
    module.ModelRegistry(Path(root)).register(JobSpec.from_json(job_json), result, owner="alice")


def test_a_crash_mid_registration_leaves_the_registry_consistent(
    tmp_path: Path, federation: tuple[JobSpec, FederationResult]
) -> None:
    job, result = federation
    registry = ModelRegistry(tmp_path)
    kept = registry.register(job, result, owner="alice")
    ctx = multiprocessing.get_context("fork")
    process = ctx.Process(target=_register_then_die, args=(str(tmp_path), job.to_json(), result))
    process.start()
    process.join(60)
    assert process.exitcode == 0
    # the weights were written, the entry was not: the model does not exist, nothing is broken
    assert len(list((tmp_path / "models").iterdir())) == 2
    assert registry.list() == [kept] and registry.verify() == []
    # a torn half-line (a crash inside the append) is not taken for a model either
    with open(registry.log.path, "ab") as handle:
        handle.write(b'{"seq": 2, "kind": "model-regis')
    assert registry.list() == [kept] and registry.verify() == []
    again = registry.register(job, result, owner="alice")
    assert [m.model_id for m in registry.list()] == [kept.model_id, again.model_id]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == sorted([kept.model_id, again.model_id])
    assert registry.verify() == []


def _cli(*args: object) -> object:
    from typer.testing import CliRunner

    from paroma.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_list_show_card_promote_retire_verify(
    tmp_path: Path, federation: tuple[JobSpec, FederationResult]
) -> None:
    job, result = federation
    registry = ModelRegistry(tmp_path / "reg")
    model = registry.register(job, result, owner="alice")
    reg = tmp_path / "reg"
    listed = _cli("model", "list", "--registry", reg)
    assert listed.exit_code == 0 and model.model_id in listed.output and "registered" in listed.output  # type: ignore[attr-defined]
    shown = _cli("model", "show", model.model_id, "--registry", reg)
    assert json.loads(shown.output)["provenance"]["job"]["sha256"] == job.sha256  # type: ignore[attr-defined]
    card = _cli("model", "card", model.model_id, "--registry", reg)
    assert card.output.startswith(f"# Model card: {model.model_id}")  # type: ignore[attr-defined]
    card_json = _cli("model", "card", model.model_id, "--registry", reg, "--json")
    assert json.loads(card_json.output)["weights_sha256"] == model.weights_sha256  # type: ignore[attr-defined]
    skipped = _cli("model", "promote", model.model_id, "--registry", reg, "--to", "released", "--by", "bob")
    assert skipped.exit_code == 2 and "not to released" in skipped.output  # type: ignore[attr-defined]
    for state in ("validated", "released"):
        step = _cli("model", "promote", model.model_id, "--registry", reg, "--to", state, "--by", "bob")
        assert step.exit_code == 0 and f"is {state}" in step.output  # type: ignore[attr-defined]
    retired = _cli("model", "retire", model.model_id, "--registry", reg, "--by", "bob")
    assert retired.exit_code == 0 and "is retired" in retired.output  # type: ignore[attr-defined]
    ok = _cli("model", "verify", "--registry", reg)
    assert ok.exit_code == 0 and "intact: 1 model(s)" in ok.output  # type: ignore[attr-defined]
    registry.weights_path(model.model_id).write_bytes(b"not the weights")
    bad = _cli("model", "verify", "--registry", reg)
    assert bad.exit_code == 1 and "TAMPERED" in bad.output  # type: ignore[attr-defined]
    missing = _cli("model", "list", "--registry", tmp_path / "nowhere")
    assert missing.exit_code == 2 and "no such folder" in missing.output  # type: ignore[attr-defined]
    not_registry = _cli("model", "list", "--registry", reg / "models")
    assert not_registry.exit_code == 2 and "not a model registry" in not_registry.output  # type: ignore[attr-defined]
    (tmp_path / "empty").mkdir()
    empty = _cli("model", "verify", "--registry", tmp_path / "empty")
    assert empty.exit_code == 0 and "intact: 0 model(s)" in empty.output  # type: ignore[attr-defined]
    unknown = _cli("model", "show", "nope", "--registry", reg)
    assert unknown.exit_code == 2 and "no model 'nope'" in unknown.output  # type: ignore[attr-defined]
