"""Feasibility queries: a site with a known consent mix answers through its real HTTP
service (counts per class, small counts suppressed, audited, consent requests queued),
the aggregator gathers several sites and reports one that does not answer, and the CLI
asks site folders directly."""

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
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from aggregator.feasibility import combine, query_feasibility
from aggregator.sites import SitesError, load_sites
from clinical_node.auth import TokenStore
from clinical_node.datasets.uci_heart import hospital_bundle as _hospital_bundle
from clinical_node.service import create_app
from clinical_node.site import Site
from paroma.cli import app
from paroma.demo import DEMO_ORGANIZATION, DEMO_POLICY
from protection_layer import ProtectionLayer, research_consent
from protection_layer.audit import FEASIBILITY, AuditLog
from protection_layer.consent_requests import ConsentRequestError, ConsentRequests
from protection_layer.feasibility import CLASSES, suppress

# converted once per test session: the UCI converter is not what these tests measure
hospital_bundle = cache(_hospital_bundle)

# Per kind of patient: how many, their consent, and whether they have observations.
MIX = {
    "usable": 20,  # permit health research, observations present
    "clinical-trial-only": 4,  # permit only CLINTRCH: no consent for HRESCH, observations present
    "silent": 5,  # no consent at all, observations present
    "opt-out": 6,  # deny
    "no-data": 3,  # permit, but no observations yet
}
EXPECTED = {"usable": 20, "needs_consent": 9, "unknown": 3, "refused": 6}
QUERY = {"purpose": "HRESCH", "organization": DEMO_ORGANIZATION, "spec": "flamby-heart-disease"}


def _build_site(root: Path, site_id: str, *, k: int = 5) -> Path:
    """A site holding 38 Cleveland patients whose consents follow ``MIX``."""
    bundle = hospital_bundle("cleveland")
    patients = sorted(
        e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )[: sum(MIX.values())]
    kinds: dict[str, str] = {}
    i = 0
    for kind, n in MIX.items():
        for patient in patients[i : i + n]:
            kinds[patient] = kind
        i += n
    keep = []
    for entry in bundle["entry"]:
        resource = entry["resource"]
        rid = resource["id"]
        owner = rid if resource["resourceType"] == "Patient" else rid.rsplit("-", 1)[0]
        if resource["resourceType"] == "Organization" or (
            owner in kinds and not (resource["resourceType"] == "Observation" and kinds[owner] == "no-data")
        ):
            keep.append(entry)
    site = Site.create(
        root / site_id, site_id, f"Hospital {site_id}", policy=replace(DEMO_POLICY, small_count_threshold=k)
    )
    site.fhir.ingest_bundle({**bundle, "entry": keep})
    layer = ProtectionLayer(site)
    signed = datetime.now(UTC) - timedelta(days=30)
    consents = []
    for n, (patient, kind) in enumerate(sorted(kinds.items())):
        if kind == "silent":
            continue
        consents.append(
            research_consent(
                f"c{n}",
                patient,
                decision="deny" if kind == "opt-out" else "permit",
                signed=signed,
                purposes=("CLINTRCH",) if kind == "clinical-trial-only" else ("HRESCH",),
            )
        )
    layer.consents.put_many(consents)
    layer.close()
    site.close()
    return root / site_id


def _token(folder: Path, role: str = "aggregator", subject: str = "aggregator-eu") -> str:
    return TokenStore(folder / "keys" / "api-tokens.json").issue(role, subject)


@pytest.fixture
def node(tmp_path: Path) -> Any:
    folder = _build_site(tmp_path, "alpha", k=1)
    site = Site.open(folder)
    with LiveServer(create_app(site)) as server:
        yield folder, server
    site.close()


