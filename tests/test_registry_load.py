"""Loading registry files: inheritance, certificates, and a broken file refused with every problem."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.registry import (
    Category,
    Cipher,
    PartyKind,
    RegistryError,
    Transport,
    UnknownParty,
    load_registry,
    parse_registry,
)
from gateway.registry.certs import check_certificates, read_certificate

NOW = dt.datetime.now(dt.UTC)
ORG_A, ORG_B = "191000005", "192030005"  # fictional, checksum-valid (see default_network.toml)


# -- a tiny PKI, made here so the tests depend on nothing but `cryptography` ---------------------


class Pki:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "komut test CA")])
        self.ca = (
            x509.CertificateBuilder()
            .subject_name(self.ca_name)
            .issuer_name(self.ca_name)
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        root.mkdir(parents=True, exist_ok=True)
        (root / "ca.pem").write_bytes(self.ca.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        rel: str,
        org_no: str,
        *,
        usage: str = "sign",
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> x509.Certificate:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test org"),
                x509.NameAttribute(NameOID.SERIAL_NUMBER, org_no),
            ]
        )
        sign, enc = usage == "sign", usage == "enc"
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or NOW - dt.timedelta(days=1))
            .not_valid_after(not_after or NOW + dt.timedelta(days=365))
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=sign,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=enc,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert


GOOD = f"""
schema = 1

[areas.north]
number = 1
name = "North"

[protection.standard]
send_cipher = "aes256"
accept_ciphers = ["aes256", "aes128"]

[profiles.basic]
APPREC = ["1.0", "1.1"]
DIALOG_NOTAT = ["1.0"]

[profiles.plo]
LOG_INNLAGT = ["1.6"]

[[party]]
her_id = 100
name = "Org A"
kind = "organisation"
category = "municipality"
org_no = "{ORG_A}"
area = "north"
endpoint = {{ transport = "https", gateway = "a" }}
protection = "standard"
accepts = ["basic", "plo"]
certificates = {{ dir = "parties/100" }}

[[party]]
her_id = 101
name = "Service A1"
kind = "service"
parent = 100

[[party]]
her_id = 102
name = "Kari Lege"
kind = "person"
parent = 100
accepts = {{ DIALOG_FORESPORSEL = ["1.1"] }}

[[party]]
her_id = 200
name = "Office B"
kind = "organisation"
category = "gp-office"
org_no = "{ORG_B}"
municipality = 100
endpoint = {{ transport = "amqp", address = "amqp://b/200_async" }}
protection = {{ send_cipher = "des3", accept_ciphers = ["des3", "aes256"], accept_sha1 = true }}
certificates = {{ sign = "b/sign.pem", enc = "b/enc.pem", next_enc = "b/next_enc.pem" }}

[[party]]
her_id = 201
name = "Unit B1"
kind = "organisation"
parent = 200

