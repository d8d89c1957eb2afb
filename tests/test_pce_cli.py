"""``paroma pce``: in-process on a topology, and against a running engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LiveServer
from typer.testing import CliRunner

from interconnect.pce.engine import SecurePathEngine
from interconnect.pce.nvd import NVD_NOTICE, NvdClient
from interconnect.pce.scenario import load_scenario
from paroma.cli import app

runner = CliRunner()
NVD = NvdClient()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["pce", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def server() -> Iterator[tuple[str, SecurePathEngine]]:
    from interconnect.pce.service import create_app

    engine = SecurePathEngine(*load_scenario("demo", NVD))
    with LiveServer(create_app(engine, NVD)) as live:
        yield live.url, engine


def test_compute_in_process() -> None:
    code, out, _ = run("compute", "access-1", "access-4", "-b", "100", "-d", "20000", "-s", "50")
    assert code == 0
    assert "access-1 -> router-1 -> router-5 -> router-4 -> access-4" in out
    assert "delay 2300.0 µs, lowest SI 91.83, bottleneck 1000 Mbit/s" in out


def test_compute_on_geant_with_threshold_zero() -> None:
    code, out, _ = run("compute", "NL", "GR", "-b", "1000", "-d", "100000", "--topology", "geant")
    assert code == 0 and out.startswith("NL -> ") and out.splitlines()[0].endswith("-> GR")


def test_no_path_exits_1_naming_the_constraint() -> None:
    code, out, _ = run("compute", "access-1", "access-4", "-b", "100", "-d", "1000", "-s", "50")
    assert code == 1 and out.startswith("no path [delay]: max delay")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compute", "access-1", "nowhere", "-b", "1", "-d", "10"], "error: unknown node 'nowhere'"),
        (
            ["compute", "access-1", "access-4", "-b", "-1", "-d", "10"],
            "error: bandwidth_mbps: -1 is out of range",
        ),
        (
            ["compute", "access-1", "access-4", "-b", "1", "-d", "10", "-t", "missing.yaml"],
            "error: missing.yaml: cannot read",
        ),
        (["add-cve", "router-5", "CVE-2099-0001"], "error: CVE-2099-0001 is not in the local NVD data"),
        (
            ["add-cve", "router-5", "CVE-2099-0001", "--vector", "CVSS:3.1/AV:N"],
            "error: CVE-2099-0001: malformed CVSS vector",
        ),
        (["cve", "CVE-nope"], "error: 'CVE-nope' is not a CVE id"),
    ],
)
def test_bad_arguments_get_one_line_and_exit_2(args: list[str], message: str) -> None:
    code, _, err = run(*args)
    assert code == 2
    assert err.startswith(message) and err.count("\n") == 1


def test_malformed_graphml_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.graphml"
    bad.write_text("<graphml><graph>")
    code, _, err = run("topology", "--topology", str(bad))
    assert code == 2 and err.startswith("error: bad.graphml: not valid GraphML")


def test_topology_lists_nodes_with_their_index_and_the_notice() -> None:
    code, out, _ = run("topology", "--links")
    assert code == 0
    assert "router-6" in out and "72.08" in out and "router-1--router-5" in out
    assert NVD_NOTICE in out


def test_add_cve_in_process_shows_the_index_change() -> None:
    code, out, _ = run("add-cve", "router-5", "CVE-2022-36786")
    assert code == 0
    assert "SI router-5: 91.83 -> 65.01" in out and NVD_NOTICE in out


def test_cve_lookup_offline() -> None:
    code, out, _ = run("cve", "CVE-2023-0001")
    assert code == 0 and "CVSS 6.7 MEDIUM" in out.upper() and NVD_NOTICE in out


def test_against_a_running_engine(server: tuple[str, SecurePathEngine]) -> None:
    url, engine = server
    common = ["-b", "100", "-d", "20000", "-s", "50", "--server", url]
    code, out, _ = run("compute", "access-1", "access-4", "--name", "p1", "--install", *common)
    assert code == 0 and "router-5" in out
    assert [p.name for p in engine.paths()] == ["p1"]
    code, out, _ = run("add-cve", "router-5", "CVE-2022-36786", "--server", url)
    assert code == 0 and "path p1 moved: access-1 -> router-1 -> router-2 -> router-3" in out
    code, out, _ = run("paths", "--server", url)
    assert code == 0 and out.startswith("p1  v2  active  access-1 -> router-1 -> router-2")
    code, _, err = run("compute", "access-1", "access-4", "--name", "p1", "--install", *common)
    assert code == 2 and "already installed" in err


def test_unreachable_server_is_one_line() -> None:
    code, _, err = run("paths", "--server", "http://127.0.0.1:9")
    assert code == 2 and err.startswith("error: cannot reach the engine at http://127.0.0.1:9")


def test_serve_runs_the_gui_and_api_as_a_process(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    import httpx
    from conftest import free_port

    port = free_port()
    command = [sys.executable, "-m", "paroma.cli", "pce", "serve", "--port", str(port), "--topology", "geant"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                topology = httpx.get(f"http://127.0.0.1:{port}/api/topology", timeout=2).json()
                break
            except httpx.HTTPError:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                assert time.monotonic() < deadline, "paroma pce serve did not answer within 60 s"
                time.sleep(0.2)
        assert topology["name"] == "Geant2012" and len(topology["nodes"]) == 40
        assert "Secure traffic engine" in httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=20)
    assert "Secure Traffic Engine on http://127.0.0.1" in output and NVD_NOTICE in output
