"""Interop with implementations we did not write: openssl (both ways) and python-cryptography's own
CMS decryption, through the `komut protect` / `komut unprotect` commands operators use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import pkcs7
from protection_helpers import HOSPITAL, MESSAGE, MUNICIPALITY, Pki, komut, openssl

from gateway.protection import Credential, load_certificate, load_private_key

pytest_plugins = ("protection_fixtures",)


@pytest.fixture(scope="module")
def work(tmp_path_factory, pki: Pki) -> Path:
    directory = tmp_path_factory.mktemp("interop")
    (directory / "message.xml").write_bytes(MESSAGE)
    # openssl cms -verify takes CRLs from the trust store when -crl_check is on.
    (directory / "store.pem").write_bytes(pki.path("ca.pem").read_bytes() + pki.path("crl.pem").read_bytes())
    return directory


def sender_files(pki: Pki, her_id: int = HOSPITAL) -> tuple[Path, Path]:
    return pki.path("parties", her_id, "sign.key"), pki.path("parties", her_id, "sign.pem")


def receiver_args(pki: Pki, her_id: int = MUNICIPALITY) -> list:
    party = pki.path("parties", her_id)
    return [
        "--decrypt-key",
        party / "enc.key",
        "--decrypt-cert",
        party / "enc.pem",
        "--trust",
        pki.path("ca.pem"),
    ]


# -- komut makes, openssl reads -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cipher", "pem"), [("aes256", False), ("des3", False), ("aes128", False), ("aes256", True)]
)
def test_openssl_decrypts_and_verifies_what_komut_protect_makes(pki: Pki, work: Path, cipher, pem):
    key, cert = sender_files(pki)
    out = work / f"komut-{cipher}-{pem}.p7m"
    proc = komut(
        "protect", work / "message.xml", "-o", out, "--sign-key", key, "--sign-cert", cert,
        "--encrypt-for", pki.path("parties", MUNICIPALITY, "enc.pem"), "--cipher", cipher,
        *(["--pem"] if pem else []),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes().startswith(b"-----BEGIN PKCS7-----") == pem
    receiver = pki.path("parties", MUNICIPALITY)
    signed = work / f"signed-{cipher}-{pem}.der"
    openssl(
        "cms", "-decrypt", "-binary", "-inform", "PEM" if pem else "DER", "-in", out,
        "-recip", receiver / "enc.pem", "-inkey", receiver / "enc.key", "-out", signed,
    )  # fmt: skip
    content = work / f"content-{cipher}-{pem}.xml"
    openssl(
        "cms", "-verify", "-binary", "-inform", "DER", "-in", signed, "-CAfile", work / "store.pem",
        "-crl_check", "-out", content,
    )  # fmt: skip
    assert content.read_bytes() == MESSAGE
    printed = openssl("cms", "-cmsout", "-print", "-inform", "DER", "-in", signed).stdout.decode()
    assert "sha256" in printed and "Vestre Viken HF" in printed


@pytest.mark.parametrize("cipher", ["aes256", "aes128"])
def test_cryptography_decrypts_what_komut_protect_makes(pki: Pki, work: Path, cipher):
    key, cert = sender_files(pki)
    out = work / f"for-cryptography-{cipher}.p7m"
    receiver = pki.path("parties", MUNICIPALITY)
    proc = komut(
        "protect", work / "message.xml", "-o", out, "--sign-key", key, "--sign-cert", cert,
        "--encrypt-for", receiver / "enc.pem", "--cipher", cipher,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    signed = pkcs7.pkcs7_decrypt_der(
        out.read_bytes(), load_certificate(receiver / "enc.pem"), load_private_key(receiver / "enc.key"), []
    )
    certificates = pkcs7.load_der_pkcs7_certificates(signed)
    assert [c.serial_number for c in certificates] == [load_certificate(cert).serial_number]


# -- openssl makes, komut reads -----------------------------------------------------------------------


def openssl_message(
    pki: Pki, work: Path, name: str, *, cipher: str = "aes256", form: str = "DER", sign: tuple = (), enc: tuple = (),
    signer: tuple[Path, Path] | None = None,
) -> Path:  # fmt: skip
    key, cert = signer or sender_files(pki)
    signed = work / f"{name}.signed.der"
    openssl(
        "cms", "-sign", "-binary", "-nodetach", "-md", "sha256", "-in", work / "message.xml",
        "-signer", cert, "-inkey", key, "-outform", "DER", "-out", signed, *sign,
    )  # fmt: skip
    out = work / f"{name}.p7m"
    openssl(
        "cms", "-encrypt", "-binary", f"-{cipher}", "-in", signed, "-outform", form, "-out", out,
        "-recip", pki.path("parties", MUNICIPALITY, "enc.pem"), *enc,
    )  # fmt: skip
    return out


def unprotect(pki: Pki, work: Path, message: Path, *extra) -> tuple:
    out = message.with_suffix(".out")
    out.unlink(missing_ok=True)
    proc = komut("unprotect", message, "-o", out, *receiver_args(pki), "--crl", pki.path("crl.pem"), *extra)
    return proc, out


@pytest.mark.parametrize("form", ["DER", "PEM", "SMIME"])
@pytest.mark.parametrize("cipher", ["aes256", "aes128", "des3"])
def test_komut_unprotects_what_openssl_makes(pki: Pki, work: Path, cipher, form):
    message = openssl_message(pki, work, f"openssl-{cipher}-{form}", cipher=cipher, form=form)
    proc, out = unprotect(pki, work, message)
    if cipher == "des3":
        assert proc.returncode == 1
        assert "content-encryption-algorithm check failed" in proc.stderr
        assert "3DES-CBC is not accepted from this partner (policy)" in proc.stderr
        assert not out.exists()
        proc, out = unprotect(pki, work, message, "--allow-legacy")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == MESSAGE
    signer = load_certificate(sender_files(pki)[1])
    assert "signer: serialNumber=191000005,CN=Vestre Viken HF,O=Vestre Viken HF,C=NO" in proc.stdout
    assert f"serial: {signer.serial_number:X}" in proc.stdout
    if cipher == "des3":
        assert "legacy: 3DES-CBC" in proc.stdout


def test_sha1_signature_refused_unless_legacy_allowed(pki: Pki, work: Path):
    message = openssl_message(pki, work, "openssl-sha1", sign=("-md", "sha1"))
    proc, _ = unprotect(pki, work, message, "--json")
    report = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert report["kind"] == "DIGEST_REFUSED" and report["apprec"] == "S01"
    assert "SHA-1 signatures are not accepted" in report["reason"]
    proc, out = unprotect(pki, work, message, "--allow-legacy", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["legacy"] == ["SHA-1"]
    assert out.read_bytes() == MESSAGE


def test_oaep_key_transport_refused_unless_legacy_allowed(pki: Pki, work: Path):
    message = openssl_message(
        pki, work, "openssl-oaep", enc=("-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256")
    )
    proc, _ = unprotect(pki, work, message, "--json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["kind"] == "KEY_TRANSPORT_REFUSED"
    proc, out = unprotect(pki, work, message, "--allow-legacy", "--json")
    assert proc.returncode == 0, proc.stdout
    assert "RSA-OAEP-SHA-256" in json.loads(proc.stdout)["algorithms"]


def test_pss_signature_accepted(pki: Pki, work: Path):
    message = openssl_message(pki, work, "openssl-pss", sign=("-keyopt", "rsa_padding_mode:pss"))
    proc, out = unprotect(pki, work, message)
    assert proc.returncode == 0, proc.stderr
    assert "RSASSA-PSS-SHA-256" in proc.stdout


def test_signer_certificate_taken_from_the_registry_when_not_in_the_message(pki: Pki, work: Path):
    message = openssl_message(pki, work, "openssl-nocerts", sign=("-nocerts",))
    proc, _ = unprotect(pki, work, message, "--json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["kind"] == "SIGNER_MISSING" and report["apprec"] == "S02"
    proc, out = unprotect(pki, work, message, "--expect-signer", sender_files(pki)[1], "--json")
    assert proc.returncode == 0, proc.stdout
    assert (
        json.loads(proc.stdout)["signer"]["source"] == "the address registry (expected signer certificates)"
    )


def test_revoked_signer_refused_with_s03_and_certificate_details(pki: Pki, work: Path):
    test_dir = pki.path("test")
    message = openssl_message(
        pki, work, "openssl-revoked", signer=(test_dir / "revoked.key", test_dir / "revoked.pem")
    )
    proc, out = unprotect(pki, work, message, "--json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    revoked = load_certificate(test_dir / "revoked.pem")
    assert report["kind"] == "REVOKED" and report["apprec"] == "S03" and not report["retryable"]
    assert report["certificate"]["serial"] == f"{revoked.serial_number:X}"
    assert report["certificate"]["issuer"] == "CN=komut demo CA - NOT FOR PRODUCTION,O=komut demo,C=NO"
    assert len(report["certificate"]["sha256"]) == 64
    assert not out.exists()


def test_unknown_revocation_status_is_retry_later_unless_accepted(pki: Pki, work: Path):
    message = openssl_message(pki, work, "openssl-nocrl")
    out = work / "nocrl.out"
    proc = komut("unprotect", message, "-o", out, *receiver_args(pki))
    assert proc.returncode == 1
    assert "revocation-status check failed" in proc.stderr and "retry later" in proc.stderr
    proc = komut("unprotect", message, "-o", out, *receiver_args(pki), "--unknown-revocation", "accept")
    assert proc.returncode == 0, proc.stderr
    assert "revocation status unknown" in proc.stdout


def test_signer_must_be_registered_for_the_sender(pki: Pki, work: Path):
    message = openssl_message(pki, work, "openssl-registered")
    other = pki.path("parties", MUNICIPALITY, "sign.pem")
    proc, _ = unprotect(pki, work, message, "--expect-signer", other)
    assert proc.returncode == 1
    assert "registered-signer check failed (S02)" in proc.stderr


def test_rollover_pair_on_the_command_line(pki: Pki, work: Path, tmp_path):
    message = openssl_message(pki, work, "openssl-rollover")
    new = pki.path("parties", 9100000)  # another party's key stands in for our new one
    current = ["--decrypt-key", new / "enc.key", "--decrypt-cert", new / "enc.pem"]
    previous = receiver_args(pki)
    proc = komut("unprotect", message, "-o", tmp_path / "out", *current, "--trust", pki.path("ca.pem"),
                 "--crl", pki.path("crl.pem"))  # fmt: skip
    assert proc.returncode == 1 and "recipient check failed" in proc.stderr
    proc = komut(
        "unprotect", message, "-o", tmp_path / "out", *current, *previous, "--crl", pki.path("crl.pem")
    )
    assert proc.returncode == 0, proc.stderr
    assert "previous key" in proc.stdout


def test_bad_inputs_exit_2(pki: Pki, work: Path, tmp_path):
    proc = komut("unprotect", tmp_path / "missing.p7m", "-o", tmp_path / "out", *receiver_args(pki))
    assert proc.returncode == 2
    key, cert = sender_files(pki)
    proc = komut("protect", work / "message.xml", "-o", tmp_path / "x", "--sign-key", key,
                 "--sign-cert", pki.path("parties", MUNICIPALITY, "sign.pem"), "--encrypt-for", cert)  # fmt: skip
    assert proc.returncode == 2 and "does not belong to the certificate" in proc.stderr


def test_credential_rejects_mismatched_key(pki: Pki):
    key, _ = sender_files(pki)
    with pytest.raises(ValueError, match="does not belong"):
        Credential(load_private_key(key), load_certificate(pki.path("parties", MUNICIPALITY, "sign.pem")))