[[party]]
her_id = 202
name = "Service B1a"
kind = "service"
parent = 201
"""


@pytest.fixture
def pki(tmp_path) -> Pki:
    pki = Pki(tmp_path / "pki")
    pki.issue("parties/100/sign.pem", ORG_A, usage="sign")
    pki.issue("parties/100/enc.pem", ORG_A, usage="enc")
    pki.issue("b/sign.pem", ORG_B, usage="sign")
    pki.issue("b/enc.pem", ORG_B, usage="enc")
    pki.issue("b/next_enc.pem", ORG_B, usage="enc", not_after=NOW + dt.timedelta(days=700))
    return pki


def write(tmp_path: Path, text: str, name: str = "registry.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return path


# -- a good file -------------------------------------------------------------------------------


def test_good_file_loads_with_certificates(tmp_path, pki):
    reg = load_registry(write(tmp_path, GOOD), cert_dir=pki.root)
    assert len(reg) == 6
    assert [p.her_id for p in reg] == [100, 101, 102, 200, 201, 202]
    a1 = reg.get(101)
    assert a1.kind is PartyKind.SERVICE and a1.parent == 100
    assert reg.get(100).category is Category.MUNICIPALITY
    certs = reg.certificates(101)
    assert certs is not None and certs.sign.certificate is not None
    assert certs.sign.certificate == read_certificate(pki.root / "parties/100/sign.pem")
    assert certs.next_sign is None and certs.next_enc is None  # `dir` makes next_* optional
    b = reg.certificates(202)
    assert b.next_enc is not None and b.next_enc.loaded
    assert pki.root / "b/next_enc.pem" in reg.files
    assert write(tmp_path, GOOD) in reg.files


def test_lookups_and_inheritance(tmp_path, pki):
    reg = load_registry(write(tmp_path, GOOD), cert_dir=pki.root)
    assert [p.her_id for p in reg.ancestors(202)] == [201, 200]
    assert [p.her_id for p in reg.children(200)] == [201]
    assert reg.level1(202).her_id == 200
    assert reg.nearest_with_endpoint(202).her_id == 200
    assert reg.endpoint(202).transport is Transport.AMQP
    assert reg.endpoint(202).address == "amqp://b/200_async"
    assert reg.certificate_holder(202).her_id == 200
    assert reg.org_no(202) == ORG_B
    assert reg.display_name(101) == "Org A, Service A1"
    assert reg.display_name(201) == "Unit B1"
    # accepts: inherited unless the party sets its own (the person does, and replaces)
    assert reg.accepts(101, "LOG_INNLAGT", "1.6")
    assert reg.accepts(101, "APPREC", "1.1") and not reg.accepts(101, "APPREC", "2.0")
    assert reg.accepts(101, "DIALOG_NOTAT")
    assert reg.accepts(102, "DIALOG_FORESPORSEL", "1.1") and not reg.accepts(102, "APPREC")
    assert not reg.accepts(202, "APPREC")  # nothing declared anywhere up the chain
    # protection: by name, or inline
    assert reg.protection(101).name == "standard"
    inline = reg.protection(202)
    assert inline.name is None and inline.send_cipher is Cipher.DES3 and inline.accept_sha1
    assert inline.accepts_cipher(Cipher.AES256) and not inline.accepts_cipher(Cipher.AES128)
    # municipality and area: own, inherited, or through the municipality an office lies in
    assert reg.municipality_of(101).her_id == 100
    assert reg.municipality_of(202).her_id == 100
    assert reg.area_of(202).name == "North"
    with pytest.raises(UnknownParty):
        reg.get(999)
    with pytest.raises(KeyError):
        reg.children(999)
    assert reg.find(999) is None and 999 not in reg and 100 in reg


def test_rollover_encrypts_for_next_certificate_once_current_expired(tmp_path, pki):
    before = NOW - dt.timedelta(days=30)
    pki.issue("b/enc.pem", ORG_B, usage="enc", not_before=before, not_after=NOW - dt.timedelta(days=1))
    reg = load_registry(write(tmp_path, GOOD), cert_dir=pki.root)
    certs = reg.certificates(200)
    assert certs.encryption_certificate(NOW) == certs.next_enc.certificate
    assert certs.encryption_certificate(NOW - dt.timedelta(days=3)) == certs.enc.certificate


def test_without_cert_dir_certificates_are_named_not_read():
    reg = parse_registry(GOOD, cert_dir=None)
    certs = reg.certificates(101)
    assert certs.sign.path == Path("parties/100/sign.pem") and not certs.sign.loaded
    assert certs.next_enc is None
    assert reg.certificates(200).next_enc.path == Path("b/next_enc.pem")


def test_cert_dir_defaults_to_the_registry_files_directory(tmp_path, pki):
    path = write(pki.root, GOOD)
    assert load_registry(path).certificates(100).sign.loaded


# -- a broken file -----------------------------------------------------------------------------

BROKEN = f"""
schema = 1
colour = "blue"

[protection.standard]
send_cipher = "aes512"
accept_ciphers = ["aes256"]

[profiles.basic]
APPREC = ["1.0"]
apprec = ["1.0"]

[[party]]
her_id = 100
name = "Org A"
kind = "organisation"
org_no = "{ORG_A}"
endpoint = {{ transport = "https", gateway = "a" }}
certificates = {{ sign = "parties/100/sign.pem", enc = "missing/enc.pem" }}

[[party]]
her_id = 100
name = "Org A again"
kind = "organisation"
org_no = "{ORG_A}"

[[party]]
her_id = 101
name = "Orphan"
kind = "service"
parent = 555

[[party]]
her_id = 300
name = "Loop 1"
kind = "organisation"
parent = 301

[[party]]
her_id = 301
name = "Loop 2"
kind = "organisation"
parent = 300

[[party]]
her_id = 400
name = "Bad number"
kind = "organisation"
org_no = "191000006"
acepts = ["basic"]
certificates = {{ sign = "garbage.pem", enc = "parties/100/enc.pem" }}

[[party]]
her_id = 401
name = "Bad refs"
kind = "servise"
parent = 400
accepts = ["nope"]
area = "south"
endpoint = {{ transport = "pigeon", gateway = "x" }}

[[party]]
her_id = 402
name = "Under a person"
kind = "person"
parent = 403

[[party]]
her_id = 403
name = "A person"
kind = "person"
parent = 400

[[party]]
name = "No HER-id"
kind = "organisation"

