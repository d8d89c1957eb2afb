"""The data catalogue: what a site publishes (DCAT terms, counts, displays, years, small
counts suppressed), the batched publishing schedule, the site endpoint, the aggregator's
gathering with a site that does not answer, its JSON router and the CLI table."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LiveServer, free_port
from fastapi import FastAPI
from typer.testing import CliRunner

from aggregator.catalogue import build_catalogue_router, gather_catalogues
from aggregator.sites import SiteEndpoint
from clinical_node.auth import TokenStore
from clinical_node.catalogue import CatalogueError, CataloguePublisher, interval_of
from clinical_node.datasets.uci_heart import hospital_bundle as _hospital_bundle
from clinical_node.service import create_app
from clinical_node.site import Site
from paroma.cli import app
from paroma.demo import DEMO_POLICY

# converted once per test session: the UCI converter is not what these tests measure
hospital_bundle = cache(_hospital_bundle)

AGE = ("http://loinc.org", "30525-0")
THAL = ("https://paroma-med.eu/fhir/CodeSystem/uci-heart-disease", "thal")


def _entries(hospital: str, n: int, *, without_thal: int = 0) -> list[dict[str, Any]]:
    """The first ``n`` patients of a UCI hospital; all but ``without_thal`` of them lose
    their thallium test result, so that code is rare."""
    bundle = hospital_bundle(hospital)
    patients = sorted(
        e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )[:n]
    keep_thal = set(patients[:without_thal])
    out = []
    for entry in bundle["entry"]:
        resource = entry["resource"]
        owner = resource["id"] if resource["resourceType"] == "Patient" else resource["id"].rsplit("-", 1)[0]
        if resource["resourceType"] == "Organization":
            out.append(entry)
        elif owner in patients:
            if resource["id"].endswith("-thal") and owner not in keep_thal:
                continue
            out.append(entry)
    return out


def _site(root: Path, site_id: str, n: int = 12, *, thal: int = 3, interval: float | None = None) -> Site:
    site = Site.create(
        root / site_id, site_id, f"Hospital {site_id}", policy=replace(DEMO_POLICY, small_count_threshold=5)
    )
    if interval is not None:
        text = (site.root / "site.toml").read_text() + f"\n[catalogue]\ninterval_minutes = {interval}\n"
        (site.root / "site.toml").write_text(text)
        site.close()
        site = Site.open(root / site_id)
    bundle = hospital_bundle("cleveland")
    site.fhir.ingest_bundle({**bundle, "entry": _entries("cleveland", n, without_thal=thal)})
    return site


def _dataset(catalogue: dict[str, Any], rtype: str) -> dict[str, Any]:
    return next(d for d in catalogue["dcat:dataset"] if d["dct:type"] == rtype)


def _code(dataset: dict[str, Any], system: str, code: str) -> dict[str, Any]:
    return next(
        c for c in dataset["paroma:codes"] if (c["paroma:system"], c["paroma:code"]) == (system, code)
    )


def test_the_catalogue_describes_the_store_in_dcat_terms(tmp_path: Path) -> None:
    site = _site(tmp_path, "alpha")
    try:
        catalogue = CataloguePublisher(site, interval=timedelta(minutes=60)).current()
    finally:
        site.close()
    assert catalogue["@type"] == "dcat:Catalog" and catalogue["dct:identifier"] == "alpha"
    assert catalogue["@context"]["dcat"] == "http://www.w3.org/ns/dcat#"
    assert catalogue["paroma:smallCountThreshold"] == 5
    assert datetime.fromisoformat(catalogue["dct:issued"].replace("Z", "+00:00")) <= datetime.now(UTC)
    patients = _dataset(catalogue, "Patient")
    assert patients["paroma:patients"] == 12 and patients["paroma:resources"] == 12
    assert "dct:temporal" not in patients  # birth dates are no period of the data
    obs = _dataset(catalogue, "Observation")
    assert obs["@type"] == "dcat:Dataset" and obs["paroma:patients"] == 12
    distribution = obs["dcat:distribution"][0]
    assert (
        distribution["@type"] == "dcat:Distribution"
        and distribution["dct:conformsTo"] == "http://hl7.org/fhir/R4"
    )
    assert distribution["dcat:accessURL"] == "/fhir/Observation"
    assert obs["dct:temporal"] == {
        "@type": "dct:PeriodOfTime",
        "dcat:startDate": "1988",
        "dcat:endDate": "1988",
    }
    age = _code(obs, *AGE)
    assert age["paroma:display"] == "Age" and age["paroma:patients"] == 12 and age["paroma:resources"] == 12
    # a code only 3 patients have: counts suppressed, no date range published
    thal = _code(obs, *THAL)
    assert thal["paroma:patients"] == "<5" and thal["paroma:resources"] == "<5"
    assert "dct:temporal" not in thal and thal["paroma:display"] == "Thallium stress test result"
    # the single Organization is suppressed too
    assert _dataset(catalogue, "Organization")["paroma:resources"] == "<5"
    # nothing record-level: no patient id, no value
    text = json.dumps(catalogue)
    assert "cleveland-0" not in text and "valueQuantity" not in text


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2027, 1, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_the_publisher_rebuilds_in_batches_not_on_every_change(tmp_path: Path) -> None:
    site = _site(tmp_path, "alpha", n=10, thal=10)
    clock = Clock()
    publisher = CataloguePublisher(site, interval=timedelta(minutes=30), clock=clock)
    try:
        first = publisher.current()
        assert publisher.rebuilds == 1 and first["dct:issued"] == "2027-01-01T09:00:00Z"
        assert _dataset(first, "Patient")["paroma:patients"] == 10
        # new data: not published before the interval is over
        site.fhir.ingest_bundle(
            {"resourceType": "Bundle", "type": "transaction", "entry": _entries("cleveland", 14)}
        )
        clock.now += timedelta(minutes=29)
        assert publisher.current() == first and publisher.rebuilds == 1
        # due, and the store changed: one rebuild with all the changes of the batch
        clock.now += timedelta(minutes=1)
        second = publisher.current()
        assert publisher.rebuilds == 2 and second["dct:issued"] == "2027-01-01T09:30:00Z"
        assert _dataset(second, "Patient")["paroma:patients"] == 14
        # due, but nothing changed: the published one stays
        clock.now += timedelta(hours=5)
        assert publisher.current() == second and publisher.rebuilds == 2
        # another process (a new publisher on the folder) serves what was published
        again = CataloguePublisher(site, interval=timedelta(minutes=30), clock=clock)
        assert again.current() == second and again.rebuilds == 0
        # a damaged file is rebuilt, never served
        publisher.path.write_text('{"dct:issued": ')
        assert again.current()["dct:issued"] == "2027-01-01T14:30:00Z" and again.rebuilds == 1
        assert not list(publisher.path.parent.glob("*.tmp"))
    finally:
        site.close()


def test_the_interval_comes_from_site_toml(tmp_path: Path) -> None:
    site = _site(tmp_path, "alpha", n=5, interval=15)
    try:
        assert interval_of(site) == timedelta(minutes=15)
    finally:
        site.close()
    bad = _site(tmp_path, "beta", n=5, interval=-1)
    try:
        with pytest.raises(CatalogueError, match=r"catalogue.interval_minutes .* got -1"):
            interval_of(bad)
    finally:
        bad.close()


def _token(site: Site, role: str = "aggregator") -> str:
    return TokenStore(site.root / "keys" / "api-tokens.json").issue(role, "aggregator-eu")


def test_site_endpoint_gathering_router_and_cli(tmp_path: Path) -> None:
    alpha, beta = _site(tmp_path, "alpha"), _site(tmp_path, "beta", n=20, thal=20)
    try:
        with LiveServer(create_app(alpha)) as a, LiveServer(create_app(beta)) as b:
            url = f"{a.url}/federation/catalog"
            assert httpx.get(url, timeout=30).status_code == 401
            assert (
                httpx.get(
                    url, headers={"Authorization": f"Bearer {_token(alpha, 'patient')}"}, timeout=30
                ).status_code
                == 403
            )
            direct = httpx.get(url, headers={"Authorization": f"Bearer {_token(alpha)}"}, timeout=30)
            assert direct.status_code == 200 and direct.json()["dct:identifier"] == "alpha"
            endpoints = [
                SiteEndpoint("alpha", a.url, _token(alpha)),
                SiteEndpoint("beta", b.url, _token(beta)),
                SiteEndpoint("down", f"http://127.0.0.1:{free_port()}", "x"),
                SiteEndpoint("forged", b.url, "not-a-token"),
            ]
            gathered = gather_catalogues(endpoints, timeout=20)
            assert set(gathered.catalogues) == {"alpha", "beta"}
            assert "unreachable" in gathered.failed["down"] and "HTTP 401" in gathered.failed["forged"]
            rows = {(r["site"], r["resource_type"], r["code"]): r for r in gathered.rows()}
            assert rows[("alpha", "Observation", "thal")]["patients"] == "<5"
            assert rows[("beta", "Observation", "thal")]["patients"] == 20
            assert rows[("beta", "Observation", "30525-0")]["years"] == "1988-1988"
            # the aggregator's JSON router, in a service of its own
            service = FastAPI()
            service.include_router(build_catalogue_router(lambda: endpoints[:3]))
            with LiveServer(service) as agg:
                merged = httpx.get(f"{agg.url}/api/catalog", timeout=60).json()
                assert [c["dct:identifier"] for c in merged["dcat:catalog"]] == ["alpha", "beta"]
                assert merged["paroma:unavailable"][0]["site"] == "down"
                flat = httpx.get(f"{agg.url}/api/catalog/rows", timeout=60).json()
                assert any(r["code"] == "30525-0" and r["site"] == "beta" for r in flat["rows"])
            # the CLI over a sites file
            tokens = tmp_path / "t"
            tokens.mkdir()
            (tokens / "a").write_text(_token(alpha))
            (tokens / "d").write_text("x")
            sites_toml = tmp_path / "sites.toml"
            sites_toml.write_text(
                f'[[site]]\nid = "alpha"\nurl = "{a.url}"\ntoken_file = "t/a"\n'
                f'[[site]]\nid = "down"\nurl = "http://127.0.0.1:{free_port()}"\ntoken_file = "t/d"\n'
            )
            table = CliRunner().invoke(
                app, ["catalog", "--sites", str(sites_toml), "--resource-type", "Observation"]
            )
            assert table.exit_code == 0, table.output
            assert "Thallium stress test result" in table.output and "<5" in table.output
            assert "down: did not answer" in table.output and "Patient" not in table.output
    finally:
        alpha.close()
        beta.close()


def test_cli_reads_site_folders_directly(tmp_path: Path) -> None:
    _site(tmp_path, "alpha").close()
    _site(tmp_path, "beta", n=20, thal=20).close()
    args = ["catalog", "--site-dir", str(tmp_path / "alpha"), "--site-dir", str(tmp_path / "beta"), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    merged = json.loads(result.output)
    assert [c["dct:identifier"] for c in merged["dcat:catalog"]] == ["alpha", "beta"]
    assert (tmp_path / "alpha" / "catalogue" / "catalogue.json").is_file()
    rebuilt = CliRunner().invoke(app, ["catalog", "--site-dir", str(tmp_path / "alpha"), "--rebuild"])
    assert rebuilt.exit_code == 0 and "Age" in rebuilt.output
    both = CliRunner().invoke(
        app, ["catalog", "--sites", str(tmp_path / "x.toml"), "--site-dir", str(tmp_path)]
    )
    assert both.exit_code == 2 and "either --sites FILE or" in both.output
    missing = CliRunner().invoke(app, ["catalog", "--sites", str(tmp_path / "x.toml")])
    assert missing.exit_code == 2 and "x.toml" in missing.output


def test_the_publisher_runs_on_schedule(tmp_path: Path) -> None:
    import time

    site = _site(tmp_path, "alpha", n=6, thal=6)
    publisher = CataloguePublisher(site, interval=timedelta(0))
    try:
        assert _dataset(publisher.current(), "Patient")["paroma:patients"] == 6
        stop = publisher.start(check_every_s=0.05)
        try:
            site.fhir.ingest_bundle(
                {"resourceType": "Bundle", "type": "transaction", "entry": _entries("cleveland", 9)}
            )
            deadline = time.monotonic() + 30
            while publisher.rebuilds < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
        # rebuilt by the schedule, not by a request: the file on disk has the new data
        on_disk = json.loads(publisher.path.read_text())
        assert _dataset(on_disk, "Patient")["paroma:patients"] == 9
    finally:
        site.close()
