"""`komut registry list|show|check`."""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.commands import registry as registry_command

REPO = Path(__file__).resolve().parent.parent
NOW = dt.datetime.now(dt.UTC)
ORG = "191000005"

REGISTRY = f"""
[protection.standard]
send_cipher = "aes256"
accept_ciphers = ["aes256"]

[profiles.apprec]
APPREC = ["1.0", "1.1"]

[[party]]
her_id = 100
name = "Testby kommune"
kind = "organisation"
category = "municipality"
org_no = "{ORG}"
endpoint = {{ transport = "https", gateway = "municipal" }}
protection = "standard"
accepts = ["apprec"]
certificates = {{ dir = "parties/100" }}

[[party]]
her_id = 101
name = "Sykepleietjeneste, pleie og omsorg"
kind = "service"
parent = 100
"""


def run(*argv: str) -> tuple[int, str, str]:
    """Run a `komut registry ...` command in-process through its own `register()`."""
    parser = argparse.ArgumentParser(prog="komut")
    registry_command.register(parser.add_subparsers())
    args = parser.parse_args(["registry", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = args.func(args, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def write_cert(path: Path, *, days: int, usage: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, ORG)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=400))
        .not_valid_after(NOW + dt.timedelta(days=days))
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=usage == "sign",
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=usage == "enc",
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture
def reg_dir(tmp_path) -> Path:
    (tmp_path / "registry.toml").write_text(REGISTRY, "utf-8")
    write_cert(tmp_path / "parties/100/sign.pem", days=365, usage="sign")
    write_cert(tmp_path / "parties/100/enc.pem", days=365, usage="enc")
    return tmp_path


def test_list_default_network_text():
    code, out, _ = run("list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("9100000  organisation  Vestre Viken HF")
    assert "    9100201  service       Somatikk plo meldingsmottak" in lines


def test_list_json_file(reg_dir):
    code, out, _ = run("list", "--json", "--registry", str(reg_dir / "registry.toml"))
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["her_id"], r["kind"], r["parent"]) for r in rows] == [
        (100, "organisation", None),
        (101, "service", 100),
    ]
    assert rows[1]["municipality"] == "Testby kommune" and rows[1]["org_no"] == ORG
    assert rows[1]["certificate_holder"] == 100


def test_show(reg_dir):
    code, out, _ = run("show", "101", "--registry", str(reg_dir / "registry.toml"))
    assert code == 0
    assert "Testby kommune, Sykepleietjeneste, pleie og omsorg" in out
    assert "https gateway municipal  (from 100)" in out
    assert "subject 2.5.4.5=191000005" in out
    code, out, _ = run("show", "101", "--json", "--registry", str(reg_dir / "registry.toml"))
    detail = json.loads(out)
    assert detail["inherited_from"] == {
        "org_no": 100,
        "endpoint": 100,
        "protection": 100,
        "accepts": 100,
        "certificates": 100,
    }
    assert detail["certificates"]["enc"]["loaded"] is True
    assert detail["accepted_messages"] == {"APPREC": ["1.0", "1.1"]}


def test_show_unknown_her_id():
    code, _, err = run("show", "1234567")
    assert code == 1 and "unknown HER-id 1234567" in err


def test_show_default_network_without_cert_dir():
    code, out, _ = run("show", "9203001")
    assert code == 0
    assert "parties/9203000/sign.pem  (not read: no --cert-dir)" in out


def test_check_ok(reg_dir):
    code, out, _ = run("check", "--registry", str(reg_dir / "registry.toml"))
    assert code == 0, out
    assert "OK: 0 error(s), 0 warning(s)" in out
    assert "2 certificate(s) read" in out


def test_check_warns_about_certificates_expiring_within_30_days(reg_dir):
    write_cert(reg_dir / "parties/100/enc.pem", days=20, usage="enc")
    code, out, _ = run("check", "--registry", str(reg_dir / "registry.toml"))
    assert code == 0
    assert "warning: 100 certificates.enc:" in out and "within 30 days" in out


def test_check_fails_on_expired_certificate(reg_dir):
    write_cert(reg_dir / "parties/100/sign.pem", days=-1, usage="sign")
    code, out, _ = run("check", "--registry", str(reg_dir / "registry.toml"))
    assert code == 1 and "error: 100 certificates.sign:" in out and "expired" in out


def test_check_broken_file_lists_every_problem(reg_dir):
    broken = (
        REGISTRY.replace("parent = 100", "parent = 999")
        + '\n[[party]]\nher_id = 100\nname = "Twin"\nkind = "organisation"\norg_no = "191000006"\n'
    )
    (reg_dir / "registry.toml").write_text(broken, "utf-8")
    (reg_dir / "parties/100/enc.pem").unlink()
    code, out, _ = run("check", "--registry", str(reg_dir / "registry.toml"))
    assert code == 1
    assert "unknown parent HER-id 999" in out
    assert "duplicate HER-id" in out
    assert "not a valid organisation number" in out
    assert "missing certificate file" in out
    assert "refused: 4 problem(s)" in out
    code, out, _ = run("check", "--json", "--registry", str(reg_dir / "registry.toml"))
    assert code == 1 and len([json.loads(line) for line in out.splitlines()]) == 4
    # list and show refuse it as well, on stderr
    code, out, err = run("list", "--registry", str(reg_dir / "registry.toml"))
    assert code == 1 and out == "" and "unknown parent HER-id 999" in err


def test_cert_dir_option(reg_dir, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / "registry.toml").write_text(REGISTRY, "utf-8")
    code, out, _ = run("check", "--registry", str(elsewhere / "registry.toml"))
    assert code == 1 and "missing certificate file" in out
    code, out, _ = run("check", "--registry", str(elsewhere / "registry.toml"), "--cert-dir", str(reg_dir))
    assert code == 0, out


def test_through_komut_cli():
    """The real entry point: `python -m gateway.cli registry list --json`."""
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "registry", "list", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) > 150 and rows[0]["name"] == "Vestre Viken HF"
