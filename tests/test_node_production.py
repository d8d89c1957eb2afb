"""A hospital's path to production, step by step through the CLI as the README gives it:
init, load FHIR bundles, consents, policies, plan approval, SuperNode key, join. The join
command is the SuperNode command `paroma up` runs for a site, and the node it makes admits
the federation's job."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from typer.testing import CliRunner

from clinical_node.datasets.uci_heart import hospital_bundle
from clinical_node.site import Site
from deploy.federation_config import DEFAULT_CONFIG, load_federation_config
from paroma.cli import app
from paroma.cli_node_ops import join_command
from paroma.demo import DEMO_ORGANIZATION, demo_job


def _ok(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_a_hospital_joins_step_by_step(tmp_path: Path) -> None:
    site = tmp_path / "h1"
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps(hospital_bundle("switzerland")))
    _ok("node", "init", str(site), "--id", "h1", "--name", "Hospital One")
    assert "resources stored" in _ok("node", "load", str(site), str(bundle))
    _ok("consent", "generate", str(site), "--mix", "permit=0.9,opt_out=0.1", "--seed", "1")
    _ok(
        "node", "policy", "set", str(site), "--purpose", "HRESCH", "--organization", DEMO_ORGANIZATION,
        "--min-cohort", "20", "--min-isolation", "subprocess",
    )  # fmt: skip
    shown = _ok("node", "policy", "show", str(site))
    assert 'purposes = ["HRESCH"]' in shown and "min_cohort = 20" in shown and 'engine = "embedded"' in shown
    _ok("node", "approve-plan", str(site), "logistic-regression", "--builtin")
    public = _ok("node", "keys", str(site))
    assert public.startswith("ecdsa-sha2-nistp384 ")
    key = site / "keys" / "supernode.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600

    # The node this folder makes admits the job (real protection layer and sandbox probe).
    from clinical_node.runtime import forget_nodes, open_node

    try:
        decision = open_node(site).admit(demo_job(2))
        assert decision.accepted, decision.reason
    finally:
        forget_nodes()

    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    printed = _ok(
        "node", "join", str(site), "--superlink", "127.0.0.1:9093", "--root-certificates", str(ca), "--print"
    ).strip()
    assert "--node-config site-dir=" in printed and f"--auth-supernode-private-key {key.resolve()}" in printed


def test_policy_changes_are_checked_whole(tmp_path: Path) -> None:
    site = tmp_path / "h2"
    _ok("node", "init", str(site), "--id", "h2", "--name", "Two")
    before = (site / "site.toml").read_text()
    bad = CliRunner().invoke(app, ["node", "policy", "set", str(site), "--min-isolation", "magic"])
    assert bad.exit_code == 2 and "policy.min_isolation: 'magic'" in bad.output
    bad = CliRunner().invoke(app, ["node", "policy", "set", str(site), "--engine", "opa"])
    assert bad.exit_code == 2 and "opa_url" in bad.output
    assert (site / "site.toml").read_text() == before
    _ok("node", "policy", "set", str(site), "--engine", "opa", "--opa-url", "http://127.0.0.1:8181")
    assert Site.open(site).settings["protection"]["opa_url"] == "http://127.0.0.1:8181"
    missing = CliRunner().invoke(
        app, ["node", "join", str(site), "--superlink", "x", "--root-certificates", "/no"]
    )
    assert missing.exit_code == 2
    for part in ("--superlink 'x': expected HOST:PORT", "/no: no such file", "paroma node keys"):
        assert part in missing.output


def test_join_runs_the_supernode_paroma_up_runs(tmp_path: Path) -> None:
    from deploy.services import plan
    from deploy.workdir import Workdir, ensure_credentials

    config = load_federation_config(DEFAULT_CONFIG)
    from dataclasses import replace

    config = replace(config, workdir=tmp_path / "work")
    workdir = Workdir(config.workdir)
    creds = ensure_credentials(config, workdir)
    for service in plan(config, workdir, creds):
        if service.kind != "supernode":
            continue
        site = config.site(service.name.removeprefix("supernode-"))
        superlink = service.argv[service.argv.index("--superlink") + 1]
        ours = join_command(
            workdir.site(site.id),
            superlink,
            creds.ca,
            creds.supernodes[site.id].private_key_path,
            site.supernode_port,
        )
        assert Path(ours[0]).name == Path(service.argv[0]).name == "flower-supernode"
        assert ours[1:] == list(service.argv[1:])
