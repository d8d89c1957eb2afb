"""The audit log: hash chain, Ed25519 signatures and signed head; every tampering is
detected (edit, deletion, insertion, reordering); appends survive crashes and
concurrent writers; a patient sees only their own part."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from clinical_node.site import Site
from paroma.cli import app
from protection_layer.audit import CONSENT_CHANGE, RECOVERY, RELEASE, AuditLog

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def log(site: Site) -> AuditLog:
    audit = AuditLog.for_site(site.root)
    audit.append(
        CONSENT_CHANGE,
        {"patient": "p1", "consent": "c1", "version": 1, "change": "created", "status": "active"},
    )
    audit.append(
        CONSENT_CHANGE,
        {"patient": "p2", "consent": "c2", "version": 1, "change": "created", "status": "active"},
    )
    audit.append("admission", {"job": "j" * 64, "accepted": True, "reason": "admitted"})
    audit.append(
        RELEASE,
        {
            "job": "j" * 64,
            "job_name": "demo",
            "round": 1,
            "patients": {"p1": "c1/1", "p2": "c2/1"},
            "resources": 20,
        },
    )
    audit.append(
        CONSENT_CHANGE,
        {"patient": "p2", "consent": "c2", "version": 2, "change": "updated", "status": "inactive"},
    )
    audit.append(
        RELEASE,
        {"job": "j" * 64, "job_name": "demo", "round": 2, "patients": {"p1": "c1/1"}, "resources": 10},
    )
    return audit


def lines(audit: AuditLog) -> list[bytes]:
    return audit.path.read_bytes().splitlines(keepends=True)


def write(audit: AuditLog, content: list[bytes]) -> None:
    audit.path.write_bytes(b"".join(content))


def test_an_untouched_log_verifies_and_its_key_is_private(log: AuditLog) -> None:
    result = log.verify()
    assert result.ok and result.entries == 6 and not result.warnings
    assert log.key_path.stat().st_mode & 0o777 == 0o600
    entries = list(log.entries())
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5, 6]
    assert all(e["prev"] == p["hash"] for p, e in itertools.pairwise(entries))


def test_an_edited_entry_is_detected(log: AuditLog) -> None:
    content = lines(log)
    entry = json.loads(content[3])
    entry["data"]["patients"].pop("p2")  # hide that p2's data was used
    content[3] = (json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n").encode()
    write(log, content)
    problems = log.verify().problems
    assert any("line 4 (seq 4): content does not match its hash" in p for p in problems), problems


def test_an_edited_entry_with_a_recomputed_hash_is_detected_by_its_signature(log: AuditLog) -> None:
    from protection_layer.audit import entry_hash

    content = lines(log)
    entry = json.loads(content[2])
    entry["data"]["accepted"] = False
    entry["hash"] = entry_hash(entry)
    content[2] = (json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n").encode()
    write(log, content)
    problems = log.verify().problems
    assert any("seq 3): signature is not the site's" in p for p in problems), problems
    assert any("line 4 (seq 4): does not chain" in p for p in problems), problems


def test_a_deleted_entry_is_detected(log: AuditLog) -> None:
    content = lines(log)
    del content[2]
    write(log, content)
    problems = log.verify().problems
    assert any("line 3: sequence number 4, expected 3 (entries deleted or moved)" in p for p in problems), (
        problems
    )


def test_deleting_the_last_entries_is_detected_by_the_signed_head(log: AuditLog) -> None:
    write(log, lines(log)[:-2])
    problems = log.verify().problems
    assert problems == [
        "the log ends at seq 4 but the signed head records seq 6 (entries deleted at the end)"
    ]


def test_an_inserted_entry_is_detected(log: AuditLog, tmp_path: Path) -> None:
    other = AuditLog(tmp_path / "other", tmp_path / "other-key.pem")  # someone else's key
    other.append(RELEASE, {"job": "x", "round": 9, "patients": {"p1": "c1/1"}})
    forged = json.loads(other.path.read_bytes())
    content = lines(log)
    forged["seq"], forged["prev"] = 3, json.loads(content[1])["hash"]
    content.insert(2, (json.dumps(forged, sort_keys=True, separators=(",", ":")) + "\n").encode())
    write(log, content)
    problems = log.verify().problems
    assert any("seq 3): content does not match its hash" in p for p in problems), problems
    assert any(
        "sequence number 3, expected 4 (entries inserted, duplicated or moved)" in p for p in problems
    ), problems


def test_reordered_entries_are_detected(log: AuditLog) -> None:
    content = lines(log)
    content[1], content[2] = content[2], content[1]
    write(log, content)
    problems = log.verify().problems
    assert any("line 2: sequence number 3, expected 2" in p for p in problems), problems
    assert any("does not chain to the entry before it" in p for p in problems), problems


def test_a_torn_append_is_reported_then_cut_off_by_the_next_append(log: AuditLog) -> None:
    with open(log.path, "ab") as handle:
        handle.write(b'{"seq":7,"time":"2025-')  # a crash in the middle of a write
    result = log.verify()
    assert result.ok and "interrupted append" in result.warnings[0]
    log.append("round", {"job": "j", "round": 3})
    entries = list(log.entries())
    assert [e["kind"] for e in entries[-2:]] == [RECOVERY, "round"]
    assert entries[-2]["data"] == {"torn_bytes": 22}
    assert log.verify().ok and not log.verify().warnings


def test_appends_killed_mid_way_leave_a_verifiable_log(site: Site) -> None:
    script = (
        "import sys\n"
        "from protection_layer.audit import AuditLog\n"
        "log = AuditLog.for_site(sys.argv[1])\n"
        "print('ready', flush=True)\n"
        "i = 0\n"
        "while True:\n"
        "    log.append('round', {'i': i, 'padding': 'x' * 4000})\n"
        "    i += 1\n"
    )
    for attempt in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", script, str(site.root)], cwd=ROOT, stdout=subprocess.PIPE
        )
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        time.sleep(0.3 + 0.1 * attempt)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        result = AuditLog.for_site(site.root).verify()
        assert result.ok, result.problems
    audit = AuditLog.for_site(site.root)
    audit.append("round", {"after": "crashes"})
    final = audit.verify()
    assert final.ok and final.entries > 3


def test_concurrent_writers_keep_one_chain(site: Site) -> None:
    script = (
        "import sys\n"
        "from protection_layer.audit import AuditLog\n"
        "log = AuditLog.for_site(sys.argv[1])\n"
        "for i in range(40):\n"
        "    log.append('round', {'writer': sys.argv[2], 'i': i})\n"
    )
    AuditLog.for_site(site.root).append("round", {"start": True})  # makes the key once
    children = [
        subprocess.Popen([sys.executable, "-c", script, str(site.root), str(w)], cwd=ROOT) for w in range(3)
    ]
    assert [c.wait() for c in children] == [0, 0, 0]
    result = AuditLog.for_site(site.root).verify()
    assert result.ok and result.entries == 121


def test_a_patient_sees_only_their_own_part(log: AuditLog) -> None:
    mine = log.for_patient("p2")
    assert [(e["kind"], e.get("round"), e.get("consent")) for e in mine] == [
        ("consent-change", None, "c2"),
        ("data-release", 1, "c2/1"),
        ("consent-change", None, "c2"),
    ]
    assert "p1" not in json.dumps(mine) and "c1" not in json.dumps(mine)
    assert log.for_patient("p3") == []


# -- the CLI -----------------------------------------------------------------------------------


def run(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def test_audit_cli_verifies_lists_and_reports_tampering(log: AuditLog, site: Site) -> None:
    ok = run("audit", "verify", site.root)
    assert ok.exit_code == 0 and "6 entries, chain, signatures and head verified" in ok.output
    listed = run("audit", "list", site.root, "--patient", "p1")
    assert [json.loads(x)["kind"] for x in listed.output.splitlines()] == [
        "consent-change",
        "data-release",
        "data-release",
    ]
    kinds = run("audit", "list", site.root, "--kind", "admission")
    assert len(kinds.output.splitlines()) == 1
    content = lines(log)
    del content[1]
    write(log, content)
    bad = run("audit", "verify", site.root)
    assert bad.exit_code == 1 and "TAMPERED: line 2: sequence number 3, expected 2" in bad.output


def test_audit_verify_without_the_site_key_says_so(log: AuditLog, site: Site) -> None:
    log.key_path.unlink()
    result = run("audit", "verify", site.root)
    assert result.exit_code == 2 and "cannot read the audit signing key" in result.output