def _post(server: LiveServer, token: str | None, body: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{server.url}/federation/feasibility", json=body, headers=headers, timeout=60)


def test_counts_per_class_through_the_endpoint(node: Any) -> None:
    folder, server = node
    token = _token(folder)
    response = _post(server, token, QUERY)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["site"] == "alpha" and answer["k"] == 1
    assert answer["counts"] == EXPECTED
    assert answer["consent_requests"] is None
    assert len(answer["policy_version"]) == 64
    # no record-level data: no patient id appears in the answer
    assert "cleveland-" not in response.text
    # the same cohort by codes: any Observation with the spec's codes
    by_codes = _post(
        server,
        token,
        {
            "purpose": "HRESCH",
            "organization": DEMO_ORGANIZATION,
            "resource_type": "Observation",
            "codes": [{"system": "http://loinc.org", "code": "30525-0"}],
        },
    )
    assert by_codes.status_code == 200 and by_codes.json()["counts"] == EXPECTED
    # another purpose: the clinical-trial consents permit, the research ones (permit and
    # opt-out alike) do not apply; nobody is refused, and 0 < k = 1 is suppressed with
    # the next smallest class
    trial = _post(server, token, {**QUERY, "purpose": "CLINTRCH"})
    assert trial.json()["counts"] == {"usable": 4, "needs_consent": 31, "unknown": "<1", "refused": "<1"}


def test_every_query_is_audited_at_the_site(node: Any) -> None:
    folder, server = node
    token = _token(folder, subject="aggregator-eu")
    assert _post(server, token, QUERY).status_code == 200
    assert _post(server, token, {**QUERY, "purpose": "PUBHLTH"}).status_code == 200
    log = AuditLog.for_site(folder)
    entries = [e for e in log.entries() if e["kind"] == FEASIBILITY]
    assert [e["data"]["purpose"] for e in entries] == ["HRESCH", "PUBHLTH"]
    first = entries[0]["data"]
    assert first["requester"] == "aggregator-eu" and first["organization"] == DEMO_ORGANIZATION
    assert first["reported"] == EXPECTED and first["k"] == 1
    assert first["cohort"]["resource_type"] == "Observation" and first["cohort"]["codes"]
    assert log.verify().ok


def test_consent_requests_are_queued_once_for_the_patients_without_consent(node: Any) -> None:
    folder, server = node
    token = _token(folder)
    body = {**QUERY, "consent_request": {"study": "heart-2027", "message": "May we use your data?"}}
    first = _post(server, token, body)
    assert first.status_code == 200 and first.json()["consent_requests"] == 9
    again = _post(server, token, body)
    assert again.json()["consent_requests"] == 9
    requests = ConsentRequests.for_site(folder)
    try:
        site = Site.open(folder)
        patients = site.fhir.patients()
        site.close()
        silent = patients[24]  # the first "silent" patient (see MIX)
        usable = patients[0]
        pending = requests.pending(silent)
        assert [(r.study, r.purpose, r.message) for r in pending] == [
            ("heart-2027", "HRESCH", "May we use your data?")
        ]
        assert requests.pending(usable) == []
        total = sum(len(requests.pending(p)) for p in patients)
        assert total == 9  # queued once, not twice
        answered = requests.answer(pending[0].request_id, True)
        assert answered.status == "accepted" and answered.answered
        assert requests.pending(silent) == []
        with pytest.raises(ConsentRequestError, match="already answered"):
            requests.answer(pending[0].request_id, False)
        with pytest.raises(ConsentRequestError, match="no consent request"):
            requests.answer("nope", True)
        entry = [e for e in AuditLog.for_site(folder).entries() if e["kind"] == FEASIBILITY][-1]
        assert entry["data"]["consent_requests"] == {"study": "heart-2027", "queued": 9}
    finally:
        requests.close()


def test_small_counts_are_suppressed_with_their_complement(tmp_path: Path) -> None:
    folder = _build_site(tmp_path, "beta", k=5)
    site = Site.open(folder)
    try:
        with LiveServer(create_app(site)) as server:
            answer = _post(server, _token(folder), QUERY).json()
    finally:
        site.close()
    # unknown (3) is below k; refused (6) is the next smallest and would give it away
    assert answer["counts"] == {"usable": 20, "needs_consent": 9, "unknown": "<5", "refused": "<5"}


def test_authentication_roles_and_bad_queries(node: Any) -> None:
    folder, server = node
    missing = _post(server, None, QUERY)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.headers["content-type"] == "application/problem+json"
    assert _post(server, "forged", QUERY).status_code == 401
    admin = _post(server, _token(folder, "site-admin", "staff"), QUERY)
    assert admin.status_code == 403 and "role aggregator needed" in admin.json()["title"]
    token = _token(folder)
    bad = _post(server, token, {**QUERY, "purpose": "SHOPPING"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "purpose"
    assert "SHOPPING" in bad.json()["detail"]
    both = _post(server, token, {**QUERY, "resource_type": "Observation"})
    assert both.status_code == 422 and "either spec or resource_type" in both.json()["detail"]
    unknown_spec = _post(server, token, {**QUERY, "spec": "nope"})
    assert (
        unknown_spec.status_code == 422
        and "'nope' is not a built-in feature spec" in unknown_spec.json()["detail"]
    )
    extra = _post(server, token, {**QUERY, "patients": ["x"]})
    assert extra.status_code == 422 and "patients" in extra.json()["detail"]
    kind = _post(server, token, {"purpose": "HRESCH", "organization": "o", "resource_type": "Secret"})
    assert kind.status_code == 422 and kind.json()["errors"][0]["field"] == "resource_type"
    # no query was answered, so none was audited
    assert not [e for e in AuditLog.for_site(folder).entries() if e["kind"] == FEASIBILITY]


def test_the_aggregator_gathers_sites_and_reports_one_that_does_not_answer(tmp_path: Path) -> None:
    folders = [_build_site(tmp_path, "alpha", k=5), _build_site(tmp_path, "gamma", k=1)]
    opened = [Site.open(f) for f in folders]
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    try:
        with LiveServer(create_app(opened[0])) as a, LiveServer(create_app(opened[1])) as g:
            (tokens / "alpha").write_text(_token(folders[0]))
            (tokens / "gamma").write_text(_token(folders[1]))
            (tokens / "down").write_text("x")
            sites_toml = tmp_path / "sites.toml"
            sites_toml.write_text(
                f'[[site]]\nid = "alpha"\nurl = "{a.url}"\ntoken_file = "tokens/alpha"\n'
                f'[[site]]\nid = "gamma"\nurl = "{g.url}"\ntoken_file = "tokens/gamma"\n'
                f'[[site]]\nid = "down"\nurl = "http://127.0.0.1:{free_port()}"\ntoken_file = "tokens/down"\n'
            )
            report = query_feasibility(load_sites(sites_toml), QUERY, timeout=20)
            assert set(report.sites) == {"alpha", "gamma"}
            assert set(report.failed) == {"down"} and "unreachable" in report.failed["down"]
            totals = report.to_dict()["totals"]
            assert totals["usable"] == {"exact": 40, "suppressed": [], "display": "40"}
            # alpha suppressed unknown and refused; only gamma's exact counts are added
            assert totals["unknown"]["exact"] == 3 and totals["unknown"]["suppressed"] == ["alpha: <5"]
            assert totals["refused"]["display"] == "6 + 1 site(s) below k"
            # the same through the CLI, as a table and as JSON
            table = CliRunner().invoke(app, ["feasibility", "--sites", str(sites_toml), *_cli_query()])
            assert table.exit_code == 0, table.output
            assert "down: did not answer: unreachable" in table.output
            assert "40" in table.output and "<5" in table.output
            as_json = CliRunner().invoke(
                app, ["feasibility", "--sites", str(sites_toml), *_cli_query(), "--json"]
            )
            assert json.loads(as_json.output)["totals"]["needs_consent"]["exact"] == 18
    finally:
        for s in opened:
            s.close()


def _cli_query() -> list[str]:
    return ["--purpose", "HRESCH", "--organization", DEMO_ORGANIZATION, "--spec", "flamby-heart-disease"]


def test_cli_asks_site_folders_directly(tmp_path: Path) -> None:
    folders = [_build_site(tmp_path, "alpha", k=1), _build_site(tmp_path, "beta", k=5)]
    args = ["feasibility", *[a for f in folders for a in ("--site-dir", str(f))], *_cli_query(), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["sites"]["alpha"]["counts"] == EXPECTED
    assert report["sites"]["beta"]["counts"]["unknown"] == "<5"
    assert report["totals"]["usable"]["exact"] == 40
    entries = [e for e in AuditLog.for_site(folders[0]).entries() if e["kind"] == FEASIBILITY]
    assert len(entries) == 1 and entries[0]["data"]["requester"].startswith("local:")
    codes = CliRunner().invoke(
        app,
        ["feasibility", "--site-dir", str(folders[0]), "--purpose", "HRESCH", "--organization", "o",
         "--resource-type", "Observation", "--code", "http://loinc.org|30525-0", "--json"],
    )  # fmt: skip
    assert json.loads(codes.output)["sites"]["alpha"]["counts"]["unknown"] == 3
    for bad, message in (
        (["--purpose", "NOPE", "--organization", "o"], "purpose: 'NOPE' is not one of"),
        (["--purpose", "HRESCH", "--organization", "o", "--code", "x"], "--code needs --resource-type"),
    ):
        out = CliRunner().invoke(app, ["feasibility", "--site-dir", str(folders[0]), *bad])
        assert out.exit_code == 2 and message in out.output
    neither = CliRunner().invoke(app, ["feasibility", *_cli_query()])
    assert neither.exit_code == 2 and "either --sites FILE or" in neither.output
    not_site = CliRunner().invoke(app, ["feasibility", "--site-dir", str(tmp_path), *_cli_query()])
    assert not_site.exit_code == 2 and "not a site folder" in not_site.output


def test_sites_file_problems_are_listed(tmp_path: Path) -> None:
    path = tmp_path / "sites.toml"
    path.write_text(
        '[[site]]\nid = "Bad Id"\nurl = "ftp://x"\n[[site]]\nid = "b"\nurl = "http://b"\ntoken_env = "NOPE_UNSET"\n'
    )
    with pytest.raises(SitesError) as err:
        load_sites(path)
    fields = [f for f, _ in err.value.problems]
    assert fields == ["site[0].id", "site[0].url", "site[0]", "site[1].token_env"]
    path.write_text("not toml [")
    with pytest.raises(SitesError, match="not valid TOML"):
        load_sites(path)


def test_combine_reports_malformed_answers_as_failed() -> None:
    report = combine(
        {"a": {"counts": dict.fromkeys(CLASSES, 7)}, "b": {"counts": {"usable": 1}}}, {"c": "down"}
    )
    assert set(report.sites) == {"a"} and set(report.failed) == {"b", "c"}
    assert report.totals["usable"].exact == 7


@given(
    st.dictionaries(st.sampled_from(CLASSES), st.integers(0, 50), min_size=4, max_size=4), st.integers(1, 10)
)
def test_suppression_never_leaves_one_small_count_recoverable(counts: dict[str, int], k: int) -> None:
    shown = suppress(counts, k)
    hidden = [name for name, v in shown.items() if isinstance(v, str)]
    assert all(shown[n] == f"<{k}" for n in hidden)
    assert all(counts[n] >= k for n in CLASSES if n not in hidden)  # every small count hidden
    assert len(hidden) != 1  # never exactly one: the published total would give it away
    assert all(shown[n] == counts[n] for n in CLASSES if n not in hidden)


def test_a_policy_that_cannot_decide_reports_nothing(tmp_path: Path) -> None:
    folder = _build_site(tmp_path, "alpha", k=1)
    (folder / "policies").mkdir(exist_ok=True)
    (folder / "policies" / "consent.rego").write_text(
        "package paroma.consent\nimport rego.v1\ndecisions[key] := x if {\n\tsome key, _ in input.patients\n\tx := 1 / 0\n}\n"
    )
    site = Site.open(folder)
    try:
        with LiveServer(create_app(site)) as server:
            response = _post(server, _token(folder), QUERY)
    finally:
        site.close()
    assert response.status_code == 503 and response.json()["title"] == "No consent decision could be made"
    assert "counts" not in response.json()
    entry = [e for e in AuditLog.for_site(folder).entries() if e["kind"] == FEASIBILITY][-1]
    assert entry["data"]["status"] == "failed" and "reported" not in entry["data"]


def _federation_pki(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (ca, cert, key)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "federation test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alpha")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "alpha.pem", folder / "alpha.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


class TlsServer(LiveServer):
    def __init__(self, app: object, cert: Path, key: Path) -> None:
        import threading

        import uvicorn

        super().__init__(app)
        self.url = f"https://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="error",
            ssl_certfile=str(cert),
            ssl_keyfile=str(key),
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)


def test_the_aggregator_asks_over_tls_checked_against_the_federation_ca(tmp_path: Path) -> None:
    folder = _build_site(tmp_path, "alpha", k=1)
    _ca, cert, key = _federation_pki(tmp_path)
    (tmp_path / "token").write_text(_token(folder))
    site = Site.open(folder)
    try:
        with TlsServer(create_app(site), cert, key) as server:
            for name, ca_line in (("with-ca", 'ca_file = "ca.pem"\n'), ("without-ca", "")):
                (tmp_path / f"{name}.toml").write_text(
                    f'[[site]]\nid = "alpha"\nurl = "{server.url}"\ntoken_file = "token"\n{ca_line}'
                )
            trusted = query_feasibility(load_sites(tmp_path / "with-ca.toml"), QUERY, timeout=20)
            assert trusted.sites["alpha"]["counts"] == EXPECTED
            # the system's CAs do not know the federation's: the site is unreachable, not trusted
            untrusted = query_feasibility(load_sites(tmp_path / "without-ca.toml"), QUERY, timeout=20)
            assert not untrusted.sites and "CERTIFICATE_VERIFY_FAILED" in untrusted.failed["alpha"]
    finally:
        site.close()


def test_consent_request_queue_on_its_own(tmp_path: Path) -> None:
    queue = ConsentRequests(tmp_path / "requests.sqlite")
    try:
        first = queue.add("p1", "heart-2027", "HRESCH", "Organization/x", "May we?")
        assert queue.add("p1", "heart-2027", "HRESCH", "Organization/x", "May we?") == first  # once per study
        other = queue.add("p1", "lungs-2027", "HRESCH", "Organization/x", "")
        assert [r.request_id for r in queue.pending("p1")] == [first, other]
        assert queue.answer(first, False).status == "declined"
        # answered: a new request for the same study may be queued again
        again = queue.add("p1", "heart-2027", "HRESCH", "Organization/x", "Please reconsider")
        assert again != first and [r.study for r in queue.pending("p1")] == ["lungs-2027", "heart-2027"]
        with pytest.raises(ConsentRequestError, match="study: required"):
            queue.add("p2", "", "HRESCH", "Organization/x", "")
        with pytest.raises(ConsentRequestError, match="patient: required"):
            queue.add_many(["p3", ""], "s", "HRESCH", "Organization/x", "")
        assert queue.pending("p3") == []  # the whole batch or nothing
    finally:
        queue.close()
    reopened = ConsentRequests(tmp_path / "requests.sqlite")
    try:
        assert len(reopened.pending("p1")) == 2  # persistent
    finally:
        reopened.close()
