"""Resilience: the job service process is killed (SIGKILL) in the middle of a job and started
again on the same folder; the job resumes after its last checkpointed round and completes
with every round exactly once, the rounds before the kill untouched."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import copy_uci_sites, free_port, heart_job, wait_for_job

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
FINAL = ("completed", "failed", "cancelled")


class ServiceProcess:
    """``paroma job serve`` in its own process group (so its sandbox workers can be reaped)."""

    def __init__(self, root: Path, sites: Path, port: int, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self._log = open(log, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "paroma.cli",
                "job",
                "serve",
                "--root",
                str(root),
                "--sites-root",
                str(sites),
                "--port",
                str(port),
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{self.url}/api/job-spec.schema.json", timeout=2).raise_for_status()
                return
            except httpx.HTTPError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the job service did not start; see {log}") from None
                time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the service, then whatever it started."""
        self.process.kill()
        self.process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()


@pytest.fixture
def service_folder(uci_sites_template: Path, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    yield tmp_path / "service", copy_uci_sites(uci_sites_template, tmp_path / "sites")


def test_killed_service_resumes_the_job_after_its_last_completed_round(
    service_folder: tuple[Path, Path], tmp_path: Path
) -> None:
    root, sites = service_folder
    token = subprocess.run(
        [
            sys.executable,
            "-m",
            "paroma.cli",
            "job",
            "token",
            "--root",
            str(root),
            "--role",
            "data-scientist",
            "--subject",
            "carol",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}
    port = free_port()
    first = ServiceProcess(root, sites, port, tmp_path / "service.log")
    try:
        job = httpx.post(
            f"{first.url}/api/jobs",
            json=heart_job(name="resumed", rounds=6, training={"local_steps": 60}),
            headers=headers,
        ).json()
        deadline = time.monotonic() + 300
        while True:
            status = httpx.get(f"{first.url}/api/jobs/{job['id']}", headers=headers).json()
            if status["completed_rounds"] >= 1 or status["state"] in FINAL:
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
    finally:
        first.kill()
    assert status["state"] == "running", f"the job ended before the service could be killed: {status}"
    before = status["rounds"]
    assert 1 <= len(before) < 6

    second = ServiceProcess(root, sites, port, tmp_path / "service.log")
    try:
        done = wait_for_job(second.url, headers, job["id"], FINAL)
        logs = [
            line["message"]
            for line in httpx.get(f"{second.url}/api/jobs/{job['id']}/logs", headers=headers).json()
        ]
    finally:
        second.kill()
    assert done["state"] == "completed", done["reason"]
    assert [r["round"] for r in done["rounds"]] == [1, 2, 3, 4, 5, 6]
    # the rounds completed before the kill were kept as they were, not run again
    assert done["rounds"][: len(before)] == before
    resumed = [m for m in logs if m.startswith("the job service restarted")]
    assert len(resumed) == 1 and resumed[0].startswith(
        "the job service restarted; the job resumes after round"
    )
    after = int(resumed[0].rsplit(" ", 1)[1])
    assert after >= len(before)
    for n in range(1, 7):
        assert sum(m.startswith(f"round {n} completed") for m in logs) == 1, (n, logs)
    assert done["model_id"] and done["participating_sites"] == ["cleveland", "hungarian"]
