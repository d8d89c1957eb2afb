"""The job service's SuperLink runner against a real local Flower deployment started in the
test: ``flower-superlink --insecure`` and one ``flower-supernode --insecure`` per UCI site
(``--node-config site-dir=…``). A job submitted to the service becomes a Flower run (``flwr
run`` over the Control API), its ServerApp writes admissions and checkpoints to the run's
output folder, and the job completes with its model registered."""

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
from conftest import LiveServer, copy_uci_sites, free_port, heart_job, wait_for_job

from aggregator.jobs.app import create_app
from aggregator.jobs.service import JobService
from aggregator.jobs.superlink import SuperLinkRunner

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FINAL = ("completed", "failed", "cancelled")


class Deployment:
    """A SuperLink and its SuperNodes, each in its own process group and FLWR_HOME."""

    def __init__(self, folder: Path, sites: list[Path]) -> None:
        self.folder = folder
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.processes: list[subprocess.Popen[bytes]] = []
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "OMP_NUM_THREADS": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        }
        link_home = folder / "superlink"
        link_home.mkdir(parents=True)
        self._start(
            [
                "flower-superlink",
                "--insecure",
                "--disable-runtime-dependency-installation",
                "--database",
                str(link_home / "state.db"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            {**env, "FLWR_HOME": str(link_home)},
            folder / "superlink.log",
        )
        for site in sites:
            home = folder / f"supernode-{site.name}"
            home.mkdir()
            self._start(
                [
                    "flower-supernode",
                    "--insecure",
                    "--superlink",
                    self.address,
                    "--node-config",
                    f'site-dir="{site}"',
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(free_port()),
                ],
                {**env, "FLWR_HOME": str(home)},
                folder / f"supernode-{site.name}.log",
            )

    def _start(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        with open(log, "wb") as out:
            self.processes.append(
                subprocess.Popen(
                    [str(BIN / argv[0]), *argv[1:]], env=env, stdout=out, stderr=out, start_new_session=True
                )
            )

    def close(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def deployment(uci_sites_template: Path, tmp_path: Path) -> Iterator[Deployment]:
    sites = copy_uci_sites(uci_sites_template, tmp_path / "sites")
    made = Deployment(tmp_path / "flower", [sites / "cleveland", sites / "hungarian"])
    try:
        yield made
    finally:
        made.close()


def test_a_job_runs_as_a_flower_run_on_the_superlink(deployment: Deployment, tmp_path: Path) -> None:
    runner = SuperLinkRunner(deployment.address, tmp_path / "flwr-cli", expected_sites=2, poll_s=0.5)
    service = JobService(tmp_path / "service", runner)
    token = service.tokens.issue("data-scientist", "dana")
    headers = {"Authorization": f"Bearer {token}"}
    service.start()
    try:
        with LiveServer(create_app(service)) as server:
            # the SuperLink answers its Control API before the test submits
            deadline = time.monotonic() + 60
            while True:
                try:
                    runner.runs()
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            job = httpx.post(
                f"{server.url}/api/jobs",
                json=heart_job(name="on-superlink", rounds=1, training={"local_steps": 5}),
                headers=headers,
            ).json()
            done = wait_for_job(server.url, headers, job["id"], FINAL, timeout=600)
    finally:
        service.stop()
    assert done["state"] == "completed", done["reason"]
    assert done["run_id"].isdigit()  # a Flower run id
    assert runner.status(done["run_id"])[0] == "finished:completed"
    assert done["participating_sites"] == ["cleveland", "hungarian"]
    assert [r["round"] for r in done["rounds"]] == [1]
    assert set(done["rounds"][0]["sites"]) == {"cleveland", "hungarian"}
    assert done["model_id"].startswith("on-superlink-")
    run_folder = tmp_path / "service" / "runs" / job["id"]
    assert (run_folder / "checkpoint.json").is_file() and (run_folder / "federation.json").is_file()
