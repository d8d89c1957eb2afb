"""The hostile test suite: training plans that attack the site, run through a real clinical
node with its real sandbox (the strongest backend this machine has: bubblewrap once the
set-up installed it). Each attack must be contained and reported with its specific reason,
leak nothing in that reason, and leave the node serving the next round.

Limits are small so that the suite is quick: 2 s of CPU per task, 16 MiB files, 64 MiB of
scratch, 3 GiB of address space, 32 processes.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from clinical_node.datasets.uci_heart import hospital_bundle
from clinical_node.node import ClinicalNode, RoundFailure, UnfilteredView
from clinical_node.plans import TrainingPlan
from clinical_node.sandbox import SandboxExecutor, SandboxLimits
from clinical_node.sandbox.backends import SLOTS_PER_PROCESS, UID_BASE
from clinical_node.sandbox.limits import GiB, MiB
from clinical_node.site import Site
from paroma.demo import DEMO_POLICY, demo_job
from paroma.jobspec import JobSpec, parse_job_spec

PLANS = Path(__file__).parent / "hostile_plans"
LIMITS = SandboxLimits(
    address_space_bytes=3 * GiB,
    processes=32,
    file_size_bytes=16 * MiB,
    scratch_bytes=64 * MiB,
    cpu_seconds_per_task=2.0,
    start_timeout_s=90.0,
)


class Listener:
    """A real TCP server on the host's 127.0.0.1 that records every connection."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.sock.settimeout(0.2)
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.stop = True
        self.thread.join(timeout=2)
        self.sock.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClinicalNode]:
    root = tmp_path_factory.mktemp("hostile") / "site"
    site = Site.create(root, "switzerland", "Hostile Test Site", policy=DEMO_POLICY)
    site.fhir.ingest_bundle(hospital_bundle("switzerland"))
    site.plans.approve_builtin("logistic-regression", by="test")
    executor = SandboxExecutor.strongest(private_paths=[site.root], limits=LIMITS)
    assert isinstance(executor, SandboxExecutor), executor.reason
    yield ClinicalNode(site, view=UnfilteredView(site), executor=executor)
    executor.close()
    site.close()


def hostile_job(
    node: ClinicalNode, tmp_path: Path, name: str, timeout_s: float = 20.0, **fill: str
) -> JobSpec:
    text = (PLANS / f"{name}.py").read_text()
    for key, value in fill.items():
        text = text.replace(f"__{key.upper()}__", value)
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    plan = TrainingPlan.from_file(path, name)
    node.site.plans.approve(plan, by="test")
    doc = demo_job(rounds=3).to_dict()
    doc["name"] = f"hostile-{name.replace('_', '-')}"
    doc["plan"] = {"reference": str(path), "sha256": plan.sha256}
    doc["deadline"] = {"round_timeout_s": timeout_s}
    doc["training"]["local_steps"] = 5
    return parse_job_spec(doc)


def initial_weights() -> dict[str, np.ndarray]:
    return {"linear.weight": np.zeros((1, 13), np.float32), "linear.bias": np.zeros((1,), np.float32)}


def stray_processes(executor: SandboxExecutor) -> list[int]:
    """Live processes with one of this node process's sandbox uids that belong to no
    running worker (what a killed sandbox would leave behind)."""
    base = UID_BASE + (os.getpid() % (1 << 22)) * SLOTS_PER_PROCESS
    live = {w.uid for w in executor._workers.values()}  # type: ignore[attr-defined]
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                status = Path(f"/proc/{entry.name}/status").read_text()
            except OSError:
                continue
            uid = int(status.split("Uid:")[1].split()[0])
            state = status.split("State:")[1].split()[0]
            if base <= uid < base + SLOTS_PER_PROCESS and uid not in live and state not in ("Z", "X"):
                found.append(int(entry.name))
    return found


def serves_next_round(node: ClinicalNode, server_round: int) -> None:
    job = demo_job(rounds=3)
    report = node.train(job, server_round, initial_weights())
    assert report.weights is not None and np.isfinite(report.weights["linear.weight"]).all()
    assert report.isolation == node.executor.isolation
    assert node.evaluate(job, server_round, report.weights).metrics["accuracy"] >= 0.0


