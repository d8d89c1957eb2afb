"""The launcher's parts: the service plan, detached process trees, and `up` failing cleanly."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from clinical_node.datasets.synthetic import fit_profile, synthetic_rows
from clinical_node.datasets.uci_heart import rows_bundle
from clinical_node.site import Site
from deploy import launcher
from deploy.federation_config import DEFAULT_CONFIG, load_federation_config
from deploy.processes import is_running, process_tree, read_record, start_detached, stop
from deploy.services import plan
from deploy.workdir import Workdir, ensure_credentials, ensure_site

# A process that starts a child in a session of its own (as Flower's SuperLink and SuperNode
# start SuperExec), then waits.
TREE = (
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True)\n"
    "print('started', flush=True)\n"
    "time.sleep(120)\n"
)


def test_plan_orders_the_services_and_sends_each_supernode_through_its_ingress(tmp_path: Path) -> None:
    config = replace(load_federation_config(DEFAULT_CONFIG), workdir=tmp_path / "state")
    workdir = Workdir(config.workdir)
    creds = ensure_credentials(config, workdir)
    services = plan(config, workdir, creds)
    kinds = [s.kind for s in services]
    assert kinds == ["relay"] * 10 + ["traffic-engine", "superlink"] + ["fhir"] * 4 + ["supernode"] * 4
    superlink = next(s for s in services if s.kind == "superlink")
    argv = list(superlink.argv)
    assert "--enable-supernode-auth" in argv and "--insecure" not in argv
    assert "--disable-runtime-dependency-installation" in argv
    assert argv[argv.index("--ssl-certfile") + 1] == str(creds.aggregator.cert_path)
    for site in config.sites:
        node = next(s for s in services if s.name == f"supernode-{site.id}")
        args = list(node.argv)
        # The SuperLink is reached only through the site's path: its ingress, never its port.
        assert args[args.index("--superlink") + 1] == f"127.0.0.1:{site.ingress_port}"
        assert args[args.index("--root-certificates") + 1] == str(creds.ca)
        assert args[args.index("--auth-supernode-private-key") + 1] == str(
            creds.supernodes[site.id].private_key_path
        )
        assert f'site-dir="{workdir.site(site.id)}"' in args
        assert node.env["FLWR_HOME"] != superlink.env["FLWR_HOME"] and node.netns is None
        fhir = next(s for s in services if s.name == f"fhir-{site.id}")
        assert "--ssl-certfile" in fhir.argv and fhir.health.kind == "https" and fhir.health.ca == creds.ca
    # The aggregator's certificate names every address a SuperNode may dial.
    assert {"127.0.0.1", *(s.netns_host_address for s in config.sites)} <= set(creds.aggregator.hosts)

    in_namespaces = plan(config, workdir, creds, netns=True)
    for site in config.sites:
        node = next(s for s in in_namespaces if s.name == f"supernode-{site.id}")
        args = list(node.argv)
        assert node.netns == f"paroma-local-4-{site.id}"
        assert args[args.index("--superlink") + 1] == f"{site.netns_host_address}:{site.ingress_port}"
    assert all(s.address.startswith("0.0.0.0:") for s in in_namespaces if s.kind == "relay")


def test_stop_ends_the_whole_process_tree_and_a_reused_pid_is_not_taken_for_the_service(
    tmp_path: Path,
) -> None:
    record = start_detached(
        "tree", [sys.executable, "-c", TREE], log_path=tmp_path / "tree.log", pid_path=tmp_path / "tree.pid"
    )
    deadline = time.monotonic() + 30
    while "started" not in (tmp_path / "tree.log").read_text().splitlines() and time.monotonic() < deadline:
        time.sleep(0.05)
    tree = process_tree(record.pid)
    assert len(tree) == 2 and is_running(record)
    assert read_record(tmp_path / "tree.pid") == record
    assert stop(record, grace_s=2)
    assert not is_running(record)
    for pid in tree:
        state = Path(f"/proc/{pid}/stat")
        assert not state.exists() or state.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    assert not stop(record)  # idempotent
    # Another process now holding the pid (simulated by a different start time) is not ours.
    assert not is_running(replace(record, pid=1))


@pytest.mark.slow
def test_up_stops_with_the_failing_service_named_and_leaves_nothing_running(tmp_path: Path) -> None:
    for _attempt in range(20):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1] // 10 * 10
        base = min(base, 60_000)
        config_path = tmp_path / "fed.toml"
        config_path.write_text(
            f"""
[federation]
name = "broken"
workdir = "state"
[aggregator]
superlink_port = {base + 9}
[pce]
port = {base + 8}
[relays]
base_port = {base - 200}
control_base_port = {base - 100}
[[site]]
id = "va"
node = "hospital-va"
data = "uci:va"
consent = "full"
fhir_port = {base + 7}
supernode_port = {base + 6}
ingress_port = {base + 5}
"""
        )
        config = load_federation_config(config_path)
        blocker = socket.socket()
        try:
            blocker.bind(("127.0.0.1", config.relay_port("router-3")))
        except OSError:  # held by another test process (the suite runs on two workers): new ports
            blocker.close()
            continue
        break
    else:
        pytest.fail("no free block of ports for the test federation")
    blocker.listen()
    try:
        with pytest.raises(launcher.LaunchError) as caught:
            launcher.up(config, timeout_s=60)
    finally:
        blocker.close()
    assert caught.value.service == "relay-router-3"
    assert "exited while starting" in caught.value.reason
    assert "address already in use" in caught.value.tail.lower()
    workdir = Workdir(config.workdir)
    assert not list(workdir.run.glob("*.pid"))
    assert all(not r.up and r.pid is None for r in launcher.status(config))
    # The CLI says the same in one line on stderr with a non-zero exit.
    result = subprocess.run(
        [str(Path(sys.executable).with_name("paroma")), "status", "--config", str(config_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1


def test_sites_are_built_once_from_synthetic_data_and_fhir_bundles(tmp_path: Path) -> None:
    bundle = tmp_path / "bundles"
    bundle.mkdir()
    (bundle / "one.json").write_text(
        json.dumps(rows_bundle("alpha", "Alpha", synthetic_rows(fit_profile("va"), 5, seed=1)))
    )
    (tmp_path / "bad.json").write_text("{not json")
    text = """
[federation]
name = "data"
workdir = "state"
[[site]]
id = "syn"
node = "hospital-va"
data = "synthetic:12"
consent = "full"
fhir_port = 40001
[[site]]
id = "files"
node = "hospital-cleveland"
data = "bundles"
consent = "permit=0.5,opt_out=0.5"
fhir_port = 40002
[[site]]
id = "bad"
node = "hospital-hungary"
data = "bad.json"
fhir_port = 40003
"""
    (tmp_path / "fed.toml").write_text(text)
    config = load_federation_config(tmp_path / "fed.toml")
    workdir = Workdir(config.workdir)
    for site_id, patients in (("syn", 12), ("files", 5)):
        folder = ensure_site(config, config.site(site_id), workdir)
        site = Site.open(folder)
        try:
            assert len(list(site.fhir.patients())) == patients
        finally:
            site.close()
    stamp = (workdir.site("syn") / "site.toml").stat().st_mtime_ns
    ensure_site(config, config.site("syn"), workdir)  # kept, not rebuilt
    assert (workdir.site("syn") / "site.toml").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match=r"bad\.json is not a readable JSON FHIR Bundle"):
        ensure_site(config, config.site("bad"), workdir)
    assert not workdir.site("bad").exists() and not list(workdir.sites.glob(".*building"))
