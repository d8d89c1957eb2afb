"""The docker-compose deployment, checked without a Docker engine: the generated file is valid
against the Compose Specification schema (and `docker-compose config` where installed), the
committed default is up to date, every service runs what `paroma up` runs (command, ports,
working folder), every path a command names is made by the `prepare` step, and the images are
small, non-root and health-checked. Nothing is built."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import LiveServer
from typer.testing import CliRunner

from deploy.compose import (
    CONTAINER_CONFIG,
    CONTAINER_WORKDIR,
    ComposeError,
    compose_document,
    opa_port,
    planned_services,
    write_compose,
)
from deploy.federation_config import DEFAULT_CONFIG, load_federation_config
from deploy.healthcheck import main as healthcheck
from deploy.healthcheck import probe
from paroma.cli import app

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "tests" / "data" / "compose-spec" / "compose_spec.json").read_text())
COMMITTED = ROOT / "deploy" / "docker-compose.yml"
DOCKERFILES = ROOT / "deploy" / "docker"

TWO_SITES = """
[federation]
name = "two"
workdir = "work"
topology = "demo"

[aggregator]
node = "aggregator"
superlink_port = 19093

[pce]
port = 18585

[relays]
base_port = 17100

[[site]]
id = "switzerland"
node = "hospital-switzerland"
data = "uci:switzerland"
consent = "demo"
fhir_port = 18201

