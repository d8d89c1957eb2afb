"""The job service's SuperLink runner against a real local Flower deployment started in the
test: ``flower-superlink --insecure`` and one ``flower-supernode --insecure`` per UCI site
(``--node-config site-dir=…``). A job submitted to the service becomes a Flower run (``flwr
run`` over the Control API), its ServerApp writes admissions and checkpoints to the run's
output folder, and the job completes with its model registered. The ServerApp's process is
killed (SIGKILL) after the first round: the run ends without a result, the service submits a
new run, and that one resumes after the checkpointed round."""

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

    def serverapp_pids(self) -> list[int]:
        """The ServerApp processes started under this test's SuperLink (through its SuperExec)."""
        link = self.processes[0].pid

        def parent(pid: int) -> int:
            stat = Path(f"/proc/{pid}/stat").read_text()
            return int(stat.rsplit(")", 1)[1].split()[1])

        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if b"flwr-serverapp" not in (entry / "cmdline").read_bytes():
                    continue
                pid = int(entry.name)
                while pid > 1 and pid != link:
                    pid = parent(pid)
                if pid == link:
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
        return found

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
    runner = SuperLinkRunner(
        deployment.address, tmp_path / "flwr-cli", expected_sites=2, poll_s=0.5, status_s=2.0
    )
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
                json=heart_job(name="on-superlink", rounds=2, training={"local_steps": 5}),
                headers=headers,
            ).json()
            first = wait_for_job(server.url, headers, job["id"], ("running", *FINAL), timeout=600)
            deadline = time.monotonic() + 600
            while first["completed_rounds"] < 1 and first["state"] not in FINAL:
                assert time.monotonic() < deadline, first
                time.sleep(0.2)
                first = httpx.get(f"{server.url}/api/jobs/{job['id']}", headers=headers).json()
            assert first["state"] == "running" and first["completed_rounds"] < 2, first
            killed = deployment.serverapp_pids()
            assert killed, "no ServerApp process found"
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
            done = wait_for_job(server.url, headers, job["id"], FINAL, timeout=900)
            logs = [
                line["message"]
                for line in httpx.get(f"{server.url}/api/jobs/{job['id']}/logs", headers=headers).json()
            ]
    finally:
        service.stop()
    assert done["state"] == "completed", done["reason"]
    assert done["run_id"].isdigit() and done["run_id"] != first["run_id"]  # a second Flower run
    assert runner.status(done["run_id"])[0] == "finished:completed"
    assert runner.status(first["run_id"])[0].startswith("finished:")
    again = [m for m in logs if m.startswith(f"Flower run {first['run_id']} ended")]
    assert len(again) == 1 and f"submitted again as run {done['run_id']}" in again[0], logs
    assert done["participating_sites"] == ["cleveland", "hungarian"]
    assert [r["round"] for r in done["rounds"]] == [1, 2]
    assert done["rounds"][: first["completed_rounds"]] == first["rounds"]
    for n in (1, 2):
        assert sum(m.startswith(f"round {n} completed") for m in logs) == 1, logs
    assert set(done["rounds"][0]["sites"]) == {"cleveland", "hungarian"}
    assert done["model_id"].startswith("on-superlink-")
    run_folder = tmp_path / "service" / "runs" / job["id"]
    assert (run_folder / "checkpoint.json").is_file() and (run_folder / "federation.json").is_file()
