"""The federation config file: the default parses, and every bad field is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.federation_config import (
    DEFAULT_CONFIG,
    FederationConfigError,
    load_federation_config,
)

GOOD = """
[federation]
name = "t-2"
workdir = "state"
topology = "demo"
min_security = 40

[aggregator]
node = "aggregator"
superlink_port = 19093

[pce]
port = 18585

[relays]
base_port = 17100

[[site]]
id = "cleveland"
node = "hospital-cleveland"
data = "uci:cleveland"
consent = "full"
fhir_port = 18201

[[site]]
id = "va"
node = "hospital-va"
data = "synthetic:40"
consent = "permit=0.9,opt_out=0.1"
fhir_port = 18204
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fed.toml"
    path.write_text(text)
    return path


def test_default_config_describes_the_four_uci_hospitals_on_the_demo_network() -> None:
    config = load_federation_config(DEFAULT_CONFIG)
    assert config.name == "local-4"
    assert [s.id for s in config.sites] == ["cleveland", "hungarian", "switzerland", "va"]
    assert [s.data.describe() for s in config.sites] == [
        "uci:cleveland",
        "uci:hungarian",
        "uci:switzerland",
        "uci:va",
    ]
    # Every router and access node relays, in the topology file's order.
    assert config.relay_nodes == (
        *(f"router-{i}" for i in range(1, 7)),
        *(f"access-{i}" for i in range(1, 5)),
    )
    assert config.relay_port("router-3") == config.relays.base_port + 2
    assert config.relay_control_port("access-1") == config.relays.control_base_port + 6
    assert [s.ingress_port for s in config.sites] == [7300, 7301, 7302, 7303]
    assert config.workdir == (DEFAULT_CONFIG.parent / "../../.paroma/local-4").resolve()


def test_relative_paths_resolve_against_the_file_and_defaults_fill_in(tmp_path: Path) -> None:
    config = load_federation_config(write(tmp_path, GOOD))
    assert config.workdir == tmp_path / "state"
    assert config.host == "127.0.0.1"
    assert config.min_security == 40
    va = config.site("va")
    assert va.data.kind == "synthetic" and va.data.patients == 40
    assert va.consent.mix is not None and va.consent.mix.permit == pytest.approx(0.9)
    assert va.supernode_port == 9401 and va.netns_address == "10.77.0.6"
    assert va.ingress_port == 17301 and config.relays.control_base_port == 17200
    assert va.netns_host_address == "10.77.0.5"


@pytest.mark.parametrize(
    ("old", "new", "field", "words"),
    [
        ('name = "t-2"', 'name = "T 2"', "federation.name", "lower-case"),
        ('topology = "demo"', 'topology = "nowhere.yaml"', "federation.topology", "cannot read"),
        ("min_security = 40", "min_security = 140", "federation.min_security", "at most 100"),
        ('node = "aggregator"', 'node = "mars"', "aggregator.node", "no node 'mars'"),
        ("port = 18585", "port = 18201", "site[0].fhir_port", "already used by pce.port"),
        ("port = 18585", 'port = "x"', "pce.port", "TCP port"),
        ('node = "hospital-va"', 'node = "hospital-cleveland"', "site[1].node", "already hosts site[0]"),
        ('data = "uci:cleveland"', 'data = "uci:boston"', "site[0].data", "unknown UCI hospital"),
        ('data = "synthetic:40"', 'data = "synthetic:0"', "site[1].data", "patient count"),
        ('data = "synthetic:40"', 'data = "nothere.json"', "site[1].data", "no such FHIR Bundle"),
        ('consent = "full"', 'consent = "some"', "site[0].consent", "expected demo, full"),
        ('consent = "full"', 'consent = "permit=0.5"', "site[0].consent", "sum to 1"),
        ('id = "va"', 'id = "cleveland"', "site[1].id", "duplicate site id"),
        ("base_port = 17100", "base_port = 17100\nspeed = 3", "relays.speed", "unknown field"),
        (
            "fhir_port = 18204",
            'fhir_port = 18204\nnetns_address = "10.0.0.3"',
            "site[1].netns_address",
            "/30",
        ),
    ],
)
def test_each_bad_field_is_named(tmp_path: Path, old: str, new: str, field: str, words: str) -> None:
    assert old in GOOD
    with pytest.raises(FederationConfigError) as caught:
        load_federation_config(write(tmp_path, GOOD.replace(old, new, 1)))
    problems = dict(caught.value.problems)
    assert field in problems, caught.value.problems
    assert words in problems[field]


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    text = GOOD.replace('name = "t-2"', 'name = ""').replace("fhir_port = 18204", "")
    with pytest.raises(FederationConfigError) as caught:
        load_federation_config(write(tmp_path, text + "\n[extra]\n"))
    fields = [f for f, _ in caught.value.problems]
    assert {"federation.name", "site[1].fhir_port", "extra"} <= set(fields)
    assert str(tmp_path / "fed.toml") in str(caught.value)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(FederationConfigError, match="cannot read"):
        load_federation_config(tmp_path / "missing.toml")
    with pytest.raises(FederationConfigError, match="not valid TOML"):
        load_federation_config(write(tmp_path, "[federation\n"))
    with pytest.raises(FederationConfigError, match="at least one site"):
        load_federation_config(write(tmp_path, '[federation]\nname = "x"\n'))
