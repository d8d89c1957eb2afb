"""Scenario files and the scenario runner: validation naming every field, and the shipped
scenarios run in reduced form (2 rounds, 5 local steps) on the in-process runtime, each
producing its report with its plots."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deploy.scenario import ScenarioError, load_scenario, parse_scenario
from deploy.scenario_run import Network, ScenarioRun, build_scenario_sites, reduced, run_scenario
from paroma.cli import app

SHIPPED = Path(__file__).resolve().parent.parent / "deploy" / "scenarios"
NAMES = ("baseline", "consent-churn", "poisoned-fedavg", "poisoned-robust", "cve-mid-job")


def _site(i: int = 0, **extra: object) -> dict[str, object]:
    return {"id": f"s{i}", "data": "synthetic:20", **extra}


def test_problems_are_named_by_field() -> None:
    doc = {
        "scenario": {"name": "bad name!", "rounds": 0, "min_security": 101},
        "job": {"strategy": {"name": "fedavg"}, "colour": "red"},
        "site": [
            {"id": "A", "data": "uci:nowhere", "consent": "permit=2"},
            {"id": "b", "data": "synthetic:x"},
            {"id": "b", "data": "synthetic:10", "colour": 1},
        ],
        "churn": [{"from_round": 1, "revoke_fraction": 1.5, "sites": ["zz"]}],
        "attack": [{"site": "nobody", "kind": "flip"}],
        "network": [
            {"round": 9, "event": "meteor"},
            {"round": 1, "event": "cve", "node": "r", "cve": "nope"},
        ],
        "extra": {},
    }
    with pytest.raises(ScenarioError) as err:
        parse_scenario(doc)
    fields = {f for f, _ in err.value.problems}
    for expected in (
        "scenario.name",
        "scenario.rounds",
        "scenario.min_security",
        "job.colour",
        "site[0].id",
        "site[0].data",
        "site[0].consent",
        "site[1].data",
        "site[2].id",
        "site[2].colour",
        "churn[0].revoke_fraction",
        "churn[0].sites",
        "attack[0].site",
        "attack[0].kind",
        "network[0].event",
        "network[1].cve",
        "extra",
    ):
        assert expected in fields, (expected, err.value.problems)
    message = str(err.value)
    assert "uci:nowhere" not in message or "unknown UCI hospital 'nowhere'" in message
    assert "'flip' is not one of sign-flip, scale, noise" in message


def test_network_is_checked_against_the_topology() -> None:
    doc = {
        "scenario": {"name": "net", "rounds": 4},
        "site": [_site(0, node="hospital-nowhere"), _site(1, node="hospital-va")],
        "network": [
            {"round": 2, "event": "cve", "node": "router-99", "cve": "CVE-1999-0001"},
            {"round": 3, "event": "link-down", "link": "no-such-link"},
            {"round": 3, "event": "cve", "node": "router-5", "cve": "CVE-2022-44204"},
            {"round": 4, "event": "fix", "node": "router-1", "cve": "CVE-2022-36786"},
        ],
    }
    with pytest.raises(ScenarioError) as err:
        Network(parse_scenario(doc))
    fields = dict(err.value.problems)
    assert "hospital-nowhere" in fields["site[0].node"]
    assert "router-99" in fields["network[0].node"]
    assert "CVE-1999-0001" in fields["network[0].cve"]
    assert "no-such-link" in fields["network[1].link"]
    assert "router-5 already carries CVE-2022-44204" in fields["network[2].cve"]
    assert "router-1 does not carry CVE-2022-36786" in fields["network[3].cve"]


def test_reduced_keeps_events_after_the_first_round() -> None:
    scenario = load_scenario(SHIPPED / "cve-mid-job.toml")
    short = reduced(scenario, 2)
    assert short.rounds == 2
    assert [e.round for e in short.network] == [2, 2]
    assert reduced(scenario, 8) is scenario


@pytest.mark.parametrize("name", NAMES)
def test_shipped_scenarios_are_valid(name: str) -> None:
    scenario = load_scenario(SHIPPED / f"{name}.toml")
    assert scenario.name == name and len(scenario.sites) == 4
    Network(scenario)  # every node, link and CVE resolves and every site has a path


def test_cli_names_the_problem_and_exits_non_zero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[scenario]\nname = "x"\nrounds = "five"\n')
    result = CliRunner().invoke(app, ["scenario", "run", str(bad), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "scenario.rounds: expected an integer, got 'five'" in result.output
    assert not (tmp_path / "out").exists()
    missing = CliRunner().invoke(app, ["scenario", "check", str(tmp_path / "nowhere.toml")])
    assert missing.exit_code == 2 and "nowhere.toml" in missing.output


def test_deploy_refuses_what_the_multi_process_runtime_does_not_script(tmp_path: Path) -> None:
    for name, what in (
        ("consent-churn", "[[churn]]"),
        ("poisoned-fedavg", "[[attack]]"),
        ("cve-mid-job", "[[network]] event(s)"),
    ):
        out = tmp_path / name
        result = CliRunner().invoke(app, ["scenario", "run", name, "--deploy", "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert what in result.output and "run it without --deploy" in result.output
        assert not out.exists()


class _Runs(dict[str, ScenarioRun]):
    """Each shipped scenario run once, when a test first asks for it (so that each run counts
    against the timeout of the test that needs it, not all of them against the first)."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.template: Path | None = None

    def __missing__(self, name: str) -> ScenarioRun:
        if self.template is None:
            # The five scenarios declare the same four sites: build them once, each run gets a copy.
            baseline = load_scenario(SHIPPED / "baseline.toml")
            self.template = build_scenario_sites(baseline, self.root / "template")[0].parent
        run = run_scenario(
            reduced(load_scenario(SHIPPED / f"{name}.toml"), 2),
            self.root / name,
            local_steps=5,
            sites_from=self.template,
        )
        self[name] = run
        return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> _Runs:
    return _Runs(tmp_path_factory.mktemp("scenarios"))


