"""`paroma up`: the real multi-process federation on this machine, through the relays.

One federation (4 UCI hospitals on the demo network) is started once for the module with the
CLI, as an operator would: relays, the Secure Traffic Engine driving them, Flower's SuperLink
with TLS and SuperNode authentication, each site's HTTPS FHIR API and SuperNode dialling its
path's ingress; as root each SuperNode runs in its own network namespace (``--netns``). Then:
a 4-site job runs to completion through the relays; a SuperNode with a key the federation did
not register cannot join; and a job goes on through a relay killed on an active path, a CVSS 9.8
vulnerability on a relay of an active path, and a site dying mid-round and rejoining later.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy import launcher
from deploy.federation_config import FederationConfig, load_federation_config
from deploy.flower_jobs import submit, wait
from deploy.netns import can_use_netns
from deploy.processes import is_running, kill_now, start_detached, stop
from deploy.workdir import RELAY_CONTROL_FILE, Workdir
from interconnect.pki import create_supernode_auth_key
from paroma.demo import demo_job
from protection_layer.audit import AuditLog

# A real federation's rounds take minutes on a loaded 2-core machine: the project's 600 s
# per-test limit (pyproject) would cut the fixture's `up` plus a job; pytest-timeout's own
# marker gives these tests a larger one.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parent.parent
PAROMA = str(Path(sys.executable).with_name("paroma"))
NETNS = can_use_netns()
SITES = ("cleveland", "hungarian", "switzerland", "va")
NODES = {
    "cleveland": "hospital-cleveland",
    "hungarian": "hospital-hungary",
    "switzerland": "hospital-switzerland",
    "va": "hospital-va",
}


def _free_block(size: int) -> int:
    """A base port with ``size`` consecutive free ports after it."""
    for base in range(31_000 + (os.getpid() % 200) * 100, 60_000, 97):
        sockets = []
        try:
            for port in range(base, base + size):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                sockets.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no block of free ports")


def _config_text(base: int) -> str:
    sites = "\n".join(
        f"""
[[site]]
id = "{site}"
node = "{NODES[site]}"
data = "uci:{site}"
consent = "demo"
fhir_port = {base + 60 + i}
supernode_port = {base + 70 + i}
ingress_port = {base + 80 + i}
"""
        for i, site in enumerate(SITES)
    )
    return f"""
[federation]
name = "up-test"
workdir = "state"
topology = "demo"
min_security = 50

[aggregator]
node = "aggregator"
superlink_port = {base + 90}

[pce]
port = {base + 91}

[relays]
base_port = {base}
control_base_port = {base + 20}
{sites}
"""


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [PAROMA, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FederationConfig]:
    folder = tmp_path_factory.mktemp("federation")
    path = folder / "federation.toml"
    path.write_text(_config_text(_free_block(100)))
    args = ["up", "--config", str(path), "--timeout", "300", *(["--netns"] if NETNS else [])]
    started = cli(*args)
    config = load_federation_config(path)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield config
    finally:
        records = [
            launcher._record(Workdir(config.workdir), s.name)
            for s in launcher._recorded_services(Workdir(config.workdir))
        ]
        stopped = cli("down", "--config", str(path))
        assert stopped.returncode == 0, stopped.stderr
        assert all(r is None or not is_running(r) for r in records), "a service outlived `paroma down`"
        assert launcher.down(config) == []  # idempotent


def engine_url(config: FederationConfig, path: str) -> str:
    return f"https://{config.host}:{config.pce_port}{path}"


def ca_context(config: FederationConfig) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(Workdir(config.workdir).pki / "ca.pem"))


def controller(config: FederationConfig) -> dict[str, Any]:
    response = httpx.get(engine_url(config, "/api/transport"), verify=ca_context(config), timeout=10)
    response.raise_for_status()
    return dict(response.json())


def relay_table(config: FederationConfig, node: str) -> dict[str, Any]:
    token = (Workdir(config.workdir).relays / RELAY_CONTROL_FILE).read_text().strip()
    url = f"https://{config.host}:{config.relay_control_port(node)}/routes"
    response = httpx.get(
        url, headers={"Authorization": f"Bearer {token}"}, verify=ca_context(config), timeout=10
    )
    response.raise_for_status()
    return dict(response.json())


def site_path(config: FederationConfig, site: str) -> list[str]:
    return list(controller(config)["sites"][site]["nodes"])


def audited_rounds(config: FederationConfig, site: str, job_sha256: str) -> list[int]:
    """The rounds the site's audit log says it trained in for the job (one entry per update)."""
    log = AuditLog.for_site(Workdir(config.workdir).site(site))
    return [
        int(e["data"]["round"])
        for e in log.entries()
        if e.get("kind") == "round"
        and e["data"].get("job") == job_sha256
        and e["data"].get("kind") == "train"
        and e["data"].get("status") == "ok"
    ]


