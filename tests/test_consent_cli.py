"""``paroma consent …``: load, generate, show, decide, revoke, cohort; bad input gets one
clear line and a non-zero exit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from clinical_node.site import Site
from paroma.cli import app

HL7 = Path(__file__).parent / "data" / "hl7-consent"


def run(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def folder(site: Site) -> Path:
    site.fhir.ingest_bundle(
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": {"resourceType": "Patient", "id": f"p{i}"}} for i in range(1, 11)],
        }
    )
    return site.root


def test_generate_decide_revoke_and_cohort(folder: Path) -> None:
    generated = run(
        "consent", "generate", folder, "--mix", "permit=0.6,opt_out=0.2,no_consent=0.2", "--seed", "3"
    )
    assert generated.exit_code == 0, generated.output
    assert "stored 8 consents" in generated.output and "no_consent 2, opt_out 2, permit 6" in generated.output
    cohort = run("consent", "cohort", folder)
    assert cohort.exit_code == 0 and "PERMIT 6, DENY 2, NO_CONSENT 2" in cohort.output
    permitted = next(
        p
        for p in (f"p{i}" for i in range(1, 11))
        if run("consent", "decide", folder, p).output.startswith("PERMIT")
    )
    decided = run("consent", "decide", folder, permitted)
    assert f"decided by Consent/research-{permitted} version 1" in decided.output
    revoked = run("consent", "revoke", folder, permitted)
    assert revoked.exit_code == 0 and "refuses HRESCH from now on" in revoked.output
    assert run("consent", "decide", folder, permitted).output.startswith("DENY")
    assert "PERMIT 5, DENY 3, NO_CONSENT 2" in run("consent", "cohort", folder).output
    shown = run("consent", "show", folder, permitted)
    assert shown.output.count("Consent/") == 2 and "OPTOUT" in shown.output
    assert run("consent", "decide", folder, permitted, "--now", "2000-01-01").output.startswith("NO_CONSENT")


def test_load_accepts_hl7_consents_and_refuses_a_malformed_one(folder: Path, tmp_path: Path) -> None:
    loaded = run("consent", "load", folder, *sorted(HL7.glob("Consent-*.json"))[:3])
    assert loaded.exit_code == 0 and loaded.output.count("1 consents stored (1 new") == 3
    bad = json.loads((HL7 / "Consent-consent-example-basic.json").read_text())
    bad["id"] = "broken"
    bad["provision"]["type"] = "sometimes"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    refused = run("consent", "load", folder, path)
    assert refused.exit_code == 2
    assert "refused, nothing stored: Consent.provision.type" in refused.output
    assert "Consent/broken" not in run("consent", "show", folder, "f001").output


def test_bad_arguments_get_one_clear_line(folder: Path, tmp_path: Path) -> None:
    mix = run("consent", "generate", folder, "--mix", "permit=0.5")
    assert mix.exit_code == 2 and "consent mix shares sum to 0.5000" in mix.output
    unknown = run("consent", "generate", folder, "--mix", "maybe=1")
    assert unknown.exit_code == 2 and "expected kind=share" in unknown.output
    assert "is not a site folder" in run("consent", "cohort", tmp_path).output
    when = run("consent", "decide", folder, "p1", "--now", "yesterday")
    assert when.exit_code == 2 and "--now 'yesterday' is not an ISO 8601" in when.output
    assert "no patient 'nobody'" in run("consent", "revoke", folder, "nobody").output