[[site]]
id = "synth"
node = "hospital-va"
data = "synthetic:40"
consent = "full"
fhir_port = 18202
"""


def _validate(document: dict[str, object]) -> None:
    validator = jsonschema.validators.validator_for(SCHEMA)(SCHEMA)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_committed_compose_file_is_valid_and_up_to_date(tmp_path: Path) -> None:
    committed = yaml.safe_load(COMMITTED.read_text())
    _validate(committed)
    config = load_federation_config(DEFAULT_CONFIG)
    out = tmp_path / "docker-compose.yml"
    command = "paroma deploy compose --config deploy/federations/local-4.toml --out deploy/docker-compose.yml"
    written, side = write_compose(config, out, command)
    assert written.read_text() == COMMITTED.read_text(), (
        "deploy/docker-compose.yml is out of date: run " + command
    )
    assert side.read_text() == (ROOT / "deploy" / side.name).read_text()


def test_schema_rejects_what_compose_rejects() -> None:
    # The schema is a real check: a misspelt key and a bad depends_on condition fail.
    with pytest.raises(AssertionError, match="comand"):
        _validate({"services": {"a": {"image": "x", "comand": ["y"]}}})
    with pytest.raises(AssertionError, match="depends_on"):
        _validate({"services": {"a": {"image": "x", "depends_on": {"b": {"condition": "soon"}}}}})


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
def test_docker_compose_config_accepts_the_committed_file() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(COMMITTED), "config", "-q"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_every_service_runs_what_paroma_up_runs() -> None:
    config = load_federation_config(DEFAULT_CONFIG)
    committed = yaml.safe_load(COMMITTED.read_text())["services"]
    services, paths = planned_services(config)
    assert {s.name for s in services} | {"prepare", "register"} | {
        f"opa-{s.id}" for s in config.sites
    } == set(committed)
    workdir = str(paths.workdir)
    for service in services:
        entry = committed[service.name]
        expected = [Path(service.argv[0]).name if service.argv[0] != sys.executable else "python"]
        expected += [
            a.replace(workdir, CONTAINER_WORKDIR).replace(str(config.source), CONTAINER_CONFIG)
            for a in service.argv[1:]
        ]
        assert entry["command"] == expected, service.name
        # Host networking: the plan's addresses and ports are the container's.
        assert entry["network_mode"] == "host"
        listening = service.address.split("://")[-1].split("/")[0].split(" ")[0].rsplit(":", 1)[1]
        if service.kind != "supernode":  # a SuperNode's address is where it dials (its ingress)
            assert listening in entry["expose"], service.name
        if service.health.port:
            assert str(service.health.port) in entry["expose"] or service.health.port == config.pce_port
        assert entry["volumes"] == [
            f"federation-work:{CONTAINER_WORKDIR}",
            f"./local-4.federation.toml:{CONTAINER_CONFIG}:ro",
        ]
        if "FLWR_HOME" in service.env:
            assert entry["environment"]["FLWR_HOME"] == service.env["FLWR_HOME"].replace(
                workdir, CONTAINER_WORKDIR
            )
    for site in config.sites:
        assert committed[f"fhir-{site.id}"]["depends_on"][f"opa-{site.id}"] == {
            "condition": "service_started"
        }
        assert f"--addr=127.0.0.1:{opa_port(config, site.id)}" in committed[f"opa-{site.id}"]["command"]
        assert committed[f"supernode-{site.id}"]["depends_on"]["register"] == {
            "condition": "service_completed_successfully"
        }
    assert committed["opa-cleveland"]["image"].startswith("openpolicyagent/opa:")


def test_prepare_makes_every_path_the_services_name(tmp_path: Path) -> None:
    """The `prepare` container's command, run here for real on a two-site federation (a UCI
    hospital and a synthetic one): every file and folder the compose services' commands,
    environments and health checks name exists afterwards, and the sites use their OPA."""
    source = tmp_path / "two.toml"
    source.write_text(TWO_SITES)
    config = load_federation_config(source)
    document = compose_document(config, "two.federation.toml")
    _validate(document)
    result = CliRunner().invoke(app, ["deploy", "prepare", "--config", str(source), "--opa"])
    assert result.exit_code == 0, result.output
    work = tmp_path / "work"
    named: set[str] = set()
    for service in document["services"].values():
        words = [*service.get("command", []), *service.get("environment", {}).values()]
        words += service.get("healthcheck", {}).get("test", [])
        for word in words:
            for part in str(word).replace('"', " ").replace("=", " ").split():
                if part.startswith(CONTAINER_WORKDIR + "/"):
                    named.add(part)
    assert any("/sites/synth" in p for p in named) and any("/pki/" in p for p in named)
    flwr_homes = {p for p in named if "/flwr/" in p}
    for path in sorted(named - flwr_homes):
        assert (work / path.removeprefix(CONTAINER_WORKDIR + "/")).exists(), path
    from clinical_node.site import Site

    for site_cfg in config.sites:
        site = Site.open(work / "sites" / site_cfg.id)
        assert site.settings["protection"] == {
            "engine": "opa",
            "opa_url": f"http://127.0.0.1:{opa_port(config, site_cfg.id)}",
        }
        assert site.fhir.counts()["Patient"] == (123 if site_cfg.id == "switzerland" else 40)
        site.close()


def test_configs_a_container_cannot_run_are_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "b.json"
    bundle.write_text('{"resourceType": "Bundle", "type": "collection", "entry": []}')
    source = tmp_path / "file.toml"
    source.write_text(TWO_SITES.replace('data = "synthetic:40"', f'data = "{bundle}"'))
    with pytest.raises(ComposeError, match=r"site\[1\]\.data: .*b\.json is a file on this machine"):
        compose_document(load_federation_config(source), "x.toml")
    result = CliRunner().invoke(
        app, ["deploy", "compose", "--config", str(source), "--out", str(tmp_path / "c.yml")]
    )
    assert result.exit_code == 2 and "site[1].data" in result.output
    assert not (tmp_path / "c.yml").exists()
    bad = CliRunner().invoke(app, ["deploy", "compose", "--config", str(tmp_path / "missing.toml")])
    assert bad.exit_code == 2 and "missing.toml" in bad.output


def test_images_are_small_non_root_and_health_checked() -> None:
    for kind in ("node", "aggregator", "relay"):
        text = (DOCKERFILES / f"{kind}.Dockerfile").read_text()
        assert "FROM python:3.11-slim" in text
        assert "USER paroma" in text and "useradd --uid 10001" in text
        assert "HEALTHCHECK" in text and '"deploy.healthcheck"' in text
        for line in text.splitlines():
            if line.startswith("COPY "):
                assert (ROOT / line.split()[1]).exists(), line
        if kind == "relay":
            assert "torch" not in text.replace("No torch", "")
        else:
            assert "torch==2.13.0" in text
    images = {s.get("image") for s in yaml.safe_load(COMMITTED.read_text())["services"].values()}
    assert images == {
        "paroma-med/node:0.1.0", "paroma-med/aggregator:0.1.0", "paroma-med/relay:0.1.0", "openpolicyagent/opa:1.4.2"
    }  # fmt: skip


def test_the_relay_command_needs_none_of_the_machine_learning_stack(tmp_path: Path) -> None:
    """The relay image installs the project without torch, numpy, Flower or the FHIR models:
    `paroma relay run` must get to reading its config without importing any of them."""
    script = tmp_path / "blocked.py"
    script.write_text(
        "import sys\n"
        "BLOCK = {'torch', 'numpy', 'flwr', 'sklearn', 'scipy', 'fhir', 'regorus', 'matplotlib', 'ray'}\n"
        "class Blocker:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCK:\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Blocker())\n"
        f"sys.argv = ['paroma', 'relay', 'run', '--config', {str(tmp_path / 'none.toml')!r}]\n"
        "from paroma.cli import main\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=False, cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "none.toml: No such file or directory" in result.stderr


def test_healthcheck_probes_a_real_server() -> None:
    from protection_layer.opa_api import create_opa_app

    with LiveServer(create_opa_app()) as server:
        assert probe(["http", "127.0.0.1", str(server.port), "/health"]) is None
        assert healthcheck(["tcp", "127.0.0.1", str(server.port)]) == 0
        port = server.port
    assert "127.0.0.1" in str(probe(["tcp", "127.0.0.1", str(port)]))
    assert healthcheck(["tcp", "127.0.0.1", str(port)]) == 1
    assert probe(["https", "127.0.0.1", str(port), "/", "/nonexistent-ca.pem"]) is not None
    assert "expected tcp|http|https" in str(probe(["ftp", "x"]))
    assert "https needs 4 arguments" in str(probe(["https", "h", "1"]))