def transit_relay(config: FederationConfig) -> str:
    """A relay on cleveland's path that the path can avoid: past cleveland's and hungarian's
    first router, before the aggregator's. On the demo network that is router-5 at first (on
    cleveland's and hungarian's paths, and switzerland's only way in), router-3 once
    cleveland's path left router-5."""
    state = controller(config)["sites"]
    fixed = {state[s]["nodes"][2] for s in ("cleveland", "hungarian")} | {state["cleveland"]["nodes"][-3]}
    candidates = [n for n in state["cleveland"]["nodes"][3:-3] if n not in fixed]
    assert candidates, f"no avoidable relay on {state['cleveland']['nodes']}"
    return str(candidates[0])


def wait_until(predicate: Any, timeout: float, what: str, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def test_up_runs_a_four_site_job_through_relays_with_tls(
    federation: FederationConfig, tmp_path: Path
) -> None:
    status = cli("status", "--config", str(federation.source), "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    rows = json.loads(status.stdout)
    kinds = {r["kind"] for r in rows}
    assert kinds == {"relay", "traffic-engine", "superlink", "fhir", "supernode"}
    assert len(rows) == len(federation.relay_nodes) + 2 + 2 * len(SITES)
    assert all(r["health"] == "up" and r["pid"] for r in rows)

    # Every site's SuperNode dials the first relay of its installed path, not the SuperLink.
    state = controller(federation)
    for i, site in enumerate(SITES):
        nodes = state["sites"][site]["nodes"]
        assert nodes[0] == NODES[site] and nodes[-1] == "aggregator" and len(nodes) >= 3
        assert state["sites"][site]["ingress"][1] == federation.sites[i].ingress_port

    # TLS only: the SuperLink and the FHIR APIs refuse plain HTTP and unknown trust anchors.
    link = f"{federation.host}:{federation.aggregator.superlink_port}"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{link}/", timeout=5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://{link}/", timeout=5)
    fhir = httpx.get(
        f"https://{federation.host}:{federation.sites[0].fhir_port}/fhir/metadata",
        verify=ca_context(federation),
        timeout=10,
    )
    assert fhir.status_code == 200 and fhir.json()["resourceType"] == "CapabilityStatement"

    before = {s: _path_bytes(federation, s) for s in SITES}
    out = tmp_path / "run"
    ran = cli(
        "fed", "run", "--config", str(federation.source), "--rounds", "2", "--local-steps", "5",
        "--round-timeout", "120", "--out", str(out),
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    result = json.loads((out / "federation.json").read_text())
    assert result["status"] == "completed", result["reason"]
    assert [r["round"] for r in result["rounds"]] == [1, 2]
    for entry in result["rounds"]:
        assert sorted(entry["sites"]) == sorted(SITES)
        for site, outcome in entry["sites"].items():
            assert outcome["error"] == "" and outcome["n_train"] == outcome["cohort"]["train"] > 0, site
    # Each site's updates crossed its relays: the ingress relay carried bytes both ways.
    for site in SITES:
        down_bytes, up_bytes = _path_bytes(federation, site)
        assert down_bytes > before[site][0] and up_bytes > before[site][1], site
        assert audited_rounds(federation, site, result["job_sha256"]) == [1, 2]


def _path_bytes(config: FederationConfig, site: str) -> tuple[int, int]:
    first_relay = site_path(config, site)[1]
    for path in relay_table(config, first_relay)["paths"]:
        if path["path_id"] == f"site-{site}":
            return int(path["bytes_down"]), int(path["bytes_up"])
    return 0, 0


def test_a_supernode_whose_key_the_federation_did_not_register_cannot_join(
    federation: FederationConfig, tmp_path: Path
) -> None:
    workdir = Workdir(federation.workdir)
    known = launcher.registered_nodes(federation, workdir)
    intruder = create_supernode_auth_key(tmp_path / "keys", "intruder")
    ingress = controller(federation)["sites"]["cleveland"]["ingress"]
    env = {**launcher.base_env(), "FLWR_HOME": str(tmp_path / "flwr")}
    # Detached with a log file: the SuperNode's SuperExec child would hold a pipe open.
    record = start_detached(
        "intruder",
        [
            str(Path(sys.executable).with_name("flower-supernode")),
            "--root-certificates", str(workdir.pki / "ca.pem"),
            "--superlink", f"{federation.host}:{ingress[1]}",
            "--auth-supernode-private-key", str(intruder.private_key_path),
            "--node-config", f'site-dir="{workdir.site("cleveland")}"',
            "--port", str(_free_block(1)),
            "--max-retries", "2",
        ],
        log_path=tmp_path / "intruder.log",
        pid_path=tmp_path / "intruder.pid",
        env=env,
    )  # fmt: skip
    try:
        wait_until(lambda: not is_running(record), 180, "the intruding SuperNode to give up")
    finally:
        stop(record)
    output = (tmp_path / "intruder.log").read_text()
    assert "Failed to activate SuperNode" in output, output[-3000:]
    assert "Exit Code: 305" in output, output[-3000:]
    # The federation still holds exactly its four SuperNodes, all online.
    assert launcher.registered_nodes(federation, workdir) == known
    assert sorted(known.values()) == ["online"] * len(SITES)


def audited_kinds(config: FederationConfig, site: str, job_sha256: str, server_round: int) -> set[str]:
    log = AuditLog.for_site(Workdir(config.workdir).site(site))
    return {
        str(e.get("kind"))
        for e in log.entries()
        if e["data"].get("job") == job_sha256 and e["data"].get("round") == server_round
    }


def test_relay_failure_cve_and_site_death_mid_job(federation: FederationConfig, tmp_path: Path) -> None:
    job = demo_job(3)
    job = replace(job, training=replace(job.training, local_steps=5), round_timeout_s=90.0)
    submitted = submit(federation, job, out=tmp_path / "run")
    node_ids = dict(launcher._read_state(Workdir(federation.workdir))["node_ids"])

    def at_round(n: int) -> bool:
        # A job that ended before round n fails the test with the aggregator's reason.
        if submitted.result_path.is_file():
            ended = json.loads(submitted.result_path.read_text())
            assert ended["status"] == "completed", ended["reason"]
        return int(submitted.progress().get("round", 0)) >= n

    # 1. A relay on cleveland's active path dies in round 1: the path moves off it. (router-5
    # is also switzerland's only way in: its path is withdrawn, fail closed, until it is back.)
    wait_until(lambda: at_round(1), 300, "round 1")
    killed = transit_relay(federation)
    _, record = launcher.service(federation, f"relay-{killed}")
    assert record is not None
    kill_now(record)
    wait_until(
        lambda: killed not in site_path(federation, "cleveland"), 30, f"cleveland's path to leave {killed}"
    )
    reroutes = [r for r in controller(federation)["reroutes"] if r["path"] == "site-cleveland"]
    assert reroutes and killed in reroutes[-1]["old_nodes"] and killed not in reroutes[-1]["new_nodes"]
    cut_off = {
        r["path"].removeprefix("site-")
        for r in controller(federation)["reroutes"]
        if killed in r["old_nodes"] and not r["new_nodes"]
    }

    # 2. Round 2: the relay comes back; a CVSS 9.8 CVE lands on a relay of cleveland's path;
    # va's SuperNode is killed while it trains (after its cohort decision) and restarted.
    wait_until(lambda: at_round(2), 600, "round 2")
    launcher.restart(federation, f"relay-{killed}")
    # The CVE lands once the engine has the relay back (its path is the one to move to).
    wait_until(
        lambda: not controller(federation)["relays"][killed]["set_down"], 30, f"the engine to set {killed} up"
    )
    target = transit_relay(federation)
    added = httpx.post(
        engine_url(federation, f"/api/nodes/{target}/vulnerabilities"),
        json={"cve_id": "CVE-2022-44006"},
        verify=ca_context(federation),
        timeout=30,
    )
    assert added.status_code == 201, added.text
    wait_until(lambda: target not in site_path(federation, "cleveland"), 10, f"traffic to leave {target}")
    cve_moves = [
        r
        for r in controller(federation)["reroutes"]
        if r["path"] == "site-cleveland" and target in r["old_nodes"] and target not in r["new_nodes"]
    ]
    assert cve_moves and cve_moves[-1]["closed_connections"] >= 0
    # The relay that lost the path holds no connection on it any more.
    paths = {p["path_id"]: p for p in relay_table(federation, target)["paths"]}
    assert paths.get("site-cleveland", {}).get("connections_open", 0) == 0

    wait_until(
        lambda: "cohort" in audited_kinds(federation, "va", job.sha256, 2),
        300,
        "va to start training round 2",
        0.2,
    )
    _, va = launcher.service(federation, "supernode-va")
    assert va is not None
    kill_now(va)
    # Killed after its training's audit entry (its update never left): the update is lost with
    # the process and va trains round 2 again if asked again. Otherwise it trained it at most once.
    retrained = {2} if 2 in audited_rounds(federation, "va", job.sha256) else set()
    launcher.restart(federation, "supernode-va")
    # The restarted SuperNode is the same node of the federation (its key's), so the job's
    # admission still maps it to va.
    assert launcher._read_state(Workdir(federation.workdir))["node_ids"] == node_ids
    assert launcher.registered_nodes(federation, Workdir(federation.workdir))[int(node_ids["va"])] == "online"

    result = wait(federation, submitted, timeout_s=1200)
    assert result["status"] == "completed", result["reason"]
    rounds = {r["round"]: r["sites"] for r in result["rounds"]}
    assert sorted(rounds) == [1, 2, 3]
    for n, sites in rounds.items():
        assert sum(1 for s in sites.values() if s["n_train"] > 0) >= job.min_sites, (n, sites)
    # cleveland's path moved twice under it (relay killed, CVE); none of its updates was lost.
    assert all(rounds[n]["cleveland"]["n_train"] > 0 for n in (1, 2, 3)), rounds
    # va died in round 2: the round completed with the others, or with va's update if the
    # aggregator asked va again once it was back (it trained once: see below); va took part
    # again in round 3, as did every site a relay's death had cut off in round 1.
    for site in {"va"} | cut_off:
        assert rounds[3][site]["n_train"] > 0 and rounds[3][site]["error"] == "", (site, rounds[3])
    # No update lost or applied twice: every update the aggregator counted is one the site
    # audited exactly once, with the same number of examples every round.
    for site in SITES:
        counted = [n for n, sites in rounds.items() if sites.get(site, {}).get("n_train", 0) > 0]
        audited = audited_rounds(federation, site, result["job_sha256"])
        again = retrained if site == "va" else set()
        twice = {n for n in audited if audited.count(n) > 1}
        assert twice <= again and all(audited.count(n) <= 2 for n in twice), f"{site}: {audited}"
        assert set(counted) <= set(audited), site
        sizes = {sites[site]["n_train"] for sites in rounds.values() if sites.get(site, {}).get("n_train")}
        assert len(sizes) <= 1, site
    # No SuperNode gave up on its connection while its path moved (it retried onto the new one).
    for site in SITES:
        log = Workdir(federation.workdir).log(f"supernode-{site}").read_text()
        assert "SSL/TLS handshake error" not in log and "Giving up reconnection" not in log, site
    # Every service is healthy again.
    assert all(row.up for row in launcher.status(federation)), launcher.format_status(
        launcher.status(federation)
    )
