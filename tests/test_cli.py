"""The CLI as users run it: exit codes, JSON shape, inspect and schemas."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import OFFICIAL_XSD, SAMPLES, need_reference


def komut(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=120
    )


def _first(manifest, predicate):
    return SAMPLES / next(m["file"] for m in manifest if predicate(m))


def test_validate_exit_codes(manifest, tmp_path):
    valid = _first(manifest, lambda m: m["expect"] == "valid")
    invalid = _first(manifest, lambda m: m["expect"] != "valid")
    assert komut("validate", str(valid)).returncode == 0
    assert komut("validate", str(valid), str(invalid)).returncode == 1
    assert komut("validate", str(tmp_path / "missing.xml")).returncode == 2
    assert komut("validate").returncode == 2
    assert komut("validate", "--schema-dir", str(tmp_path / "nope"), str(valid)).returncode == 2


def test_validate_json_shape(manifest):
    invalid = _first(manifest, lambda m: m["expect"] != "valid" and "E10" in m["expect"])
    proc = komut("validate", "--json", str(invalid))
    report = json.loads(proc.stdout)
    assert set(report) >= {"path", "valid", "type", "problems"}
    assert report["valid"] is False
    problem = next(p for p in report["problems"] if p["code"] == "E10")
    assert set(problem) >= {"code", "message", "line", "path"}
    assert problem["line"] and problem["path"].endswith("MsgId")


def test_inspect_masks_patient_by_default(manifest):
    path = _first(manifest, lambda m: m.get("type") == "LOG_INNLAGT")
    plain = komut("inspect", "--json", str(path))
    assert plain.returncode == 0
    facts = json.loads(plain.stdout)
    fnr = facts["patient"]["idents"][0]["id"]
    assert fnr.endswith("*****") and facts["type"] == "LOG_INNLAGT"
    assert [lvl["her_id"] for lvl in facts["sender"]] == ["9100000", "9100201"]
    shown = json.loads(komut("inspect", "--json", "--show-patient", str(path)).stdout)
    assert shown["patient"]["idents"][0]["id"].isdigit()
    text = komut("inspect", str(path)).stdout
    assert "LOG_INNLAGT" in text and "9100201" in text and fnr in text


def test_schemas_lists_built_in_and_schema_dir():
    built_in = [json.loads(line) for line in komut("schemas", "--json").stdout.splitlines()]
    namespaces = {row["namespace"]: row for row in built_in}
    assert namespaces["http://www.kith.no/xmlstds/msghead/2006-05-24"]["source"] == "built-in"
    assert "http://www.kith.no/xmlstds/po/Pasientlogistikk/2012-04-01" in namespaces
    need_reference()
    extended = [
        json.loads(line)
        for line in komut("schemas", "--json", "--schema-dir", str(OFFICIAL_XSD)).stdout.splitlines()
    ]
    by_ns = {row["namespace"]: row for row in extended}
    # Added: Epikrise 1.2 is not built in; overridden: MsgHead now comes from the folder.
    assert by_ns["http://www.kith.no/xmlstds/epikrise/2012-02-15"]["source"] == str(OFFICIAL_XSD.resolve())
    assert by_ns["http://www.kith.no/xmlstds/msghead/2006-05-24"]["source"] == str(OFFICIAL_XSD.resolve())


def test_schema_dir_turns_t10_into_a_verdict(manifest):
    """A format komut does not build in is T10 by default and is validated with --schema-dir."""
    unsupported = [
        m
        for m in manifest
        if m["expect"] == ["T10"] and "plo15" in m["file"].replace("-", "").replace("_", "")
    ]
    if not unsupported:
        unsupported = [m for m in manifest if m["expect"] == ["T10"] and "epikrise" in m["file"]]
    assert unsupported, "the samples include a message in a format that is not built in"
    need_reference()
    path = SAMPLES / unsupported[0]["file"]
    proc = komut("validate", "--json", "--schema-dir", str(OFFICIAL_XSD), str(path))
    report = json.loads(proc.stdout)
    assert "T10" not in {p["code"] for p in report["problems"]}, report


def test_explain_asks_xmlschema_why_a_schema_invalid_file_fails(manifest):
    path = _first(manifest, lambda m: m["expect"] == ["T02"] and "wrong-order" in m["file"])
    report = json.loads(komut("validate", "--json", "--explain", str(path)).stdout)
    assert report["valid"] is False and report["explanations"]
    assert all(e["reason"] and e["path"].startswith("/") for e in report["explanations"])
    valid = _first(manifest, lambda m: m["expect"] == "valid")
    assert json.loads(komut("validate", "--json", "--explain", str(valid)).stdout)["explanations"] == []