def _images(report: Path) -> list[bytes]:
    return [
        base64.b64decode(m)
        for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', report.read_text())
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_reports_are_produced_with_their_plots(runs: dict[str, ScenarioRun], name: str) -> None:
    run = runs[name]
    assert run.federation.status == "completed", run.federation.reason
    assert len(run.federation.rounds) == 2
    images = _images(run.out / "report.html")
    assert len(images) == 4 and all(i.startswith(b"\x89PNG") for i in images)
    text = (run.out / "report.html").read_text()
    for heading in ("Accuracy per round", "Cohort sizes per round", "Network paths", "Privacy spent"):
        assert heading in text
    assert "http://" not in text.replace("http://loinc.org", "")  # self-contained
    saved = json.loads((run.out / "run.json").read_text())
    assert saved["scenario"] == name and len(saved["federation"]["rounds"]) == 2


@pytest.mark.slow
def test_consent_churn_shrinks_cohorts_and_spends_privacy(runs: dict[str, ScenarioRun]) -> None:
    run = runs["consent-churn"]
    first, second = run.federation.rounds
    assert set(run.revoked) == {2}
    for site, withdrawn in run.revoked[2].items():
        assert withdrawn >= 1
        assert second.sites[site].cohort["permit"] == first.sites[site].cohort["permit"] - withdrawn
        eps1, eps2 = first.sites[site].privacy["epsilon"], second.sites[site].privacy["epsilon"]
        assert 0 < eps1 < eps2
    assert "no differential privacy" not in (run.out / "report.html").read_text()


@pytest.mark.slow
def test_poisoning_hurts_fedavg_more_than_multikrum(runs: dict[str, ScenarioRun]) -> None:
    fedavg, robust = runs["poisoned-fedavg"], runs["poisoned-robust"]
    assert fedavg.job.strategy == "fedavg" and robust.job.strategy == "multikrum"
    assert robust.federation.rounds[-1].mean_accuracy > fedavg.federation.rounds[-1].mean_accuracy
    baseline = runs["baseline"].federation.rounds[-1].mean_accuracy
    assert fedavg.federation.rounds[-1].mean_accuracy < baseline


@pytest.mark.slow
def test_cve_moves_paths_and_a_relay_down_cuts_a_site_off(runs: dict[str, ScenarioRun]) -> None:
    run = runs["cve-mid-job"]
    assert [e.description for e in run.events] == ["CVE-2022-36786 on router-5", "router-2 down"]
    cve, down = run.events
    assert set(cve.moved) == {"cleveland", "hungarian"}
    assert all(what.startswith("moved to ") and "router-5" not in what for what in cve.moved.values())
    assert down.moved["hungarian"].startswith("unroutable")
    before, after = run.paths[1], run.paths[2]
    assert "router-5" in before["cleveland"].nodes and "router-5" in before["hungarian"].nodes
    # With router-2 down too, Cleveland is back through the now vulnerable router-5.
    assert after["cleveland"].path_security < before["cleveland"].path_security
    assert after["hungarian"].status == "unroutable"
    first, second = run.federation.rounds
    assert "hungarian" in first.sites and "hungarian" not in second.sites
    assert set(second.sites) == {"cleveland", "switzerland", "va"}
    assert after["va"].nodes == before["va"].nodes and after["va"].transfer_s > 0


def test_deploy_writes_a_valid_federation_config(tmp_path: Path) -> None:
    from deploy.federation_config import load_federation_config
    from deploy.scenario_deploy import federation_toml, unsupported

    scenario = load_scenario(SHIPPED / "baseline.toml")
    assert unsupported(scenario) == []
    source = tmp_path / "federation.toml"
    source.write_text(federation_toml(scenario, tmp_path / "work", 30_000))
    config = load_federation_config(source)
    assert [s.id for s in config.sites] == [s.id for s in scenario.sites]
    assert [s.node for s in config.sites] == [s.node for s in scenario.sites]
    assert [s.data.describe() for s in config.sites] == [s.data_text for s in scenario.sites]
    assert config.aggregator.superlink_port == 30_000 and config.workdir == (tmp_path / "work").resolve()
    assert config.min_security == scenario.min_security


@pytest.mark.slow
def test_a_deployed_result_reads_back_into_the_report(runs: dict[str, ScenarioRun]) -> None:
    from deploy.scenario_deploy import federation_result

    original = runs["baseline"].federation
    back = federation_result(json.loads(json.dumps(original.to_dict())))
    assert back.status == original.status and len(back.rounds) == len(original.rounds)
    for a, b in zip(back.rounds, original.rounds, strict=True):
        assert a.mean_accuracy == b.mean_accuracy
        assert {k: v.cohort for k, v in a.sites.items()} == {k: v.cohort for k, v in b.sites.items()}
