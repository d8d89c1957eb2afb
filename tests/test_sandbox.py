"""The sandbox's parts: each backend's probe and containment, the node's reading of what a
worker wrote, admission on the isolation level, and plan approval without running the plan."""

from __future__ import annotations

import io
import os
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from clinical_node.node import ClinicalNode, RoundFailure, SiteAdmission, UnfilteredView
from clinical_node.plans import TrainingPlan, TrainingPlanError
from clinical_node.policy import SitePolicy
from clinical_node.sandbox import SandboxExecutor, SandboxFailure, SandboxLimits, UnavailableExecutor
from clinical_node.sandbox.limits import GiB, MiB
from clinical_node.sandbox.protocol import read_update
from clinical_node.site import Site
from clinical_node.training import InvalidUpdate, LocalResult, LocalTask, validate_update
from paroma.demo import DEMO_POLICY, demo_job

HOSTILE = Path(__file__).parent / "hostile_plans"
WEIGHTS = {"linear.weight": np.zeros((1, 13), np.float32), "linear.bias": np.zeros((1,), np.float32)}


def task(plan: TrainingPlan, timeout: float = 20.0, job: str = "job") -> LocalTask:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 13)).astype(np.float32)
    hyper = {"lr": 0.05, "local_steps": 20, "batch_size": 4, "optimizer": "sgd", "seed": 1}
    return LocalTask(
        "train", plan, 13, dict(WEIGHTS), hyper, x, (x[:, 0] > 0).astype(np.float32), timeout, job
    )


@pytest.mark.parametrize("backend", ["unshare", "subprocess"])
def test_weaker_backend_isolates_as_it_promises(site: Site, tmp_path: Path, backend: str) -> None:
    probe = SandboxExecutor.probe(backend, private_paths=[site.root])
    assert probe.ok, probe.reason
    assert probe.facts["cap_eff"] == 0 and probe.facts["no_new_privs"] is True
    assert probe.facts["readable_private"] == []
    if backend == "unshare":
        assert probe.facts["interfaces"] == ["lo"] and probe.facts["pid"] == 1
    limits = SandboxLimits(processes=32, address_space_bytes=3 * GiB, file_size_bytes=16 * MiB)
    executor = SandboxExecutor(backend, private_paths=[site.root], limits=limits)
    try:
        plan = TrainingPlan.builtin("logistic-regression")
        first = executor.run(task(plan))
        assert first.isolation == backend and first.weights is not None
        validate_update(WEIGHTS, first, kind="train")
        # the site's key, then a fork bomb: both contained, nothing left running
        text = (HOSTILE / "read_file.py").read_text().replace("__TARGETS__", f'["{site.key_path}"]')
        (tmp_path / "read_key.py").write_text(text)
        with pytest.raises(SandboxFailure) as caught:
            executor.run(task(TrainingPlan.from_file(tmp_path / "read_key.py"), job="hostile"))
        assert caught.value.code == "filesystem"
        with pytest.raises(SandboxFailure) as caught:
            executor.run(task(TrainingPlan.from_file(HOSTILE / "fork_bomb.py"), job="hostile"))
        assert caught.value.code == "processes"
        again = executor.run(task(plan))  # the job's own worker kept serving
        assert again.timings["start_s"] == 0.0
        np.testing.assert_array_equal(again.weights["linear.weight"], first.weights["linear.weight"])  # type: ignore[index]
    finally:
        executor.close()


def test_admission_refuses_a_sandbox_below_the_site_minimum(site: Site) -> None:
    site.write_policy(
        SitePolicy(purposes=("HRESCH",), organizations=DEMO_POLICY.organizations, min_isolation="bubblewrap")
    )
    site.plans.approve_builtin("logistic-regression")
    job = demo_job(rounds=1)
    refused = SiteAdmission(site, "unshare").admit(job)
    assert not refused.accepted
    assert refused.reason == "this site requires sandbox isolation bubblewrap; its sandbox provides unshare"
    assert SiteAdmission(site, "bubblewrap").admit(job).accepted


def test_no_working_sandbox_admits_and_releases_nothing(site: Site) -> None:
    site.write_policy(
        SitePolicy(purposes=("HRESCH",), organizations=DEMO_POLICY.organizations, min_isolation="none")
    )
    site.plans.approve_builtin("logistic-regression")
    executor = SandboxExecutor.strongest(private_paths=[site.root], backends_to_try=["no-such-backend"])
    assert isinstance(executor, UnavailableExecutor)
    node = ClinicalNode(site, view=UnfilteredView(site), executor=executor)
    decision = node.admit(demo_job(rounds=1))
    assert not decision.accepted and "provides unavailable" in decision.reason
    with pytest.raises(RoundFailure, match="not admitted"):
        node.train(demo_job(rounds=1), 1, WEIGHTS)