# (plan, expected failure code, words the reason must contain, round timeout, the kind of round)
CASES = [
    ("net_external", "network", "network", 20.0, "train"),
    ("fork_bomb", "processes", "32 processes", 20.0, "train"),
    ("memory_bomb", "memory", "memory limit of 3072 MiB", 20.0, "train"),
    # a generous deadline: on a busy machine 2 s of CPU can take many seconds of wall time
    ("infinite_loop", "cpu", "CPU-time limit of 2 s", 90.0, "train"),
    ("sleep_past_deadline", "deadline", "s deadline; the sandbox was killed", 2.0, "train"),
    ("big_output", "file-size", "16 MiB", 20.0, "train"),
    ("many_files", "scratch", "scratch quota of 64 MiB", 20.0, "train"),
    ("nan_update", "invalid-update", "NaN", 20.0, "train"),
    ("wrong_shape", "invalid-update", "does not have the model's shape (1, 13)", 20.0, "train"),
    ("extra_tensor", "invalid-update", "1 unexpected tensor(s)", 20.0, "train"),
    (
        "smuggle_metric_names",
        "invalid-update",
        "5 metric(s) are not among the plan's declared",
        20.0,
        "train",
    ),
    ("smuggle_metric_values", "invalid-update", "'accuracy' is outside its range [0, 1]", 20.0, "evaluate"),
    ("smuggle_exception", "plan-raised", "raised an exception", 20.0, "train"),
]


@pytest.mark.parametrize(("plan", "code", "words", "timeout", "kind"), CASES, ids=[c[0] for c in CASES])
def test_hostile_plan_is_contained(
    node: ClinicalNode, tmp_path: Path, plan: str, code: str, words: str, timeout: float, kind: str
) -> None:
    job = hostile_job(node, tmp_path, plan, timeout)
    with pytest.raises(RoundFailure) as caught:
        if kind == "train":
            node.train(job, 1, initial_weights())
        else:
            node.evaluate(job, 1, initial_weights())
    assert caught.value.code == code, str(caught.value)
    assert words in str(caught.value)
    # Nothing of the patients' data is in the reason (the plans put x[0] in theirs).
    assert "patient" not in str(caught.value).lower()
    assert stray_processes(node.executor) == []  # type: ignore[arg-type]
    serves_next_round(node, 2)


def test_loopback_server_of_the_host_is_unreachable(node: ClinicalNode, tmp_path: Path) -> None:
    listener = Listener()
    try:
        job = hostile_job(node, tmp_path, "net_loopback", port=str(listener.port))
        with pytest.raises(RoundFailure) as caught:
            node.train(job, 1, initial_weights())
    finally:
        listener.close()
    assert caught.value.code == "network", str(caught.value)
    assert listener.accepted == 0
    serves_next_round(node, 2)


def test_site_secrets_are_unreadable(node: ClinicalNode, tmp_path: Path) -> None:
    targets = [str(node.site.root / "fhir.sqlite"), str(node.site.key_path), "/etc/shadow"]
    for target in targets:
        assert Path(target).stat().st_size > 0  # the node itself can read each
    job = hostile_job(node, tmp_path, "read_file", targets=json.dumps(targets))
    with pytest.raises(RoundFailure) as caught:
        node.train(job, 1, initial_weights())
    # the plan returns normally as soon as one read works: a failure means none did
    assert caught.value.code == "filesystem", str(caught.value)
    serves_next_round(node, 2)


def test_writes_outside_scratch_are_refused(node: ClinicalNode, tmp_path: Path) -> None:
    escapes = [tmp_path / "escaped.txt", node.site.root / "escaped.txt", Path("/etc/paroma-escaped")]
    targets = [*map(str, escapes), "/sandbox/in/escaped.txt"]  # the last: its own input folder
    job = hostile_job(node, tmp_path, "write_outside", targets=json.dumps(targets))
    with pytest.raises(RoundFailure) as caught:
        node.train(job, 1, initial_weights())
    assert caught.value.code == "filesystem", str(caught.value)
    assert not any(path.exists() for path in escapes)
    serves_next_round(node, 2)


def test_symlinked_output_is_not_followed_by_the_node(node: ClinicalNode, tmp_path: Path) -> None:
    key = node.site.root / "keys" / "store.key"
    job = hostile_job(node, tmp_path, "symlink_output", target=str(key))
    with pytest.raises(RoundFailure) as caught:
        node.train(job, 1, initial_weights())
    assert caught.value.code == "output", str(caught.value)
    assert "not a plain file" in str(caught.value)
    serves_next_round(node, 2)


def test_sandbox_is_the_strongest_and_kills_no_benign_worker(node: ClinicalNode) -> None:
    assert node.executor.isolation == "bubblewrap"  # the set-up installs bubblewrap
    job = demo_job(rounds=3)
    first = node.train(job, 1, initial_weights())
    worker = node.executor._workers[job.sha256]  # type: ignore[attr-defined]
    pid = worker.process.pid
    node.train(job, 2, first.weights)
    assert worker.process.pid == pid  # one worker for the job's lifetime
    assert list(worker.layout.outputs.iterdir()) == [] and list(worker.layout.scratch.iterdir()) == []
