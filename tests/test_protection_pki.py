"""`komut pki init`: the demo PKI's layout (the registry relies on it) and its certificates."""

from __future__ import annotations

import datetime as dt
import stat

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from protection_helpers import HOSPITAL, Pki, komut

from gateway.protection import load_certificate, load_crls
from gateway.registry import default_certificate_holders

pytest_plugins = ("protection_fixtures",)


def test_layout_has_every_certificate_holder_of_the_demo_network(pki: Pki):
    holders = default_certificate_holders()
    assert len(holders) > 30
    for name in ("ca.pem", "ca.key", "crl.pem"):
        assert pki.path(name).is_file()
    for her_id, _, _ in holders:
        for name in ("sign.pem", "sign.key", "enc.pem", "enc.key"):
            assert pki.path("parties", her_id, name).is_file(), (her_id, name)
    assert sorted(p.name for p in pki.path("parties").iterdir()) == sorted(str(h) for h, _, _ in holders)
    for name in ("revoked", "expired", "not-yet-valid", "wrong-usage", "untrusted"):
        assert pki.path("test", f"{name}.pem").is_file() and pki.path("test", f"{name}.key").is_file()


def test_ca_says_not_for_production(pki: Pki):
    ca = pki.ca.cert
    assert "komut demo CA - NOT FOR PRODUCTION" in ca.subject.rfc4514_string()
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_party_certificates(pki: Pki):
    now = dt.datetime.now(dt.UTC)
    for her_id, name, orgnr in default_certificate_holders():
        sign = load_certificate(pki.path("parties", her_id, "sign.pem"))
        enc = load_certificate(pki.path("parties", her_id, "enc.pem"))
        for cert in (sign, enc):
            assert cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == orgnr
            assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == name
            assert cert.public_key().key_size == 2048
            assert cert.not_valid_before_utc < now < cert.not_valid_after_utc
            cert.verify_directly_issued_by(pki.ca.cert)
        sign_usage = sign.extensions.get_extension_for_class(x509.KeyUsage).value
        enc_usage = enc.extensions.get_extension_for_class(x509.KeyUsage).value
        assert sign_usage.content_commitment and not sign_usage.key_encipherment
        assert enc_usage.key_encipherment and not (
            enc_usage.content_commitment or enc_usage.digital_signature
        )
        assert sign.serial_number != enc.serial_number


def test_keys_are_unencrypted_private_files(pki: Pki):
    path = pki.path("parties", HOSPITAL, "enc.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert key.public_key() == load_certificate(pki.path("parties", HOSPITAL, "enc.pem")).public_key()


def test_crl_and_broken_test_certificates(pki: Pki):
    now = dt.datetime.now(dt.UTC)
    crl = load_crls(pki.path("crl.pem").read_bytes())[0]
    assert crl.is_signature_valid(pki.ca.cert.public_key())
    assert crl.next_update_utc > now
    revoked = load_certificate(pki.path("test", "revoked.pem"))
    assert [r.serial_number for r in crl] == [revoked.serial_number]
    assert load_certificate(pki.path("test", "expired.pem")).not_valid_after_utc < now
    assert load_certificate(pki.path("test", "not-yet-valid.pem")).not_valid_before_utc > now
    usage = load_certificate(pki.path("test", "wrong-usage.pem")).extensions.get_extension_for_class(
        x509.KeyUsage
    )
    assert not (usage.value.digital_signature or usage.value.content_commitment)
    untrusted = load_certificate(pki.path("test", "untrusted.pem"))
    assert untrusted.issuer != pki.ca.cert.subject
    untrusted.verify_directly_issued_by(load_certificate(pki.path("test", "untrusted-ca.pem")))


def test_init_does_not_overwrite_an_existing_pki(pki: Pki):
    before = pki.path("ca.key").read_bytes()
    proc = komut("pki", "init", pki.directory)
    assert proc.returncode == 2 and "already holds a PKI" in proc.stderr
    assert pki.path("ca.key").read_bytes() == before


def test_pki_check_command(pki: Pki):
    common = ["--trust", pki.path("ca.pem"), "--crl", pki.path("crl.pem")]
    proc = komut("pki", "check", pki.path("parties", HOSPITAL, "sign.pem"), *common, "--purpose", "signing")
    assert proc.returncode == 0, proc.stdout
    assert "ok for signing" in proc.stdout
    proc = komut("pki", "check", pki.path("parties", HOSPITAL, "enc.pem"), *common, "--purpose", "encryption")
    assert proc.returncode == 0, proc.stdout
    proc = komut("pki", "check", pki.path("test", "revoked.pem"), *common, "--purpose", "signing")
    assert proc.returncode == 1 and "revocation check failed (S03)" in proc.stdout