def npz(arrays: dict[str, np.ndarray], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    if compression == zipfile.ZIP_STORED:
        np.savez(buffer, **arrays)
    else:
        np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def read(folder: Path, name: str, bound: int = 4096) -> dict[str, np.ndarray]:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return read_update(fd, name, bound)
    finally:
        os.close(fd)


def test_node_reads_only_a_bounded_plain_npz(site: Site, tmp_path: Path) -> None:
    (tmp_path / "ok.npz").write_bytes(npz(WEIGHTS))
    assert set(read(tmp_path, "ok.npz")) == set(WEIGHTS)
    (tmp_path / "link.npz").symlink_to(site.key_path)
    os.mkfifo(tmp_path / "fifo.npz")
    (tmp_path / "big.npz").write_bytes(npz({"w": np.zeros(4096, np.float32)}))
    (tmp_path / "deflated.npz").write_bytes(npz({"w": np.zeros(512, np.float32)}, zipfile.ZIP_DEFLATED))
    (tmp_path / "bomb.npz").write_bytes(npz({"w": np.zeros(5 * 10**5, np.float32)}, zipfile.ZIP_DEFLATED))
    assert (tmp_path / "bomb.npz").stat().st_size < 4096
    (tmp_path / "pickle.npz").write_bytes(npz({"w": np.array([{"a": 1}], dtype=object)}))
    npy = io.BytesIO()
    np.save(npy, np.zeros(4, np.float32))
    with zipfile.ZipFile(tmp_path / "lie.npz", "w") as zf:  # a header declaring more than it holds
        zf.writestr("w.npy", npy.getvalue().replace(b"(4,)", b"(9,)"))
    expected = {
        "link.npz": "missing or not a plain file",
        "fifo.npz": "not a regular file",
        "big.npz": "over the bound of 4096 bytes",
        "deflated.npz": "not an uncompressed .npz",
        "bomb.npz": "tensors exceed the bound of 4096 bytes",
        "pickle.npz": "header does not match",
        "lie.npz": "header does not match",
        "absent.npz": "missing or not a plain file",
        "../ok.npz": "names no update file",
    }
    for name, words in expected.items():
        with pytest.raises(SandboxFailure) as caught:
            read(tmp_path, name)
        assert caught.value.code == "output" and words in caught.value.reason, (name, caught.value.reason)


def test_rejection_reasons_never_repeat_what_the_plan_chose() -> None:
    secret = 63.25  # a patient's value a plan tries to send out
    cases = [
        LocalResult(dict(WEIGHTS), {"age_of_patient_7": secret}),
        LocalResult(dict(WEIGHTS), {"accuracy": secret}),
        LocalResult({**WEIGHTS, "age_of_patient_7": np.full(1, secret, np.float32)}, {}),
        LocalResult({**WEIGHTS, "linear.bias": np.zeros(63, np.float32)}, {}),
    ]
    for result in cases:
        with pytest.raises(InvalidUpdate) as caught:
            validate_update(WEIGHTS, result, kind="train")
        assert "63" not in str(caught.value) and "patient" not in str(caught.value)
    with pytest.raises(InvalidUpdate, match="'local_steps' is outside its range"):
        validate_update(
            WEIGHTS, LocalResult(dict(WEIGHTS), {"local_steps": 101.0}), kind="train", max_local_steps=100
        )


def test_plan_approval_reads_the_plan_without_running_it(site: Site, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    plan_file = tmp_path / "plan.py"
    plan_file.write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from clinical_node.plans.logistic_regression import build_model, train, evaluate\n"
        "METRICS = ('loss', 'accuracy')\n"
    )
    approval = site.plans.approve(TrainingPlan.from_file(plan_file))
    assert not marker.exists()
    assert site.plans.plan(approval.sha256).check() == ("loss", "accuracy")
    bad = tmp_path / "bad.py"
    bad.write_text("from x import build_model, train, evaluate\nMETRICS = ('loss', 'patient_age')\n")
    with pytest.raises(
        TrainingPlanError, match=r"METRICS \['patient_age'\] are not in the site's metric vocabulary"
    ):
        site.plans.approve(TrainingPlan.from_file(bad))
    (tmp_path / "half.py").write_text("def train(m, x, y, h):\n    return {}\n")
    with pytest.raises(TrainingPlanError, match="lacks build_model, evaluate"):
        site.plans.approve(TrainingPlan.from_file(tmp_path / "half.py"))


def test_folders_of_a_dead_node_are_swept(tmp_path: Path) -> None:
    from clinical_node.sandbox.executor import sweep_stale_folders

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"paroma-sandbox-{dead.pid}-abc"
    (stale / "in").mkdir(parents=True)
    (stale / "in" / "data-1.npz").write_bytes(b"patient tensors")
    alive = tmp_path / f"paroma-sandbox-{os.getpid()}-def"
    alive.mkdir()
    assert sweep_stale_folders(tmp_path) == 1
    assert not stale.exists() and alive.exists()
