"""`komut validate sample_messages/` matches sample_messages/manifest.toml exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import SAMPLES


def _run_cli():
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "validate", "--json", str(SAMPLES)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc, [json.loads(line) for line in proc.stdout.splitlines()]


def test_validate_matches_manifest(manifest):
    proc, reports = _run_cli()
    by_file = {str(Path(r["path"]).relative_to(SAMPLES)): r for r in reports}
    expected = {m["file"]: m for m in manifest}
    assert set(by_file) == set(expected), "every sample file is in the manifest and vice versa"
    mismatches = []
    for name, entry in expected.items():
        report = by_file[name]
        codes = sorted({p["code"] for p in report["problems"] if p["severity"] == "error"})
        if entry["expect"] == "valid":
            ok = report["valid"] and (entry.get("type") in (None, report["type"]))
            want = f"valid {entry.get('type', '')}".strip()
        else:
            ok = not report["valid"] and codes == sorted(set(entry["expect"]))
            want = sorted(set(entry["expect"]))
        if not ok:
            mismatches.append(
                f"{name}: expected {want}, got {codes or 'valid'} {report['type']}: {report['problems'][:3]}"
            )
    assert not mismatches, "\n".join(mismatches)
    # Exit status: the folder holds invalid samples, so the CLI must say 1.
    assert proc.returncode == 1


def test_manifest_covers_every_code_the_validator_emits(manifest):
    emitted = {"T01", "T02", "T10", "T99", "E10", "E30", "E31", "E32", "E36", "X99"}
    seen = {code for m in manifest if m["expect"] != "valid" for code in m["expect"]}
    assert emitted <= seen, f"codes without an invalid sample: {sorted(emitted - seen)}"
    assert sum(1 for m in manifest if m["expect"] != "valid") >= 30


def test_every_problem_says_where_and_what(manifest, validator):
    for entry in manifest:
        if entry["expect"] == "valid":
            continue
        result = validator.validate((SAMPLES / entry["file"]).read_bytes())
        for problem in result.errors:
            assert problem.message and problem.code_text, entry["file"]
            if str(problem.code) not in ("T01",) and problem.line is None:
                raise AssertionError(f"{entry['file']}: {problem} has no line")
