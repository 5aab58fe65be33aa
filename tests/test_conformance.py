"""`komut conformance`: the whole trip in a sandbox, compared with the manifest."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from conftest import REPO, SAMPLES


def komut(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=300, cwd=REPO
    )


def test_conformance_passes_on_the_samples(demo_pki):
    proc = komut("conformance", "--json", "--pki-dir", str(demo_pki / "pki"), str(SAMPLES))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) >= 80
    valid = [r for r in rows if r["actual"] == "valid" and r["type"] != "APPREC"]
    assert valid and all(r["protection"].startswith("signed") for r in valid), valid[0]
    assert all(r["apprec"].startswith("1 ") for r in valid)
    refused = [r for r in rows if r["expected"] not in (None, "valid") and r["type"] != "APPREC"]
    assert all(r["apprec"].startswith(("2 ", "none")) for r in refused)
    assert "passed, 0 failed" in proc.stderr


def test_conformance_reports_a_mismatch(tmp_path, demo_pki):
    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(SAMPLES / "valid/plo/01-log-innlagt.xml", folder / "a.xml")
    shutil.copy(next((SAMPLES / "invalid").glob("e10-*.xml")), folder / "b.xml")
    # The integrator expected b.xml to be valid and a.xml to be refused: both are mismatches.
    (folder / "manifest.toml").write_text(
        '[[message]]\nfile = "a.xml"\nexpect = ["E10"]\n\n[[message]]\nfile = "b.xml"\nexpect = "valid"\n'
    )
    proc = komut("conformance", "--pki-dir", str(demo_pki / "pki"), str(folder))
    assert proc.returncode == 1
    assert proc.stdout.count("MISMATCH") == 2
    assert "0 passed, 2 failed" in proc.stdout
    assert komut("conformance", str(tmp_path / "missing")).returncode == 2
