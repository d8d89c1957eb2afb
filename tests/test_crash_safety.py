"""kill -9 in the middle of writing: a child process ingests FHIR bundles, stores consent
bundles and appends audit batches in a loop (tests/crash_writer.py) and is killed at random
moments. After each kill, the site is opened again and every store must be whole: the FHIR
store holds whole bundles only, every consent version is whole and readable with no gap in
its history, every stored consent version has its audit entry, and the audit log verifies
(as ``paroma audit verify`` does)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from clinical_node.fhir.errors import ResourceNotFound
from clinical_node.site import Site
from paroma.cli import app as cli
from protection_layer.audit import CONSENT_CHANGE
from protection_layer.layer import ProtectionLayer

ROOT = Path(__file__).resolve().parent.parent
WRITER = Path(__file__).with_name("crash_writer.py")
KILLS = 5


def _check_whole(site_dir: Path) -> int:
    """Open the site as a restarted node would and check every store; returns bundles stored."""
    site = Site.open(site_dir)
    layer = ProtectionLayer(site)
    try:
        counts = site.fhir.counts()
        patients = counts.get("Patient", 0)
        assert counts.get("Observation", 0) == 2 * patients, f"a bundle was stored in part: {counts}"
        for pid in site.fhir.patients():
            assert site.fhir.search("Observation", patient=pid).total == 2

        audited = {
            (e["data"]["consent"], e["data"]["version"])
            for e in layer.audit.entries()
            if e.get("kind") == CONSENT_CHANGE
        }
        stored = layer.consents.count()
        versions_by_consent = {}
        for k in range(3):
            consent_id = f"c{k}"
            try:
                history = layer.consents.history(consent_id)
            except ResourceNotFound:  # killed before the first consent bundle was stored
                assert stored.get("consents", 0) == 0, stored
                continue
            versions = sorted(int(c["meta"]["versionId"]) for c in history)
            assert versions == list(range(1, len(versions) + 1)), f"{consent_id}: versions {versions}"
            assert layer.consents.read(consent_id)["meta"]["versionId"] == str(versions[-1])
            missing = [v for v in versions if (consent_id, v) not in audited]
            assert not missing, f"{consent_id}: versions {missing} are stored but not in the audit log"
            versions_by_consent[consent_id] = len(versions)
        # one consent bundle = one transaction: the three consents move together
        assert len(set(versions_by_consent.values())) <= 1, versions_by_consent

        logged = layer.audit.path.exists()
        if logged:
            verification = layer.audit.verify()
            assert verification.ok, verification.problems
    finally:
        layer.close()
        site.close()
    if logged:
        result = CliRunner().invoke(cli, ["audit", "verify", str(site_dir)])
        assert result.exit_code == 0, result.output
    return patients


def test_stores_are_whole_after_kill_9_at_random_moments(tmp_path: Path) -> None:
    site = Site.create(tmp_path / "site", "crash-site", "Crash Hospital")
    site.close()
    rng = random.Random(20261201)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    stored = 0
    for _ in range(KILLS):
        child = subprocess.Popen(
            [sys.executable, str(WRITER), str(site.root), str(stored + 1000)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
        )
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.3, 1.5))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        now = _check_whole(site.root)
        assert now >= stored
        stored = now
    assert stored > 0, "the writer never completed a bundle before being killed"