[[party]]
her_id = 500
name = "Office"
kind = "organisation"
org_no = "{ORG_B}"
municipality = 100
"""


def expected_problems() -> list[tuple[int | None, str, str]]:
    """(her_id, field, fragment of the message) for every mistake planted in BROKEN."""
    return [
        (None, "colour", "unknown key"),
        (None, "protection.standard.send_cipher", "unknown cipher 'aes512'"),
        (None, "profiles.basic.apprec", "not a message type code"),
        (100, "her_id", "duplicate HER-id"),
        (100, "certificates.enc", "missing certificate file"),
        (100, "protection", "no protection policy"),
        (101, "parent", "unknown parent HER-id 555"),
        (300, "parent", "cycle: 300 -> 301 -> 300"),
        (400, "org_no", "not a valid organisation number"),
        (400, "acepts", "unknown key"),
        (400, "certificates.sign", "not a readable X.509 certificate"),
        (401, "kind", "unknown value 'servise'"),
        (401, "accepts", "unknown capability profile 'nope'"),
        (401, "area", "unknown area 'south'"),
        (401, "endpoint.transport", "unknown value 'pigeon'"),
        (402, "parent", "is a person"),
        (None, "party[9].her_id", "missing"),
        (500, "municipality", "not a municipality"),
    ]


def test_broken_file_is_refused_with_every_problem_listed(tmp_path, pki):
    (pki.root / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n", "utf-8")
    path = write(tmp_path, BROKEN)
    with pytest.raises(RegistryError) as caught:
        load_registry(path, cert_dir=pki.root)
    error = caught.value
    found = [(p.her_id, p.field, p.message) for p in error.problems]
    for her_id, field, fragment in expected_problems():
        assert any(h == her_id and f == field and fragment in m for h, f, m in found), (
            her_id,
            field,
            fragment,
        )
    assert len(found) == len(expected_problems())  # and nothing else, nothing twice
    # The exception's text lists them all too, one per line (what the CLI and the log show).
    text = str(error)
    assert f"{len(error.problems)} problem(s)" in text
    assert all(str(p) in text for p in error.problems)
    # The watcher needs to know which files to watch for the fix.
    assert path in error.files and pki.root / "missing/enc.pem" in error.files


def test_toml_syntax_error_is_one_problem(tmp_path):
    with pytest.raises(RegistryError) as caught:
        load_registry(write(tmp_path, "[[party]\nher_id = 1\n"))
    assert [(p.her_id, p.field) for p in caught.value.problems] == [(None, "file")]
    assert "not valid TOML" in caught.value.problems[0].message


def test_unreadable_registry_file(tmp_path):
    with pytest.raises(RegistryError) as caught:
        load_registry(tmp_path / "nope.toml")
    assert "cannot read" in caught.value.problems[0].message


def test_endpoint_needs_certificates_somewhere_up_the_chain():
    text = GOOD.replace('certificates = { dir = "parties/100" }', "")
    with pytest.raises(RegistryError) as caught:
        parse_registry(text)
    assert [(p.her_id, p.field) for p in caught.value.problems] == [(100, "certificates")]


def test_level1_needs_org_no_and_services_need_a_parent():
    text = GOOD.replace(f'org_no = "{ORG_A}"\n', "").replace("parent = 100\naccepts", "accepts")
    with pytest.raises(RegistryError) as caught:
        parse_registry(text)
    assert {(p.her_id, p.field) for p in caught.value.problems} == {(100, "org_no"), (102, "parent")}


# -- certificate checks (`komut registry check`) ------------------------------------------------


def test_certificate_checks(tmp_path, pki):
    pki.issue("parties/100/sign.pem", ORG_A, usage="sign", not_after=NOW + dt.timedelta(days=10))
    pki.issue("parties/100/enc.pem", ORG_A, usage="sign")  # wrong key usage for encryption
    pki.issue("b/sign.pem", ORG_A, usage="sign")  # someone else's organisation number
    pki.issue("b/enc.pem", ORG_B, usage="enc", not_after=NOW - dt.timedelta(days=1))
    reg = load_registry(write(tmp_path, GOOD), cert_dir=pki.root)
    problems = check_certificates(reg, now=NOW, ca=pki.ca)
    found = {(p.her_id, p.field, p.severity.value): p.message for p in problems}
    assert "within 30 days" in found[(100, "certificates.sign", "warning")]
    assert "key usage" in found[(100, "certificates.enc", "warning")]
    assert "organisation" in found[(200, "certificates.sign", "warning")]
    assert "expired" in found[(200, "certificates.enc", "error")]
    assert len(problems) == 4

    other_ca = Pki(tmp_path / "other")
    problems = check_certificates(reg, now=NOW, ca=other_ca.ca)
    assert sum("not issued by the CA" in p.message for p in problems) == 5


def test_missing_certificate_directory_is_one_problem(tmp_path):
    with pytest.raises(RegistryError) as caught:
        parse_registry(GOOD, cert_dir=tmp_path / "nope")
    assert [(p.her_id, p.field) for p in caught.value.problems] == [(None, "cert-dir")]
